//! Checks on a `#[job]` function that syn's parse does not make: all of them run, each
//! problem is recorded in the [`Ctxt`] at the token to change.

use quote::ToTokens;
use syn::{
    GenericArgument, GenericParam, Pat, PatType, PathArguments, ReturnType, Type, TypeReference,
};

use super::args::{JobArgs, is_valid_name};
use super::ast::{JobFn, Param, Payload, ungroup};
use crate::ctxt::Ctxt;

/// Checks the signature. Any error recorded here means the job cannot be generated.
pub(crate) fn check_signature(cx: &Ctxt, job: &JobFn<'_>) {
    let sig = &job.item.sig;
    let fn_name = &sig.ident;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            format!("`#[job]` requires an `async fn`: write `async fn {fn_name}(..)`"),
        );
    }
    if let Some(constness) = &sig.constness {
        cx.error_spanned_by(constness, "a `#[job]` fn cannot be `const`: remove `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.error_spanned_by(
            unsafety,
            "a `#[job]` fn cannot be `unsafe`: the runtime calls it and cannot uphold a safety contract; make the fn safe and use `unsafe` blocks inside it",
        );
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, "a `#[job]` fn cannot have an ABI: remove the `extern`");
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "a `#[job]` fn cannot be variadic");
    }
    check_generics(cx, job);
    for param in &job.params {
        check_param(cx, job, param);
    }
    if job.output.is_none() {
        cx.error_at(
            job.after_params(),
            "a `#[job]` fn must return `Result<_, E>` where `E: Classify`: add a return type such as `-> Result<(), MyError>` (a `#[derive(JobError)]` enum), `-> anyhow::Result<()>` or `-> std::io::Result<()>`",
        );
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        // A path may name a `Result` through an alias; anything else cannot be one.
        match ungroup(ty) {
            Type::Path(_) | Type::Macro(_) | Type::Verbatim(_) => {}
            Type::ImplTrait(_) => cx.error_spanned_by(
                ty,
                "a `#[job]` fn must return a concrete `Result<_, E>`, not `impl Trait`",
            ),
            _ => cx.error_spanned_by(
                ty,
                "a `#[job]` fn must return `Result<_, E>` where `E: Classify`, such as `Result<(), MyError>` (a `#[derive(JobError)]` enum), `anyhow::Result<()>` or `std::io::Result<()>`",
            ),
        }
    }
    if job.struct_ident == *fn_name {
        cx.error_spanned_by(
            fn_name,
            format!(
                "`#[job]` names the job struct after the fn in UpperCamelCase, which would also be `{fn_name}`: name the fn in snake_case"
            ),
        );
    }
}

/// Checks that do not stop the job from being generated.
pub(crate) fn check_names(cx: &Ctxt, args: &JobArgs, job: &JobFn<'_>) {
    let name = job.default_name();
    if args.name.is_none() && !is_valid_name(&name) {
        cx.error_spanned_by(
            &job.item.sig.ident,
            format!(
                "the fn name `{name}` is not a valid job name (1 to 64 of `A-Z a-z 0-9 _ . -`): give the job a name with `#[job(name = \"...\")]`"
            ),
        );
    }
}

fn check_generics(cx: &Ctxt, job: &JobFn<'_>) {
    let generics = &job.item.sig.generics;
    if !generics.params.is_empty() {
        let only_lifetimes = generics
            .params
            .iter()
            .all(|p| matches!(p, GenericParam::Lifetime(_)));
        let message = if only_lifetimes {
            "a `#[job]` fn cannot declare lifetimes: an injected `&T` borrows from the runtime for one attempt, so write it without a named lifetime and remove the `<..>`"
        } else {
            "a `#[job]` fn cannot be generic: a job is decoded by its name into one concrete type; remove the type parameters (to reuse code, call a generic helper from one `#[job]` per concrete type)"
        };
        cx.error_spanned_by(generics, message);
    }
    if let Some(where_clause) = &generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "a `#[job]` fn cannot have a `where` clause: its parameter types must be concrete",
        );
    }
}

fn check_param(cx: &Ctxt, job: &JobFn<'_>, param: &Param<'_>) {
    match param {
        Param::Receiver(receiver) => cx.error_spanned_by(
            receiver,
            "a `#[job]` fn cannot take `self`: a job is a free `async fn`; move it out of the `impl` block and pass what it needs as parameters (owned ones are the job's payload, `&T` ones are injected)",
        ),
        Param::Payload(payload) => check_payload(cx, job, payload),
        Param::Shared { arg, reference, ty } | Param::Scoped { arg, reference, ty } => {
            let sigil = if reference.mutability.is_some() {
                "&mut "
            } else {
                "&"
            };
            if let Some(lifetime) = &reference.lifetime
                && lifetime.ident != "_"
            {
                cx.error_spanned_by(
                    lifetime,
                    format!(
                        "remove the lifetime `{lifetime}`: an injected `{sigil}T` borrows from the runtime for one attempt and needs no named lifetime"
                    ),
                );
            }
            check_injected_type(cx, arg, reference, ty, sigil);
        }
    }
}

fn check_payload(cx: &Ctxt, job: &JobFn<'_>, payload: &Payload<'_>) {
    let struct_ident = &job.struct_ident;
    if payload.ident.is_none() {
        let message = if matches!(&*payload.arg.pat, Pat::Wild(_)) {
            format!(
                "a payload parameter needs a name, which becomes a field of `{struct_ident}`: write `_name: Type` for one the fn does not use"
            )
        } else {
            format!(
                "a payload parameter needs a plain name, which becomes a field of `{struct_ident}`: write `name: Type` and destructure it inside the fn"
            )
        };
        cx.error_spanned_by(&payload.arg.pat, message);
    }
    check_owned(cx, payload.ty);
}

/// A payload type must be owned: it is serialized with the job. A reference nested in it
/// (`Vec<&str>`, `Option<&Path>`) borrows from the caller; `'static` ones are left to the
/// `DeserializeOwned` check.
fn check_owned(cx: &Ctxt, ty: &Type) {
    match ty {
        Type::Reference(r) => {
            let is_static = r.lifetime.as_ref().is_some_and(|l| l.ident == "static");
            if !is_static {
                cx.error_spanned_by(
                    ty,
                    "a payload parameter must own its data, because it is serialized with the job: replace the reference with an owned type (`String` for `&str`, `Vec<T>` for `&[T]`, `PathBuf` for `&Path`)",
                );
                return;
            }
            check_owned(cx, &r.elem);
        }
        Type::ImplTrait(_) => cx.error_spanned_by(
            ty,
            "`impl Trait` in a parameter makes a `#[job]` fn generic: name a concrete type",
        ),
        Type::Array(a) => check_owned(cx, &a.elem),
        Type::Slice(s) => check_owned(cx, &s.elem),
        Type::Group(g) => check_owned(cx, &g.elem),
        Type::Paren(p) => check_owned(cx, &p.elem),
        Type::Tuple(t) => t.elems.iter().for_each(|e| check_owned(cx, e)),
        Type::Path(p) => {
            if let Some(q) = &p.qself {
                check_owned(cx, &q.ty);
            }
            for segment in &p.path.segments {
                if let PathArguments::AngleBracketed(args) = &segment.arguments {
                    for arg in &args.args {
                        match arg {
                            GenericArgument::Type(t) => check_owned(cx, t),
                            GenericArgument::Lifetime(l) if l.ident != "static" => cx
                                .error_spanned_by(
                                    l,
                                    format!(
                                        "a payload parameter must own its data, because it is serialized with the job: use `'static` or an owned type instead of the lifetime `{l}`"
                                    ),
                                ),
                            _ => {}
                        }
                    }
                }
            }
        }
        // Function pointers, trait objects, `!`, macros: the serde bounds decide.
        _ => {}
    }
}

/// `&T` / `&mut T` inject a registered value of a named type or a `dyn Trait`. A borrowed
/// `str`, slice, array or tuple is always a payload written by mistake: nobody registers a
/// `str` with the runtime.
fn check_injected_type(
    cx: &Ctxt,
    arg: &PatType,
    reference: &TypeReference,
    ty: &Type,
    sigil: &str,
) {
    let owned = match ty {
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => Some("String".to_owned()),
        Type::Slice(slice) => Some(format!("Vec<{}>", tokens(&slice.elem))),
        Type::Array(_) | Type::Tuple(_) => Some(tokens(ty)),
        _ => None,
    };
    if let Some(owned) = owned {
        let name = match &*arg.pat {
            Pat::Ident(p) => p.ident.to_string(),
            _ => "name".to_owned(),
        };
        cx.error_spanned_by(
            reference,
            format!(
                "`{name}: {}` would be injected from the runtime, because borrowed parameters of a `#[job]` fn are injected; job arguments are sent with the job and must be owned: write `{name}: {owned}`",
                tokens(reference)
            ),
        );
        return;
    }
    match ty {
        Type::Path(_) | Type::TraitObject(_) => {}
        Type::ImplTrait(_) => cx.error_spanned_by(
            ty,
            format!(
                "`{sigil}impl Trait` makes a `#[job]` fn generic: inject a trait object, `{sigil}dyn Trait`, registered with the runtime builder"
            ),
        ),
        _ => cx.error_spanned_by(
            reference,
            format!(
                "an injected parameter must be `{sigil}T` for a named type or `{sigil}dyn Trait` (registered with the runtime builder); job arguments are taken by value"
            ),
        ),
    }
}

/// Tokens as the user would write them: `Vec<u8>`, `&str`.
pub(crate) fn tokens<T: ToTokens>(t: &T) -> String {
    let text = t.to_token_stream().to_string();
    text.replace(" < ", "<")
        .replace(" >", ">")
        .replace("< ", "<")
        .replace("& ", "&")
        .replace(" ,", ",")
        .replace(" ;", ";")
}
