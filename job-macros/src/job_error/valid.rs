//! Checks across the enum: it is an enum, every variant is classified, and `retry_after`
//! variants hold exactly one field (whose type the compiler checks is a `Duration`).

use syn::{Data, Fields};

use super::ast::{Input, Variant};
use super::attr::Class;
use crate::ctxt::Ctxt;

pub(crate) fn check(cx: &Ctxt, input: &Input<'_>) {
    let Some(variants) = &input.variants else {
        let keyword = match &input.original.data {
            Data::Struct(s) => s.struct_token.span,
            Data::Union(u) => u.union_token.span,
            Data::Enum(e) => e.enum_token.span,
        };
        cx.error_at(
            keyword,
            "`JobError` can only be derived for an enum, whose variants are each marked `#[job(transient)]`, `#[job(permanent)]` or `#[job(retry_after)]`; for a struct or union, implement `job_core::Classify` by hand",
        );
        return;
    };
    for variant in variants {
        match &variant.marker {
            // An invalid marker or default was reported already; do not repeat it.
            None if variant.has_job_attr || input.attrs.default_written => {}
            None => unmarked(cx, variant),
            Some(Class::RetryAfter) => retry_after(cx, variant),
            _ => {}
        }
    }
}

fn unmarked(cx: &Ctxt, variant: &Variant<'_>) {
    let name = variant.ident;
    cx.error_spanned_by(
        name,
        format!(
            "variant `{name}` is not classified: mark it `#[job(transient)]` (retried with backoff), `#[job(permanent)]` (dead-lettered at once) or `#[job(retry_after)]` (retried after the `Duration` it holds); or give the enum `#[job(default = transient)]` or `#[job(default = permanent)]` for every unmarked variant"
        ),
    );
}

fn retry_after(cx: &Ctxt, variant: &Variant<'_>) {
    let name = variant.ident;
    match variant.fields {
        Fields::Unit => cx.error_spanned_by(
            name,
            format!(
                "`#[job(retry_after)]` needs the variant to hold the delay: write `{name}(std::time::Duration)`"
            ),
        ),
        fields if fields.len() != 1 => cx.error_spanned_by(
            fields,
            format!(
                "`#[job(retry_after)]` needs exactly one field, the delay (a `std::time::Duration`); `{name}` has {}: move the rest into another variant or into the error's message",
                fields.len()
            ),
        ),
        _ => {}
    }
}
