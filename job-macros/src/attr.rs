//! Pieces shared by both macros' attribute parsers: key names, the set-once slot, the
//! `crate = path` value and literal readers.

use std::fmt;

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Path, UnOp};

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
    let mut out = String::new();
    for (i, symbol) in symbols.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == symbols.len() { " or " } else { ", " });
        }
        out.push('`');
        out.push_str(symbol.0);
        out.push('`');
    }
    out
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
