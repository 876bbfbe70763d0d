//! `#[job]`: parse the arguments and the function, validate, expand.

mod args;
mod ast;
mod expand;
mod schedule;
mod unique;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Item, ItemFn};

use crate::ctxt::{Ctxt, to_compile_errors};
use args::JobArgs;
use ast::JobFn;

/// Expands `#[job(args)] item`. Never fails: on errors the item is emitted unchanged with a
/// `compile_error!` per problem, plus whatever could still be generated.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let args = JobArgs::parse(&cx, args);
    let generated = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(item_fn) => {
            let job = JobFn::from_syn(&item_fn);
            let before = cx.len();
            valid::check_signature(&cx, &job);
            let signature_ok = cx.len() == before;
            valid::check_names(&cx, &args, &job);
            let unique = args
                .unique
                .as_ref()
                .and_then(|u| unique::resolve(&cx, u, &job));
            signature_ok.then(|| expand::generate(&args, &job, unique.as_ref()))
        }
        Err(_) => {
            not_a_fn(&cx, &item);
            None
        }
    };
    let errors = to_compile_errors(cx.check().err());
    quote! {
        #item
        #generated
        #errors
    }
}

/// `#[job]` on something that is not a function.
fn not_a_fn(cx: &Ctxt, item: &TokenStream) {
    let message = "`#[job]` goes on an `async fn`, whose owned parameters become the job's payload; to make a type a job, implement `job_core::Job` for it";
    match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Struct(s)) => cx.error_spanned_by(s.struct_token, message),
        Ok(Item::Enum(e)) => cx.error_spanned_by(e.enum_token, message),
        Ok(Item::Impl(i)) => cx.error_spanned_by(
            i.impl_token,
            "`#[job]` goes on a free `async fn`, not on an `impl` block",
        ),
        _ => cx.error_at(proc_macro2::Span::call_site(), message),
    }
}
