//! `#[job(..)]` helper attributes of `#[derive(JobError)]`: the class marker on each
//! variant, `default = ..` and `crate = ..` on the enum.

use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, Ident, Meta, Path, Token};

use crate::attr::{self, Attr, CRATE, DEFAULT, JOB, PERMANENT, RETRY_AFTER, Symbol, TRANSIENT};
use crate::ctxt::Ctxt;

const MARKERS: &[Symbol] = &[TRANSIENT, PERMANENT, RETRY_AFTER];
const CONTAINER_KEYS: &[Symbol] = &[DEFAULT, CRATE];

/// What the runtime does with a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Transient,
    Permanent,
    RetryAfter,
}

impl Class {
    fn from_path(path: &Path) -> Option<Self> {
        if *path == TRANSIENT {
            Some(Self::Transient)
        } else if *path == PERMANENT {
            Some(Self::Permanent)
        } else if *path == RETRY_AFTER {
            Some(Self::RetryAfter)
        } else {
            None
        }
    }

    pub(crate) fn symbol(self) -> Symbol {
        match self {
            Self::Transient => TRANSIENT,
            Self::Permanent => PERMANENT,
            Self::RetryAfter => RETRY_AFTER,
        }
    }
}

/// Attributes on the enum itself.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    /// `default = transient | permanent`.
    pub(crate) default: Option<Class>,
    /// A default was written, even if invalid: unmarked variants are then not reported
    /// again (the invalid default already is).
    pub(crate) default_written: bool,
    /// `crate = path`.
    pub(crate) krate: Option<Path>,
}

/// True when a `#[job(..)]` attribute is present (valid or not).
pub(crate) fn has_job_attr(attrs: &[Attribute]) -> bool {
    job_attrs(attrs).next().is_some()
}

pub(crate) fn job_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| *a.path() == JOB)
}

/// The metas inside `#[job(...)]`, or `None` (with the error recorded).
fn metas(cx: &Ctxt, attr: &Attribute, usage: &str) -> Option<Punctuated<Meta, Token![,]>> {
    match &attr.meta {
        Meta::List(list) => match list.parse_args_with(Punctuated::parse_terminated) {
            Ok(metas) => Some(metas),
            Err(e) => {
                cx.syn_error(e);
                None
            }
        },
        other => {
            cx.error_spanned_by(other, usage);
            None
        }
    }
}

const VARIANT_USAGE: &str = "mark the variant `#[job(transient)]` (retried with backoff), `#[job(permanent)]` (dead-lettered at once) or `#[job(retry_after)]` (retried after the `Duration` it holds)";

/// The class markers on one variant. Every marker after the first is an error.
pub(crate) fn variant_marker(cx: &Ctxt, variant: &Ident, attrs: &[Attribute]) -> Option<Class> {
    let mut found: Option<Class> = None;
    for attr in job_attrs(attrs) {
        let Some(metas) = metas(cx, attr, VARIANT_USAGE) else {
            continue;
        };
        if metas.is_empty() {
            cx.error_spanned_by(attr, VARIANT_USAGE);
            continue;
        }
        for meta in metas {
            let path = meta.path();
            let Some(class) = Class::from_path(path) else {
                unknown_variant_key(cx, &meta);
                continue;
            };
            if !matches!(meta, Meta::Path(_)) {
                cx.error_spanned_by(
                    &meta,
                    format!(
                        "`{class}` takes no value: write `#[job({class})]`",
                        class = class.symbol()
                    ),
                );
                continue;
            }
            match &found {
                Some(first) if *first == class => cx.error_spanned_by(
                    path,
                    format!(
                        "variant `{variant}` is marked `{}` twice: remove one",
                        class.symbol()
                    ),
                ),
                Some(first) => cx.error_spanned_by(
                    path,
                    format!(
                        "variant `{variant}` is marked twice, `{}` and `{}`: a variant has one class, keep one marker",
                        first.symbol(),
                        class.symbol()
                    ),
                ),
                None => found = Some(class),
            }
        }
    }
    found
}

fn unknown_variant_key(cx: &Ctxt, meta: &Meta) {
    let path = meta.path();
    let written = attr::path_to_string(path);
    let hint = match written.as_str() {
        "retry" | "retryable" | "temporary" | "transient_error" => " (did you mean `transient`?)",
        "fatal" | "abort" | "skip" | "no_retry" | "permanent_error" => {
            " (did you mean `permanent`?)"
        }
        "rate_limited" | "retry_after_secs" | "delay" => " (did you mean `retry_after`?)",
        "default" | "crate" => " (this key goes on the enum, not on a variant)",
        _ => "",
    };
    cx.error_spanned_by(
        path,
        format!(
            "unknown `#[job]` variant attribute `{written}`; expected one of {}{hint}",
            attr::one_of(MARKERS)
        ),
    );
}

/// `#[job(default = ..)]` and `#[job(crate = ..)]` on the enum.
pub(crate) fn container(cx: &Ctxt, attrs: &[Attribute]) -> ContainerAttrs {
    const USAGE: &str = "on the enum, `#[job(..)]` takes `default = transient` or `default = permanent` (the class of every unmarked variant) and `crate = path`";
    let mut default = Attr::none("`#[job]` enum attribute", DEFAULT);
    let mut krate = Attr::none("`#[job]` enum attribute", CRATE);
    let mut default_written = false;
    for attr in job_attrs(attrs) {
        let Some(metas) = metas(cx, attr, USAGE) else {
            continue;
        };
        for meta in &metas {
            let path = meta.path();
            if *path == DEFAULT {
                default_written = true;
                match meta {
                    Meta::NameValue(nv) => default.set(cx, path, default_class(cx, &nv.value)),
                    _ => cx.error_spanned_by(
                        meta,
                        "write `default = transient` or `default = permanent`",
                    ),
                }
            } else if *path == CRATE {
                match meta {
                    Meta::NameValue(nv) => krate.set(cx, path, attr::crate_path(cx, &nv.value)),
                    _ => cx.error_spanned_by(meta, "write `crate = path::to::job_core`"),
                }
            } else if let Some(class) = Class::from_path(path) {
                default_written = true;
                let message = if class == Class::RetryAfter {
                    "`retry_after` goes on a variant holding a `Duration`, not on the enum"
                        .to_owned()
                } else {
                    format!(
                        "on the enum, write `#[job(default = {})]` to give every unmarked variant that class",
                        class.symbol()
                    )
                };
                cx.error_spanned_by(path, message);
            } else {
                cx.error_spanned_by(
                    path,
                    format!(
                        "unknown `#[job]` enum attribute `{}`; expected one of {}",
                        attr::path_to_string(path),
                        attr::one_of(CONTAINER_KEYS)
                    ),
                );
            }
        }
    }
    ContainerAttrs {
        default: default.get().flatten(),
        default_written,
        krate: krate.get().flatten(),
    }
}

fn default_class(cx: &Ctxt, value: &Expr) -> Option<Class> {
    let class = match value {
        Expr::Path(p) if p.qself.is_none() => Class::from_path(&p.path),
        _ => None,
    };
    match class {
        Some(Class::RetryAfter) => {
            cx.error_spanned_by(
                value,
                "the default must be `transient` or `permanent`: `retry_after` needs a `Duration` held by each variant, so mark those variants one by one",
            );
            None
        }
        Some(class) => Some(class),
        None => {
            cx.error_spanned_by(
                value,
                "write `default = transient` or `default = permanent`",
            );
            None
        }
    }
}
