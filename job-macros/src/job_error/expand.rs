//! `impl Classify` for the enum, and the stub emitted when the input is invalid.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Fields};

use super::ast::{Input, Variant};
use super::attr::Class;
use crate::attr::default_crate;

fn krate(input: &Input<'_>) -> TokenStream {
    input
        .attrs
        .krate
        .as_ref()
        .map_or_else(default_crate, ToTokens::to_token_stream)
}

pub(crate) fn classify_impl(input: &Input<'_>) -> TokenStream {
    let krate = krate(input);
    let variants = input.variants.as_deref().unwrap_or_default();
    let arms = variants.iter().map(|v| arm(&krate, v, input.attrs.default));
    let body = if variants.is_empty() {
        quote!(match *self {})
    } else {
        quote!(match self { #(#arms)* })
    };
    impl_classify(input.original, &krate, &body)
}

fn arm(krate: &TokenStream, variant: &Variant<'_>, default: Option<Class>) -> TokenStream {
    let ident = variant.ident;
    let class = variant.marker.or(default);
    let class_of = |path: TokenStream| quote!(#krate::ErrorClass::#path);
    match class {
        Some(Class::RetryAfter) => {
            let Some(field) = variant.fields.iter().next() else {
                return TokenStream::new();
            };
            let ty = &field.ty;
            let pattern = match &field.ident {
                Some(name) => quote!(Self::#ident { #name: __job_delay }),
                None => quote!(Self::#ident(__job_delay)),
            };
            let value = quote_spanned! {ty.span()=>
                #krate::__private::RetryDelay::retry_after(__job_delay)
            };
            quote!(#pattern => #value,)
        }
        Some(class) => {
            let value = class_of(match class {
                Class::Permanent => quote!(Permanent),
                _ => quote!(Transient),
            });
            let pattern = match variant.fields {
                Fields::Unit => quote!(Self::#ident),
                Fields::Named(_) => quote!(Self::#ident { .. }),
                Fields::Unnamed(_) => quote!(Self::#ident(..)),
            };
            quote!(#pattern => #value,)
        }
        None => TokenStream::new(),
    }
}

fn impl_classify(input: &DeriveInput, krate: &TokenStream, body: &TokenStream) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Classify for #ident #ty_generics #where_clause {
            fn classify(&self) -> #krate::ErrorClass {
                #body
            }
        }
    }
}

/// On invalid input: an `impl Classify` that is never run (compilation fails anyway), so
/// the error type does not also produce "`Classify` is not implemented" errors wherever a
/// job returns it.
pub(crate) fn fallback(input: &Input<'_>) -> TokenStream {
    let krate = krate(input);
    impl_classify(
        input.original,
        &krate,
        &quote!(::core::unreachable!(
            "`#[derive(JobError)]` failed to expand"
        )),
    )
}
