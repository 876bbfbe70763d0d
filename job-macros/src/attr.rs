//! Pieces shared by both macros' attribute parsers: key names, the set-once slot, the
//! `crate = path` value and literal readers.

use std::fmt;

use proc_macro2::{Delimiter, Group, TokenStream};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::token::{Brace, Bracket, Paren};
use syn::{
    Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, MacroDelimiter, Meta, MetaList, MetaNameValue,
    Path, PathSegment, Token, UnOp,
};

use crate::ctxt::Ctxt;

/// The name of an attribute key. Keys are compared through these constants, never through
/// bare strings scattered over the parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Symbol(pub(crate) &'static str);

// `#[job(...)]` on a function.
pub(crate) const NAME: Symbol = Symbol("name");
pub(crate) const QUEUE: Symbol = Symbol("queue");
pub(crate) const MAX_ATTEMPTS: Symbol = Symbol("max_attempts");
pub(crate) const BACKOFF: Symbol = Symbol("backoff");
pub(crate) const TIMEOUT: Symbol = Symbol("timeout");
pub(crate) const CRATE: Symbol = Symbol("crate");
pub(crate) const CRON: Symbol = Symbol("cron");
pub(crate) const TIMEZONE: Symbol = Symbol("timezone");
pub(crate) const MISFIRE: Symbol = Symbol("misfire");
pub(crate) const UNIQUE: Symbol = Symbol("unique");
// `unique(...)`.
pub(crate) const BY: Symbol = Symbol("by");
pub(crate) const FOR: Symbol = Symbol("for");
pub(crate) const UNTIL: Symbol = Symbol("until");
// `backoff(...)`.
pub(crate) const INITIAL: Symbol = Symbol("initial");
pub(crate) const MAX: Symbol = Symbol("max");
pub(crate) const JITTER: Symbol = Symbol("jitter");
// `#[derive(JobError)]`.
pub(crate) const TRANSIENT: Symbol = Symbol("transient");
pub(crate) const PERMANENT: Symbol = Symbol("permanent");
pub(crate) const RETRY_AFTER: Symbol = Symbol("retry_after");
pub(crate) const DEFAULT: Symbol = Symbol("default");
/// The helper attribute of the derive, `#[job(..)]`.
pub(crate) const JOB: Symbol = Symbol("job");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// "`a`, `b` or `c`", for messages listing the valid keys.
pub(crate) fn one_of(symbols: &[Symbol]) -> String {
    one_of_names(&symbols.iter().map(|s| s.0).collect::<Vec<_>>())
}

/// "`a`, `b` or `c`", for messages listing names (keys, parameters).
pub(crate) fn one_of_names<S: AsRef<str>>(names: &[S]) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == names.len() { " or " } else { ", " });
        }
        out.push('`');
        out.push_str(name.as_ref());
        out.push('`');
    }
    out
}

/// Comma-separated keys, `a = 1, b(..), c`, as `Meta`s. Unlike syn's `Meta` parser, a key
/// may be any keyword, as in `unique(for = "10m")`.
pub(crate) fn parse_metas(tokens: TokenStream) -> syn::Result<Punctuated<Meta, Token![,]>> {
    (|input: ParseStream<'_>| Punctuated::parse_terminated_with(input, parse_meta)).parse2(tokens)
}

/// The arguments of `key(..)`, as [`parse_metas`] reads them.
pub(crate) fn parse_list(list: &MetaList) -> syn::Result<Punctuated<Meta, Token![,]>> {
    parse_metas(list.tokens.clone())
}

/// One key: `path`, `path = expr` or `path(..)` (or `[..]`, `{..}`), the path's segments
/// being identifiers or keywords.
fn parse_meta(input: ParseStream<'_>) -> syn::Result<Meta> {
    let leading_colon: Option<Token![::]> = input.parse()?;
    let mut segments = Punctuated::new();
    if !input.peek(Ident::peek_any) {
        return Err(input.error(if input.is_empty() {
            "expected a key"
        } else if input.peek(Lit) {
            "unexpected literal, expected a key such as `name = \"..\"`"
        } else {
            "unexpected token, expected a key such as `name = \"..\"`"
        }));
    }
    segments.push_value(PathSegment::from(Ident::parse_any(input)?));
    while input.peek(Token![::]) {
        segments.push_punct(input.parse()?);
        segments.push_value(PathSegment::from(Ident::parse_any(input)?));
    }
    let path = Path {
        leading_colon,
        segments,
    };
    if input.peek(Paren) || input.peek(Bracket) || input.peek(Brace) {
        let group: Group = input.parse()?;
        let span = group.delim_span();
        let delimiter = match group.delimiter() {
            Delimiter::Parenthesis => MacroDelimiter::Paren(Paren(span)),
            Delimiter::Bracket => MacroDelimiter::Bracket(Bracket(span)),
            _ => MacroDelimiter::Brace(Brace(span)),
        };
        Ok(Meta::List(MetaList {
            path,
            delimiter,
            tokens: group.stream(),
        }))
    } else if input.peek(Token![=]) && !input.peek(Token![==]) && !input.peek(Token![=>]) {
        let eq_token = input.parse()?;
        if input.peek(Token![#]) && input.peek2(Bracket) {
            return Err(input.error("unexpected attribute inside of attribute"));
        }
        Ok(Meta::NameValue(MetaNameValue {
            path,
            eq_token,
            value: input.parse()?,
        }))
    } else {
        Ok(Meta::Path(path))
    }
}

/// The candidate closest to `written`, when one is close enough to be a likely typo: at
/// most one edit (insertion, deletion, substitution or swap of neighbours) per three
/// characters, at least one, and not every character replaced. Ties go to the earlier
/// candidate.
pub(crate) fn closest<'a, I>(written: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let budget = (written.chars().count() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let distance = edit_distance(written, candidate);
        let longer = written.chars().count().max(candidate.chars().count());
        if distance <= budget && distance < longer && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Edits from `a` to `b`, a swap of two neighbours counting as one (optimal string
/// alignment distance), case-insensitively.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    // Three rows: two back (for swaps), one back, this one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            current[j] = d;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The path a key is written as, for messages (`crate`, `retries`, `a::b`).
pub(crate) fn path_to_string(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

/// A value that may be set once: the single place where "duplicate key" is detected.
pub(crate) struct Attr<T> {
    name: Symbol,
    what: &'static str,
    value: Option<T>,
}

impl<T> Attr<T> {
    /// `what` names the attribute in messages, as in "duplicate `#[job]` argument".
    pub(crate) fn none(what: &'static str, name: Symbol) -> Self {
        Self {
            name,
            what,
            value: None,
        }
    }

    /// Stores `value`, or reports a duplicate at `key` (the repeated key).
    pub(crate) fn set<K: ToTokens>(&mut self, cx: &Ctxt, key: K, value: T) {
        if self.value.is_some() {
            cx.error_spanned_by(
                key,
                format!(
                    "duplicate {} `{}`: it is already set above; remove one of them",
                    self.what, self.name
                ),
            );
        } else {
            self.value = Some(value);
        }
    }

    /// True once a value was set.
    pub(crate) fn is_set(&self) -> bool {
        self.value.is_some()
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// Reads the value of `crate = path` (or `crate = "path"`, as serde writes it). The default
/// is `::job_core`.
pub(crate) fn crate_path(cx: &Ctxt, value: &Expr) -> Option<Path> {
    match value {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => Some(p.path.clone()),
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => match s.parse::<Path>() {
            Ok(path) => Some(path),
            Err(_) => {
                cx.error_spanned_by(
                    s,
                    format!(
                        "`crate` must be a path to job_core, such as `crate = ::my_app::jobs`, not {:?}",
                        s.value()
                    ),
                );
                None
            }
        },
        other => {
            cx.error_spanned_by(
                other,
                "`crate` must be a path to job_core, such as `crate = ::my_app::jobs`",
            );
            None
        }
    }
}

/// The default crate root of generated paths.
pub(crate) fn default_crate() -> TokenStream {
    quote!(::job_core)
}

/// Reads a string literal value, or reports `expected` at the value.
pub(crate) fn lit_str<'a>(cx: &Ctxt, value: &'a Expr, expected: &str) -> Option<&'a LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        other => {
            cx.error_spanned_by(other, expected);
            None
        }
    }
}

/// A number literal, possibly negated: `3`, `0.2`, `-1`. `None` for anything else.
pub(crate) fn number(value: &Expr) -> Option<(bool, &Lit)> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) if matches!(lit, Lit::Int(_) | Lit::Float(_)) => {
            Some((false, lit))
        }
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => match number(expr) {
            Some((false, lit)) => Some((true, lit)),
            _ => None,
        },
        Expr::Group(g) => number(&g.expr),
        Expr::Paren(p) => number(&p.expr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keys() {
        assert_eq!(one_of(&[NAME]), "`name`");
        assert_eq!(one_of(&[NAME, QUEUE]), "`name` or `queue`");
        assert_eq!(one_of(&[NAME, QUEUE, CRATE]), "`name`, `queue` or `crate`");
    }

    #[test]
    fn keys_may_be_keywords() {
        let metas =
            parse_metas(quote!(for = "10m", by = [a, b], crate = ::x, until, r#type(1))).unwrap();
        let keys: Vec<String> = metas.iter().map(|m| path_to_string(m.path())).collect();
        assert_eq!(keys, ["for", "by", "crate", "until", "r#type"]);
        assert!(metas[0].path() == &FOR);
        assert!(matches!(&metas[1], Meta::NameValue(nv) if matches!(nv.value, Expr::Array(_))));
        assert!(matches!(&metas[3], Meta::Path(_)));
        assert!(matches!(&metas[4], Meta::List(_)));
        let list =
            match syn::parse2::<Meta>(quote!(unique(for = "1m", until = "finished"))).unwrap() {
                Meta::List(list) => list,
                _ => unreachable!(),
            };
        assert_eq!(parse_list(&list).unwrap().len(), 2);
        // syn's own `Meta` refuses `for`: the reason for `parse_metas`.
        assert!(syn::parse2::<Meta>(quote!(for = "10m")).is_err());
        assert!(parse_metas(quote!("x")).is_err());
        assert!(parse_metas(quote!(a = )).is_err());
    }

    #[test]
    fn finds_close_names() {
        assert_eq!(edit_distance("subject", "subject"), 0);
        assert_eq!(edit_distance("subjcet", "subject"), 1);
        assert_eq!(edit_distance("", "to"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let params = ["to", "subject", "account_id"];
        assert_eq!(closest("too", params), Some("to"));
        assert_eq!(closest("t", params), Some("to"));
        assert_eq!(closest("Subjet", params), Some("subject"));
        assert_eq!(closest("acount_id", params), Some("account_id"));
        assert_eq!(closest("body", params), None);
        assert_eq!(closest("x", ["a", "b"]), None);
        assert_eq!(
            closest("queu", KEYS_FOR_TEST.iter().map(|s| s.0)),
            Some("queue")
        );
        assert_eq!(closest("untill", [BY.0, FOR.0, UNTIL.0]), Some("until"));
    }

    const KEYS_FOR_TEST: &[Symbol] = &[NAME, QUEUE, TIMEOUT, UNIQUE];

    #[test]
    fn duplicate_is_reported_once_per_repeat() {
        let cx = Ctxt::new();
        let mut attr = Attr::none("`#[job]` argument", QUEUE);
        attr.set(&cx, quote!(queue), 1);
        attr.set(&cx, quote!(queue), 2);
        assert_eq!(attr.get(), Some(1));
        let err = cx.check().unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate `#[job]` argument `queue`")
        );
    }

    #[test]
    fn reads_negative_numbers() {
        let e: Expr = syn::parse_quote!(-0.5);
        let (neg, lit) = number(&e).unwrap();
        assert!(neg);
        assert!(matches!(lit, Lit::Float(_)));
        let e: Expr = syn::parse_quote!("x");
        assert!(number(&e).is_none());
    }
}
