//! [`Cause`]: the underlying error of a [`HappenError`](super::HappenError).

use std::fmt;
use std::sync::Arc;

use super::{BoxError, HappenError};

/// The underlying error of a [`HappenError`], kept in the process where it
/// happened (errors cross the wire as text).
///
/// It dereferences to the error itself, so `downcast_ref` finds your own
/// error type; see [`HappenError::handler_error`]. Two causes are equal when
/// they are the same error value.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps an error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Cause(Arc::from(error.into()))
    }
}

impl std::ops::Deref for Cause {
    type Target = dyn std::error::Error + Send + Sync + 'static;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// A nested [`HappenError::HandlerFailed`] is shown without its `cause`:
/// that text is the outer error's `cause` already, and repeating it at every
/// level made a chain's `Debug` quadratic (357 KB for a 100-deep request
/// loop). Other errors show their own `Debug`.
impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.downcast_ref::<HappenError>() {
            Some(HappenError::HandlerFailed {
                node,
                event_type,
                source,
                ..
            }) => f
                .debug_struct("HandlerFailed")
                .field("node", node)
                .field("event_type", event_type)
                .field("source", source)
                .finish_non_exhaustive(),
            _ => fmt::Debug::fmt(&*self.0, f),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cause {}

/// The text of a caught panic's payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
