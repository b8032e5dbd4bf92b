//! The conformance suite on the NATS runtime: every test gets its own
//! nats-server (JetStream on, free loopback port, temporary store).

mod conformance;

use std::sync::Arc;

use futures::future::BoxFuture;
use happen::{Happen, HappenConfig, NatsConfig};
use happen_test::NatsServer;

struct Nats {
    server: Arc<NatsServer>,
}

impl Nats {
    fn new() -> Self {
        Nats {
            server: Arc::new(NatsServer::start().expect("nats-server starts")),
        }
    }
}

impl conformance::Backend for Nats {
    fn start(&self, config: HappenConfig) -> BoxFuture<'static, Happen> {
        let url = self.server.url();
        let server = self.server.clone();
        Box::pin(async move {
            let happen = Happen::connect_with(NatsConfig::new(url), config)
                .await
                .expect("connects to the test server");
            drop(server);
            happen
        })
    }
}

conformance_suite!(Nats::new());
