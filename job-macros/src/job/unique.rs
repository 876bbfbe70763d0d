//! `unique(by = [..], for = "..", until = "..")` of `#[job]`: the job's declared
//! uniqueness key. The arguments are read with the other keys (`parse`); the `by` entries
//! are checked against the function's parameters once it is parsed (`resolve`).

use syn::ext::IdentExt;
use syn::{Expr, ExprLit, Ident, Lit, Meta, MetaList, Pat, Path};

use super::args::name_value;
use super::ast::{JobFn, Param};
use super::valid::tokens;
use crate::attr::{self, Attr, BY, FOR, Symbol, UNTIL};
use crate::ctxt::Ctxt;

const KEYS: &[Symbol] = &[BY, FOR, UNTIL];
const WHAT: &str = "`unique` argument";
/// How to write `unique`, for the errors about its form.
const USAGE: &str = "write `unique(for = \"10m\")` (the whole payload is the key) or `unique(by = [..], for = \"..\")` (the named parameters are the key)";

/// `unique(..)` as written, as far as it was valid.
pub(crate) struct UniqueArgs {
    /// `by`'s entries in the order written, each once; `None`: the whole payload is the key.
    pub(crate) by: Option<Vec<Ident>>,
    /// `for`, in milliseconds (at least 1); `None` when missing or invalid, and then no
    /// `Job::unique` is generated.
    pub(crate) window_ms: Option<u64>,
    /// `until = "finished"`.
    pub(crate) until_finished: bool,
}

/// The key the job declares, checked against its parameters.
pub(crate) struct DeclaredUnique {
    /// Payload fields in the order written; `None`: the whole payload.
    pub(crate) fields: Option<Vec<Ident>>,
    pub(crate) window_ms: u64,
    pub(crate) until_finished: bool,
}

/// Reads `unique(..)`, recording every problem in `cx`. `None` when nothing of it can be
/// used (not a list, or a list syn cannot parse).
pub(crate) fn parse(cx: &Ctxt, meta: &Meta) -> Option<UniqueArgs> {
    let Meta::List(list) = meta else {
        cx.error_spanned_by(meta, format!("`unique` takes a list: {USAGE}"));
        return None;
    };
    let metas = match attr::parse_list(list) {
        Ok(metas) => metas,
        Err(e) => {
            cx.syn_error(e);
            return None;
        }
    };
    let mut by = Attr::none(WHAT, BY);
    let mut window = Attr::none(WHAT, FOR);
    let mut until = Attr::none(WHAT, UNTIL);
    for meta in &metas {
        let key = meta.path();
        if *key == BY {
            if let Some(v) = name_value(cx, meta, "by = [to, subject]") {
                by.set(cx, key, parse_by(cx, v));
            }
        } else if *key == FOR {
            match name_value(cx, meta, "for = \"10m\"") {
                Some(v) => window.set(cx, key, parse_window(cx, v)),
                // Written, so not also "missing".
                None => window.set(cx, key, None),
            }
        } else if *key == UNTIL {
            if let Some(v) = name_value(cx, meta, "until = \"finished\"") {
                until.set(cx, key, parse_until(cx, v));
            }
        } else {
            cx.error_spanned_by(key, unknown_key(key));
        }
    }
    if !window.is_set() {
        missing_window(cx, list);
    }
    Some(UniqueArgs {
        by: by.get().flatten(),
        window_ms: window.get().flatten(),
        until_finished: until.get().flatten().unwrap_or(false),
    })
}

fn missing_window(cx: &Ctxt, list: &MetaList) {
    cx.error_spanned_by(
        &list.path,
        "`unique` needs `for = \"..\"`, the window, such as `for = \"10m\"`: how long after the first enqueue a duplicate is not enqueued",
    );
}

fn unknown_key(key: &Path) -> String {
    let written = attr::path_to_string(key);
    let hint = match written.as_str() {
        "key" | "keys" | "fields" | "field" | "on" | "args" | "params" => {
            " (did you mean `by`? it lists the payload parameters the key is made of: `by = [to, subject]`)"
        }
        "ttl" | "window" | "period" | "duration" | "within" | "timeout" | "expires" => {
            " (did you mean `for`? it is the window: `for = \"10m\"`)"
        }
        "while" | "states" | "state" | "scope" | "unless" | "release" => {
            " (did you mean `until`? `until = \"finished\"` frees the key when the job finishes)"
        }
        _ => "",
    };
    let hint = match attr::closest(&written, KEYS.iter().map(|s| s.0)) {
        Some(close) if hint.is_empty() => format!(" (did you mean `{close}`?)"),
        _ => hint.to_owned(),
    };
    format!(
        "unknown {WHAT} `{written}`; expected one of {}{hint}",
        attr::one_of(KEYS)
    )
}

/// `[a, b]`: parameter names, each once. What was valid is kept.
fn parse_by(cx: &Ctxt, value: &Expr) -> Option<Vec<Ident>> {
    let Expr::Array(array) = value else {
        not_an_array(cx, value);
        return None;
    };
    if array.elems.is_empty() {
        cx.error_spanned_by(
            array,
            "`by = []` names no parameter: list the payload parameters the key is made of, such as `by = [to]`, or remove `by` to make the whole payload the key",
        );
        return None;
    }
    let mut fields: Vec<Ident> = Vec::new();
    for entry in &array.elems {
        let Some(ident) = entry_ident(cx, entry) else {
            continue;
        };
        if fields.iter().any(|f| f.unraw() == ident.unraw()) {
            cx.error_spanned_by(
                ident,
                format!("`{ident}` is in `by` twice: remove the repeat"),
            );
        } else {
            fields.push(ident.clone());
        }
    }
    (!fields.is_empty()).then_some(fields)
}

/// A `by` entry: a plain name.
fn entry_ident<'a>(cx: &Ctxt, entry: &'a Expr) -> Option<&'a Ident> {
    match entry {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
            if let Some(ident) = p.path.get_ident() {
                return Some(ident);
            }
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) if syn::parse_str::<Ident>(&s.value()).is_ok() => {
            cx.error_spanned_by(
                s,
                format!(
                    "a `by` entry is a parameter name, not a string: write `{}`",
                    s.value()
                ),
            );
            return None;
        }
        _ => {}
    }
    cx.error_spanned_by(
        entry,
        "a `by` entry must be the name of a payload parameter of the fn, such as `to`",
    );
    None
}

/// `by = "to"`, `by = to`, `by = (to, subject)`: what the user meant, in brackets.
fn not_an_array(cx: &Ctxt, value: &Expr) {
    let names: Option<Vec<String>> = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => s
            .value()
            .split(',')
            .map(|part| {
                let part = part.trim();
                syn::parse_str::<Ident>(part).ok().map(|_| part.to_owned())
            })
            .collect(),
        Expr::Path(_) => plain_name(value).map(|name| vec![name]),
        Expr::Paren(p) => plain_name(&p.expr).map(|name| vec![name]),
        Expr::Tuple(t) => t.elems.iter().map(plain_name).collect(),
        _ => None,
    };
    let message = match names {
        Some(names) if !names.is_empty() => format!(
            "`by` is a list of parameter names in brackets: write `by = [{}]`",
            names.join(", ")
        ),
        _ => {
            "`by` is a list of parameter names in brackets, such as `by = [to, subject]`".to_owned()
        }
    };
    cx.error_spanned_by(value, message);
}

fn plain_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(ToString::to_string),
        _ => None,
    }
}

/// `for = "10m"`: milliseconds, at least 1.
fn parse_window(cx: &Ctxt, value: &Expr) -> Option<u64> {
    let lit = attr::lit_str(
        cx,
        value,
        "`for` must be a duration string, such as `for = \"10m\"` (units `ms`, `s`, `m`, `h`)",
    )?;
    super::args::positive_millis(
        cx,
        lit,
        "`for` must be longer than zero: it is how long after the first enqueue a duplicate is not enqueued, such as \"10m\" or \"24h\"",
    )
}

/// `"window"` (false) or `"finished"` (true).
fn parse_until(cx: &Ctxt, value: &Expr) -> Option<bool> {
    let usage = "`until` is \"window\" (the key keeps duplicates out for the whole window, the default) or \"finished\" (the key is freed as soon as its job finishes)";
    let lit = attr::lit_str(cx, value, usage)?;
    match lit.value().as_str() {
        "window" => Some(false),
        "finished" => Some(true),
        _ => {
            cx.error_spanned_by(lit, usage);
            None
        }
    }
}

/// Checks `by` against the fn's parameters: each entry must be a payload parameter. The
/// valid entries are kept, so the expansion adds no error of its own.
pub(crate) fn resolve(cx: &Ctxt, args: &UniqueArgs, job: &JobFn<'_>) -> Option<DeclaredUnique> {
    let fields = args.by.as_ref().map(|by| {
        by.iter()
            .filter(|entry| check_entry(cx, entry, job))
            .cloned()
            .collect::<Vec<_>>()
    });
    Some(DeclaredUnique {
        // With every entry refused there is an error already; the whole payload then
        // stands in, which compiles.
        fields: fields.filter(|f| !f.is_empty()),
        window_ms: args.window_ms?,
        until_finished: args.until_finished,
    })
}

/// Whether `entry` names a payload parameter; reports it when not.
fn check_entry(cx: &Ctxt, entry: &Ident, job: &JobFn<'_>) -> bool {
    let written = entry.unraw().to_string();
    let payload: Vec<String> = job
        .payload()
        .filter_map(|p| p.ident)
        .map(|i| i.unraw().to_string())
        .collect();
    if payload.contains(&written) {
        return true;
    }
    let fn_name = &job.item.sig.ident;
    let listed = (!payload.is_empty()).then(|| attr::one_of_names(&payload));
    let no_payload = "remove `by` (`unique(for = \"..\")` alone makes one key for the job)";
    let injected = job.params.iter().find_map(|p| match p {
        Param::Shared { arg, reference, .. } | Param::Scoped { arg, reference, .. } => {
            match &*arg.pat {
                Pat::Ident(p) if p.ident.unraw() == written => Some(reference),
                _ => None,
            }
        }
        _ => None,
    });
    let message = match (injected, listed) {
        (Some(reference), Some(listed)) => format!(
            "`{written}: {}` is injected by the runtime, not part of the payload, so it cannot be in a key: `by` takes payload parameters (the owned ones), {listed}",
            tokens(reference)
        ),
        (Some(reference), None) => format!(
            "`{written}: {}` is injected by the runtime, not part of the payload, so it cannot be in a key, and `{fn_name}` has no payload parameters: {no_payload}",
            tokens(reference)
        ),
        (None, Some(listed)) => {
            let hint = attr::closest(&written, payload.iter().map(String::as_str))
                .map(|close| format!(" (did you mean `{close}`?)"))
                .unwrap_or_default();
            format!(
                "`{written}` is not a parameter of `{fn_name}`: `by` takes its payload parameters, {listed}{hint}"
            )
        }
        (None, None) => format!(
            "`{written}` is not a parameter of `{fn_name}`, which has no payload parameters: {no_payload}"
        ),
    };
    cx.error_spanned_by(entry, message);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::TokenStream;
    use quote::quote;
    use syn::ItemFn;

    /// The `unique` args of `#[job(tokens)]` on `item`, and every error, in order.
    fn parse_on(tokens: TokenStream, item: TokenStream) -> (Option<DeclaredUnique>, Vec<String>) {
        let cx = Ctxt::new();
        let meta: Meta = syn::parse2(tokens).unwrap();
        let item: ItemFn = syn::parse2(item).unwrap();
        let job = JobFn::from_syn(&item);
        let declared = parse(&cx, &meta).and_then(|args| resolve(&cx, &args, &job));
        let errors = match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        (declared, errors)
    }

    fn send_email() -> TokenStream {
        quote!(
            async fn send_email(to: String, subject: String, mailer: &dyn Mailer) -> R {}
        )
    }

    fn names(declared: &DeclaredUnique) -> Option<Vec<String>> {
        declared
            .fields
            .as_ref()
            .map(|f| f.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn reads_every_key_and_for_is_a_key() {
        let (declared, errors) = parse_on(
            quote!(unique(by = [subject, to], for = "24h", until = "finished")),
            send_email(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let declared = declared.unwrap();
        assert_eq!(names(&declared).unwrap(), ["subject", "to"]);
        assert_eq!(declared.window_ms, 86_400_000);
        assert!(declared.until_finished);

        let (declared, errors) = parse_on(quote!(unique(for = "10m")), send_email());
        assert!(errors.is_empty(), "{errors:?}");
        let declared = declared.unwrap();
        assert!(declared.fields.is_none());
        assert_eq!(declared.window_ms, 600_000);
        assert!(!declared.until_finished);

        let (declared, _) = parse_on(quote!(unique(for = "1s", until = "window")), send_email());
        assert!(!declared.unwrap().until_finished);
    }

    #[test]
    fn by_names_payload_parameters() {
        let (declared, errors) = parse_on(
            quote!(unique(by = [too, mailer, to, to], for = "1m")),
            send_email(),
        );
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].contains("`to` is in `by` twice"), "{errors:?}");
        assert!(
            errors[1].contains(
                "`too` is not a parameter of `send_email`: `by` takes its payload parameters, `to` or `subject` (did you mean `to`?)"
            ),
            "{errors:?}"
        );
        assert!(
            errors[2].contains(
                "`mailer: &dyn Mailer` is injected by the runtime, not part of the payload"
            ),
            "{errors:?}"
        );
        // What was valid is kept.
        assert_eq!(names(&declared.unwrap()).unwrap(), ["to"]);
    }

    #[test]
    fn a_job_without_payload_has_nothing_to_name() {
        let (_, errors) = parse_on(
            quote!(unique(by = [id], for = "1m")),
            quote!(
                async fn tick(cx: &JobContext) -> R {}
            ),
        );
        assert!(
            errors[0].contains(
                "`id` is not a parameter of `tick`, which has no payload parameters: remove `by`"
            ),
            "{errors:?}"
        );
        let (_, errors) = parse_on(
            quote!(unique(by = [cx], for = "1m")),
            quote!(
                async fn tick(cx: &JobContext) -> R {}
            ),
        );
        assert!(
            errors[0].contains("`cx: &JobContext` is injected by the runtime, not part of the payload, so it cannot be in a key, and `tick` has no payload parameters: remove `by`"),
            "{errors:?}"
        );
    }

    #[test]
    fn by_is_a_list_of_names() {
        let cases = [
            (quote!(unique(by = "to", for = "1m")), "write `by = [to]`"),
            (
                quote!(unique(by = "to, subject", for = "1m")),
                "write `by = [to, subject]`",
            ),
            (quote!(unique(by = to, for = "1m")), "write `by = [to]`"),
            (
                quote!(unique(by = (to, subject), for = "1m")),
                "write `by = [to, subject]`",
            ),
            (
                quote!(unique(by = 3, for = "1m")),
                "such as `by = [to, subject]`",
            ),
            (
                quote!(unique(by = [], for = "1m")),
                "`by = []` names no parameter",
            ),
            (
                quote!(unique(by = ["to"], for = "1m")),
                "not a string: write `to`",
            ),
            (
                quote!(unique(by = [self.to], for = "1m")),
                "must be the name of a payload parameter",
            ),
            (
                quote!(unique(by(to), for = "1m")),
                "not a list: write `by = [to, subject]`",
            ),
        ];
        for (tokens, expected) in cases {
            let (declared, errors) = parse_on(tokens.clone(), send_email());
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].contains(expected), "{tokens}: {errors:?}");
            // The rest still expands, keyed on the whole payload.
            assert!(declared.unwrap().fields.is_none(), "{tokens}");
        }
    }

    #[test]
    fn for_is_required_and_positive() {
        let cases = [
            (
                quote!(unique(by = [to])),
                "`unique` needs `for = \"..\"`, the window",
            ),
            (quote!(unique()), "`unique` needs `for = \"..\"`"),
            (quote!(unique(for = "0s")), "`for` must be longer than zero"),
            (quote!(unique(for = "10 minutes")), "write \"10m\""),
            (quote!(unique(for = "2d")), "24h"),
            (quote!(unique(for = 600)), "`for` must be a duration string"),
            (
                quote!(unique(for)),
                "`for` takes a value: write `for = \"10m\"`",
            ),
            (
                quote!(unique(until = "done", for = "1m")),
                "`until` is \"window\"",
            ),
        ];
        for (tokens, expected) in cases {
            let (declared, errors) = parse_on(tokens.clone(), send_email());
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].contains(expected), "{tokens}: {errors:?}");
            if !expected.starts_with("`until`") {
                assert!(declared.is_none(), "{tokens}");
            }
        }
    }

    #[test]
    fn form_and_unknown_keys() {
        let cases = [
            (
                quote!(unique),
                "`unique` takes a list: write `unique(for = \"10m\")`",
            ),
            (quote!(unique = "10m"), "`unique` takes a list"),
            (
                quote!(unique(ttl = "1m", for = "1m")),
                "did you mean `for`?",
            ),
            (quote!(unique(key = [to], for = "1m")), "did you mean `by`?"),
            (
                quote!(unique(scope = "x", for = "1m")),
                "did you mean `until`?",
            ),
            (
                quote!(unique(untill = "x", for = "1m")),
                "(did you mean `until`?)",
            ),
            (
                quote!(unique(zzz = 1, for = "1m")),
                "unknown `unique` argument `zzz`; expected one of `by`, `for` or `until`",
            ),
            (
                quote!(unique(for = "1m", for = "2m")),
                "duplicate `unique` argument `for`",
            ),
        ];
        for (tokens, expected) in cases {
            let (_, errors) = parse_on(tokens.clone(), send_email());
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].contains(expected), "{tokens}: {errors:?}");
        }
    }
}
