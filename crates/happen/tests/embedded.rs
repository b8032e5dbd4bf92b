//! The conformance suite on the embedded (in-process) runtime.

mod conformance;

use futures::future::BoxFuture;
use happen::{Happen, HappenConfig};

struct Embedded;

impl conformance::Backend for Embedded {
    fn start(&self, config: HappenConfig) -> BoxFuture<'static, Happen> {
        Box::pin(async move { Happen::embedded_with(config) })
    }
}

conformance_suite!(Embedded);
