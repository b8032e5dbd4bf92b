//! The conformance suite on the NATS runtime, twice: with every event
//! through the server, and co-located (the default). Every test gets its own
//! nats-server (JetStream on, free loopback port, temporary store).

mod conformance;

use std::sync::Arc;

use futures::future::BoxFuture;
use happen::{Happen, HappenConfig, NatsConfig};
use happen_test::NatsServer;

struct Nats {
    server: Arc<NatsServer>,
    co_located: bool,
}

impl Nats {
    fn new(co_located: bool) -> Self {
        Nats {
            server: Arc::new(NatsServer::start().expect("nats-server starts")),
            co_located,
        }
    }
}

impl conformance::Backend for Nats {
    fn start(&self, config: HappenConfig) -> BoxFuture<'static, Happen> {
        let url = self.server.url();
        let server = self.server.clone();
        let co_located = self.co_located;
        Box::pin(async move {
            let happen = Happen::connect_with(NatsConfig::new(url).co_located(co_located), config)
                .await
                .expect("connects to the test server");
            drop(server);
            happen
        })
    }
}

/// Every event through the server, even between nodes of one runtime: the
/// NATS path itself.
mod through_server {
    use super::Nats;
    crate::conformance_suite!(Nats::new(false));
}

/// The default: events between nodes of one runtime stay in the process,
/// the rest goes through the server.
mod co_located {
    use super::Nats;
    crate::conformance_suite!(Nats::new(true));
}
