//! `#[derive(JobError)]`: read the helper attributes, validate, expand `impl Classify`.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::ctxt::Ctxt;

pub(crate) fn expand(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = ast::Input::from_syn(&cx, input);
    valid::check(&cx, &parsed);
    match cx.check() {
        Ok(()) => expand::classify_impl(&parsed),
        Err(errors) => {
            let errors = errors.to_compile_error();
            let stub = expand::fallback(&parsed);
            quote!(#stub #errors)
        }
    }
}
