//! The shape of a `#[job]` function: which parameters are the payload and which are
//! injected, told apart by DESIGN.md's rule and never by type names:
//!
//! - an owned parameter (`to: String`) is payload: a field of the generated struct;
//! - `&T` is shared data registered with `.data(..)` (or the `&JobContext` itself);
//! - `&mut T` is a per-attempt scoped value built by the factory registered with
//!   `.scoped(..)`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{
    FnArg, GenericArgument, Ident, ItemFn, Pat, PatType, PathArguments, Receiver, ReturnType, Type,
    TypeReference,
};

/// A parsed `#[job]` function. Built leniently; `valid.rs` reports what is wrong.
pub(crate) struct JobFn<'a> {
    pub(crate) item: &'a ItemFn,
    /// `send_email` -> `SendEmail`, spanned at the function's name.
    pub(crate) struct_ident: Ident,
    /// The parameters, in order.
    pub(crate) params: Vec<Param<'a>>,
    /// The declared return type; `None` for `-> ()` left implicit.
    pub(crate) output: Option<&'a Type>,
}

/// One parameter of a job function.
pub(crate) enum Param<'a> {
    /// An owned parameter: a field of the job struct.
    Payload(Payload<'a>),
    /// `&T`: injected shared data; `ty` is `T`.
    Shared {
        arg: &'a PatType,
        reference: &'a TypeReference,
        ty: &'a Type,
    },
    /// `&mut T`: injected per-attempt value; `ty` is `T`.
    Scoped {
        arg: &'a PatType,
        reference: &'a TypeReference,
        ty: &'a Type,
    },
    /// `self`, which a job cannot take.
    Receiver(&'a Receiver),
}

/// An owned parameter.
pub(crate) struct Payload<'a> {
    pub(crate) arg: &'a PatType,
    /// The field name: `None` when the pattern is not a plain name.
    pub(crate) ident: Option<&'a Ident>,
    pub(crate) ty: &'a Type,
}

impl<'a> JobFn<'a> {
    pub(crate) fn from_syn(item: &'a ItemFn) -> Self {
        let params = item.sig.inputs.iter().map(Param::from_syn).collect();
        let output = match &item.sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(&**ty),
        };
        Self {
            item,
            struct_ident: Ident::new(
                &upper_camel_case(&item.sig.ident.unraw().to_string()),
                item.sig.ident.span(),
            ),
            params,
            output,
        }
    }

    /// The job's default wire name: the function's name.
    pub(crate) fn default_name(&self) -> String {
        self.item.sig.ident.unraw().to_string()
    }

    pub(crate) fn payload(&self) -> impl Iterator<Item = &Payload<'a>> {
        self.params.iter().filter_map(|p| match p {
            Param::Payload(p) => Some(p),
            _ => None,
        })
    }

    /// `E` when the return type is written `Result<T, E>`, so `Job::Error` can name it
    /// directly (and rustdoc shows it). Other spellings (`anyhow::Result<()>`,
    /// `io::Result<()>`, a user's alias) go through the `JobReturn` trait instead, which
    /// accepts exactly the `Result` types whatever they are called.
    pub(crate) fn written_error_type(&self) -> Option<&'a Type> {
        self.written_result().map(|(_, error)| error)
    }

    /// `T` when the return type is written `Result<T, E>` (see `written_error_type`).
    pub(crate) fn written_output_type(&self) -> Option<&'a Type> {
        self.written_result().map(|(output, _)| output)
    }

    fn written_result(&self) -> Option<(&'a Type, &'a Type)> {
        let Type::Path(path) = ungroup(self.output?) else {
            return None;
        };
        let last = path.path.segments.last()?;
        if path.qself.is_some() || last.ident != "Result" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        let mut types = args.args.iter().filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        });
        match (types.next(), types.next(), types.next()) {
            (Some(output), Some(error), None) if args.args.len() == 2 => Some((output, error)),
            _ => None,
        }
    }

    /// The span of the closing parenthesis of the parameter list (where a missing return
    /// type would go).
    pub(crate) fn after_params(&self) -> Span {
        self.item.sig.paren_token.span.close()
    }
}

impl<'a> Param<'a> {
    fn from_syn(arg: &'a FnArg) -> Self {
        match arg {
            FnArg::Receiver(receiver) => Param::Receiver(receiver),
            FnArg::Typed(typed) => match ungroup(&typed.ty) {
                Type::Reference(reference) => {
                    let ty = ungroup(&reference.elem);
                    if reference.mutability.is_some() {
                        Param::Scoped {
                            arg: typed,
                            reference,
                            ty,
                        }
                    } else {
                        Param::Shared {
                            arg: typed,
                            reference,
                            ty,
                        }
                    }
                }
                _ => Param::Payload(Payload {
                    arg: typed,
                    ident: match &*typed.pat {
                        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(&p.ident),
                        _ => None,
                    },
                    ty: &typed.ty,
                }),
            },
        }
    }
}

/// Looks through the invisible groups `macro_rules!` wraps types in, and parentheses.
pub(crate) fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(g) => ty = &g.elem,
            Type::Paren(p) => ty = &p.elem,
            _ => return ty,
        }
    }
}

/// `send_email` -> `SendEmail`, `fetch_v2` -> `FetchV2`, `_private_job` -> `PrivateJob`.
pub(crate) fn upper_camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper_next = true;
    for c in snake.chars() {
        if c == '_' {
            upper_next = true;
        } else if upper_next {
            out.extend(c.to_uppercase());
            upper_next = false;
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str("Job");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case() {
        assert_eq!(upper_camel_case("send_email"), "SendEmail");
        assert_eq!(upper_camel_case("fetch_v2"), "FetchV2");
        assert_eq!(upper_camel_case("_private__job_"), "PrivateJob");
        assert_eq!(upper_camel_case("resize"), "Resize");
        assert_eq!(upper_camel_case("sendHTML"), "SendHTML");
        assert_eq!(upper_camel_case("_"), "Job");
    }

    #[test]
    fn tells_parameters_apart_by_ownership() {
        let item: ItemFn = syn::parse_quote! {
            async fn send_email(to: String, cx: &JobContext, mailer: &dyn Mailer, db: &mut Tx, (a, b): (u8, u8)) -> Result<(), E> {}
        };
        let job = JobFn::from_syn(&item);
        assert_eq!(job.struct_ident, "SendEmail");
        let kinds: Vec<&str> = job
            .params
            .iter()
            .map(|p| match p {
                Param::Payload(p) if p.ident.is_some() => "payload",
                Param::Payload(_) => "pattern",
                Param::Shared { .. } => "shared",
                Param::Scoped { .. } => "scoped",
                Param::Receiver(_) => "self",
            })
            .collect();
        assert_eq!(kinds, ["payload", "shared", "shared", "scoped", "pattern"]);
        assert!(job.output.is_some());
    }
}
