//! Raw NATS clients in tests: knowing when the server has taken what a
//! client sent.
//!
//! `async_nats::Client::flush` only writes the client's buffer to the
//! socket; it does not wait for the server. A test that subscribes with a
//! raw client, flushes, and then has another connection publish can lose
//! that message: the server may read the other connection's publish before
//! this one's subscription. [`round_trip`] waits for the server instead.

use std::io;
use std::time::Duration;

use futures::StreamExt;

/// How long a round trip through a running server may take.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(10);

/// Waits until the server has processed everything `client` sent before
/// this call (its subscriptions included): a message through the server
/// and back on the same connection, which the server handles in order.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = happen_test::NatsServer::start()?;
/// let raw = async_nats::connect(server.url()).await?;
/// let heard = raw.subscribe("happen.node.ledger").await?;
/// happen_test::round_trip(&raw).await?;
/// // Whatever any connection publishes to happen.node.ledger now is heard.
/// # Ok(()) }
/// ```
pub async fn round_trip(client: &async_nats::Client) -> io::Result<()> {
    let probe = client.new_inbox();
    let mut back = client
        .subscribe(probe.clone())
        .await
        .map_err(io::Error::other)?;
    client
        .publish(probe, bytes::Bytes::new())
        .await
        .map_err(io::Error::other)?;
    client.flush().await.map_err(io::Error::other)?;
    match tokio::time::timeout(ROUND_TRIP_LIMIT, back.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(io::Error::other(
            "the connection closed during a round trip",
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no round trip through the server within {ROUND_TRIP_LIMIT:?}"),
        )),
    }
}

/// Subscribes `client` to `subject` and waits until the server has the
/// subscription (see [`round_trip`]).
pub async fn subscribed(
    client: &async_nats::Client,
    subject: &str,
) -> io::Result<async_nats::Subscriber> {
    let subscriber = client
        .subscribe(subject.to_owned())
        .await
        .map_err(io::Error::other)?;
    round_trip(client).await?;
    Ok(subscriber)
}
