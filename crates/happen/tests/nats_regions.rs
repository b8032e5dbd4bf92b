//! Multi-region: two NATS clusters (one server each, `us-west` and
//! `eu-central`) joined by gateways into a super-cluster, on loopback. The
//! gateway connections run through proxies the test can cut, as a region
//! losing its link would.
//!
//! - A node in one region answers a request from the other.
//! - With the link cut, each region keeps serving its own nodes, and a
//!   request across is an error within its timeout (not a hang).
//! - With the link back, requests cross again.
//!
//! Counted: requests sent and answered on each side while cut.

use std::time::Duration;

use happen::nats::NatsConfig;
use happen::prelude::*;
use happen_test::NatsServer;

mod support;
use support::*;

/// A region's server: its gateway listens on `own`, reaches the other
/// region's through `to_other` (a link), and advertises `advertised` (the
/// link the other region reaches it through), so that gossip does not
/// teach the other side a way around the link.
fn region(name: &str, own: u16, advertised: u16, other: &str, to_other: u16) -> NatsServer {
    NatsServer::builder()
        .without_jetstream()
        .config(format!("server_name: {name}-1"))
        .config(format!(
            "gateway {{ name: \"{name}\", listen: \"127.0.0.1:{own}\", advertise: \"127.0.0.1:{advertised}\", \
             gateways: [ {{ name: \"{other}\", urls: [\"nats://127.0.0.1:{to_other}\"] }} ] }}"
        ))
        .start()
        .expect("a region's server starts")
}

async fn runtime(server: &NatsServer) -> Happen {
    Happen::connect(
        NatsConfig::new(server.url())
            .jetstream(false)
            .co_located(false),
    )
    .await
    .expect("connects to its region")
}

/// Answers `"which"` with the region's name.
fn serve(happen: &Happen, id: &str, region: &'static str) -> Node {
    let node = happen.node(id).unwrap();
    node.on("which", move |_e: Event, _cx: Context| async move {
        json!(region)
    })
    .unwrap();
    node
}

async fn ask(from: &Node, to: &str, timeout: Duration) -> happen::Result<Value> {
    from.send(to, Event::new("which", json!(null)))
        .timeout(timeout)
        .response()
        .await
}

/// Asks until an answer comes (the gateway link takes a moment to form).
async fn until_answered(from: &Node, to: &str) -> Value {
    within("an answer across the regions", 30, async {
        loop {
            if let Ok(answer) = ask(from, to, Duration::from_millis(500)).await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_answer_each_other_and_keep_serving_locally_when_cut_apart() {
    let (west_gw, east_gw) = (free_port(), free_port());
    let (to_east, to_west) = (free_port(), free_port());
    let west_link = Link::start(to_east, east_gw).await;
    let east_link = Link::start(to_west, west_gw).await;
    let west = region("us-west", west_gw, to_west, "eu-central", to_east);
    let east = region("eu-central", east_gw, to_east, "us-west", to_west);

    let west_services = runtime(&west).await;
    let west_clients = runtime(&west).await;
    let east_services = runtime(&east).await;
    let east_clients = runtime(&east).await;
    serve(&west_services, "inventory", "us-west");
    serve(&east_services, "pricing", "eu-central");
    west_services.flush().await.unwrap();
    east_services.flush().await.unwrap();
    let west_client = west_clients.node("west-client").unwrap();
    let east_client = east_clients.node("east-client").unwrap();

    // Across the gateway, both ways.
    assert_eq!(until_answered(&east_client, "inventory").await, "us-west");
    assert_eq!(until_answered(&west_client, "pricing").await, "eu-central");

    // The link goes down.
    west_link.cut().await;
    east_link.cut().await;
    within("the cut to show", 30, async {
        while ask(&east_client, "inventory", Duration::from_millis(300))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // Each region keeps serving itself; across is an error, on time.
    let (mut sent, mut answered) = (0, 0);
    for _ in 0..20 {
        for (client, node) in [(&west_client, "inventory"), (&east_client, "pricing")] {
            sent += 1;
            if ask(client, node, Duration::from_secs(2)).await.is_ok() {
                answered += 1;
            }
        }
    }
    // Bounded: the request across ends with an error, it does not hang.
    let across = within(
        "the request across to end",
        10,
        ask(&east_client, "inventory", Duration::from_secs(1)),
    )
    .await;
    assert!(across.is_err(), "{across:?}");
    println!(
        "regions cut apart: local requests sent={sent} answered={answered}; across: {}",
        across.unwrap_err()
    );
    assert_eq!(answered, sent, "each region served its own nodes");

    // The link comes back: requests cross again.
    west_link.restore();
    east_link.restore();
    assert_eq!(until_answered(&east_client, "inventory").await, "us-west");
    assert_eq!(until_answered(&west_client, "pricing").await, "eu-central");

    for happen in [west_clients, east_clients, west_services, east_services] {
        happen.shutdown().await;
    }
}
