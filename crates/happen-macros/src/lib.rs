//! Procedural macros for [happen](https://docs.rs/happen); use them through
//! the `happen` crate (`#[happen::step]`).

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, ReturnType, parse_macro_input, spanned::Spanned};

/// Turns `async fn name(args) -> T { body }` into
/// `fn name(args) -> BoxFuture<'static, T> { Box::pin(async move { body }) }`.
///
/// The boxed, explicitly `Send` future type lets a step refer to itself or to
/// steps that refer back to it. See `happen::step` for an example.
#[proc_macro_attribute]
pub fn step(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[happen::step] takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut function = parse_macro_input!(item as ItemFn);
    if function.sig.asyncness.is_none() {
        return syn::Error::new(
            function.sig.fn_token.span(),
            "#[happen::step] goes on an `async fn`",
        )
        .to_compile_error()
        .into();
    }
    function.sig.asyncness = None;
    let output = match &function.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    function.sig.output = syn::parse_quote!(
        -> ::happen::__private::BoxFuture<'static, #output>
    );
    let body = &function.block;
    function.block = syn::parse_quote!({
        ::std::boxed::Box::pin(async move #body)
    });
    quote!(#function).into()
}
