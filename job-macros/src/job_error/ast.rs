//! The input of `#[derive(JobError)]`, with its helper attributes read.

use syn::{Data, DeriveInput, Fields, Ident};

use super::attr::{self, Class, ContainerAttrs};
use crate::ctxt::Ctxt;

/// An error type to classify.
pub(crate) struct Input<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: ContainerAttrs,
    /// `None` for a struct or a union, which `valid.rs` rejects.
    pub(crate) variants: Option<Vec<Variant<'a>>>,
}

/// One variant and its class marker.
pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) fields: &'a Fields,
    /// The class it is marked with.
    pub(crate) marker: Option<Class>,
    /// The variant carries a `#[job(..)]`, valid or not.
    pub(crate) has_job_attr: bool,
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let attrs = attr::container(cx, &input.attrs);
        // `#[job]` is a helper attribute of the derive, so the compiler accepts it anywhere
        // in the enum; on a field it would silently do nothing.
        let fields = match &input.data {
            Data::Enum(data) => data.variants.iter().flat_map(|v| v.fields.iter()).collect(),
            Data::Struct(data) => data.fields.iter().collect(),
            Data::Union(_) => Vec::new(),
        };
        for field in fields {
            for attr in attr::job_attrs(&field.attrs) {
                cx.error_spanned_by(
                    attr,
                    "`#[job(..)]` goes on a variant (`transient`, `permanent`, `retry_after`) or on the enum (`default`, `crate`), not on a field",
                );
            }
        }
        let variants = match &input.data {
            Data::Enum(data) => Some(
                data.variants
                    .iter()
                    .map(|v| Variant {
                        ident: &v.ident,
                        fields: &v.fields,
                        marker: attr::variant_marker(cx, &v.ident, &v.attrs),
                        has_job_attr: attr::has_job_attr(&v.attrs)
                            || v.fields.iter().any(|f| attr::has_job_attr(&f.attrs)),
                    })
                    .collect(),
            ),
            Data::Struct(_) | Data::Union(_) => None,
        };
        Self {
            original: input,
            attrs,
            variants,
        }
    }
}
