//! Three of the documentation's design patterns, each asserted:
//!
//! - **observer**: a user service broadcasts profile changes; notification,
//!   analytics and search nodes each react, and the sender knows none of
//!   them;
//! - **strategy**: a shipping node picks the step that prices a parcel from
//!   a table of steps, at run time, and continues with it;
//! - **mediator**: chat participants talk only to a room node, which relays
//!   each message to the others.
//!
//! ```text
//! cargo run --example design_patterns
//! ```
//!
//! It exits non-zero if a pattern behaves otherwise (scripts/test runs it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use happen::Step;
use happen::prelude::*;

type Seen = Arc<Mutex<Vec<String>>>;

async fn observer(happen: &Happen) -> happen::Result<Vec<String>> {
    let users = happen.node("user-service")?;
    users.on("update-user-profile", |e: Event, cx: Context| async move {
        let fields: Vec<String> = e.payload()["profile"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        cx.node().broadcast(Event::new(
            "user-profile-updated",
            json!({ "userId": e.payload()["userId"], "updatedFields": fields }),
        ))?;
        Ok::<_, HappenError>(json!({ "success": true }))
    })?;
    let seen: Seen = Arc::default();
    let mut observers = Vec::new();
    for service in [
        "notification-service",
        "analytics-service",
        "search-index-service",
    ] {
        let s = seen.clone();
        let node = happen.node(service)?;
        node.on("user-profile-updated", move |e: Event, _cx: Context| {
            s.lock()
                .unwrap()
                .push(format!("{service} saw {}", e.payload()["updatedFields"]));
            async {}
        })?;
        observers.push(node);
    }
    let app = happen.node("profile-app")?;
    app.send(
        &users,
        Event::new(
            "update-user-profile",
            json!({ "userId": "u1", "profile": { "email": "a@b.c" } }),
        ),
    )
    .await?;
    // The broadcast is on its way to the observers: let them finish.
    for node in observers {
        node.shutdown().await;
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    Ok(seen)
}

/// The pricing strategies: steps, chosen by the parcel's service level.
fn strategies() -> HashMap<&'static str, Step> {
    let price = |base: f64, per_kg: f64| {
        Step::new(move |e: Event, _cx: Context| async move {
            let kg = e.payload()["kg"].as_f64().unwrap_or(0.0);
            json!(base + per_kg * kg)
        })
    };
    [
        ("standard", price(4.0, 1.0)),
        ("express", price(9.0, 2.0)),
        ("international", price(15.0, 4.5)),
    ]
    .into_iter()
    .collect()
}

async fn strategy(happen: &Happen) -> happen::Result<Vec<Value>> {
    let table = Arc::new(strategies());
    let shipping = happen.node("shipping")?;
    shipping.on("price-parcel", move |e: Event, _cx: Context| {
        let table = table.clone();
        async move {
            let level = e.payload()["level"].as_str().unwrap_or("standard");
            match table.get(level) {
                Some(step) => Flow::Next(step.clone()),
                None => Flow::fail(std::io::Error::other(format!("no strategy for {level}"))),
            }
        }
    })?;
    let shop = happen.node("parcel-shop")?;
    let mut prices = Vec::new();
    for level in ["standard", "express", "international"] {
        prices.push(
            shop.send(
                &shipping,
                Event::new("price-parcel", json!({ "level": level, "kg": 2 })),
            )
            .await?,
        );
    }
    let unknown = shop
        .send(
            &shipping,
            Event::new("price-parcel", json!({ "level": "pigeon" })),
        )
        .await;
    assert!(unknown.is_err(), "an unknown strategy fails the flow");
    Ok(prices)
}

async fn mediator(happen: &Happen) -> happen::Result<Vec<String>> {
    let members = ["ann", "bo", "cy"];
    let room = happen.node("chat-room")?;
    room.on("say", move |e: Event, cx: Context| async move {
        let from = e.causal().sender.to_string();
        for member in members.iter().filter(|m| **m != from) {
            cx.node().tell(
                *member,
                Event::new(
                    "message",
                    json!({ "from": from, "text": e.payload()["text"] }),
                ),
            )?;
        }
        Ok::<_, HappenError>(())
    })?;
    let heard: Seen = Arc::default();
    let mut nodes = Vec::new();
    for member in members {
        let h = heard.clone();
        let node = happen.node(member)?;
        node.on("message", move |e: Event, _cx: Context| {
            h.lock().unwrap().push(format!(
                "{member} <- {}: {}",
                e.payload()["from"],
                e.payload()["text"]
            ));
            async {}
        })?;
        nodes.push(node);
    }
    nodes[0]
        .send(&room, Event::new("say", json!({ "text": "hello" })))
        .await?;
    nodes[1]
        .send(&room, Event::new("say", json!({ "text": "hi ann" })))
        .await?;
    // The relayed messages are tells: let them arrive.
    for node in nodes {
        node.shutdown().await;
    }
    let mut heard = heard.lock().unwrap().clone();
    heard.sort();
    Ok(heard)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let happen = Happen::embedded();
    let observed = observer(&happen).await?;
    println!("observer: {observed:?}");
    assert_eq!(observed.len(), 3);
    assert!(
        observed.iter().all(|s| s.ends_with("saw [\"email\"]")),
        "{observed:?}"
    );

    let prices = strategy(&happen).await?;
    println!("strategy: {prices:?}");
    assert_eq!(prices, [json!(6.0), json!(13.0), json!(24.0)]);

    let heard = mediator(&happen).await?;
    println!("mediator: {heard:?}");
    assert_eq!(
        heard,
        [
            "ann <- \"bo\": \"hi ann\"",
            "bo <- \"ann\": \"hello\"",
            "cy <- \"ann\": \"hello\"",
            "cy <- \"bo\": \"hi ann\"",
        ]
    );
    happen.shutdown().await;
    Ok(())
}

/// `cargo test` runs the example as `cargo run --example` does: its own
/// assertions decide.
#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main().expect("the example ends without an error");
    }
}
