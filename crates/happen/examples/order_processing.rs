//! The order system of the Happen documentation, in one process.
//!
//! A storefront asks the order service to create an order. The order service
//! runs a flow of four steps (validate → inventory → payment → shipment),
//! asking other nodes along the way with send/response, then broadcasts
//! `order.completed`, which the notification service picks up. At the end the
//! demo prints the result and the causal chain of every event: each one knows
//! what caused it and which transaction it belongs to, with no bookkeeping in
//! the handlers.
//!
//! Run it with `cargo run --example order_processing` (all nodes in this
//! process, no server). Distributed over NATS, in two terminals:
//!
//! ```text
//! cargo run --example order_processing -- --nats nats://127.0.0.1:4222 --role services
//! cargo run --example order_processing -- --nats nats://127.0.0.1:4222 --role storefront
//! ```
//!
//! The node code is the same in every arrangement; only `Happen` is made
//! differently. `--trace-json` prints each event's causal record as a JSON line;
//! `--record` records the causal web (in memory, or over NATS in JetStream for
//! `happen trace --nats URL <id>` to read back) and prints it as a tree.

use std::sync::{Arc, Mutex};

#[cfg(feature = "nats")]
use happen::NatsConfig;
use happen::prelude::*;
use tokio::sync::oneshot;

/// Every event seen by any node, in arrival order, for the causal report.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn record(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// The order service's steps see the log as their node-local value.
type OrderCx = Context<Log>;
type OrderFlow = Flow<Log>;

/// Sends `event` to `target` from the running flow's node, waits for the
/// answer and logs the response event.
async fn ask(cx: &OrderCx, target: &str, event: Event) -> happen::Result<Value> {
    let response = cx.node().send(target, event).response_event().await?;
    cx.local().record(&response);
    Ok(response.payload().clone())
}

async fn validate_order(event: Event, cx: OrderCx) -> OrderFlow {
    cx.local().record(&event);
    let order = event.payload();
    let items = order["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() || order["customer"]["id"].is_null() {
        return Flow::done(json!({ "success": false, "reason": "validation-failed" }));
    }
    // The id's last twelve digits are its random part (its first eight are
    // the time, which two orders of one minute share).
    let id = event.id();
    let order_id = format!("ORD-{}", &id[id.len() - 12..]);
    cx.set("orderId", order_id);
    cx.set("items", items);
    Flow::next(check_inventory)
}

async fn check_inventory(_event: Event, cx: OrderCx) -> happen::Result<OrderFlow> {
    let stock = ask(
        &cx,
        "inventory-service",
        Event::new("check-inventory", json!({ "items": cx.get("items") })),
    )
    .await?;
    if stock["available"] != json!(true) {
        return Ok(Flow::done(
            json!({ "success": false, "reason": "inventory-shortage" }),
        ));
    }
    cx.set("reservation", stock["reservationId"].clone());
    Ok(Flow::next(process_payment))
}

async fn process_payment(event: Event, cx: OrderCx) -> happen::Result<OrderFlow> {
    let payment = ask(
        &cx,
        "payment-service",
        Event::new(
            "process-payment",
            json!({ "orderId": cx.get("orderId"), "amount": event.payload()["total"] }),
        ),
    )
    .await?;
    if payment["status"] != "approved" {
        return Ok(Flow::done(
            json!({ "success": false, "reason": "payment-failed" }),
        ));
    }
    cx.set("transactionId", payment["transactionId"].clone());
    Ok(Flow::next(create_shipment))
}

async fn create_shipment(event: Event, cx: OrderCx) -> happen::Result<Value> {
    let shipment = ask(
        &cx,
        "shipping-service",
        Event::new("create-shipment", json!({ "orderId": cx.get("orderId"), "address": event.payload()["customer"]["address"] })),
    )
    .await?;
    let result = json!({
        "success": true,
        "orderId": cx.get("orderId"),
        "transactionId": cx.get("transactionId"),
        "trackingNumber": shipment["trackingNumber"],
    });
    // Tell whoever cares; the notification service is listening.
    cx.node()
        .broadcast(Event::new("order.completed", result.clone()))?;
    Ok(result)
}

/// Which nodes this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every node.
    All,
    /// The inventory, payment, shipping and notification services.
    Services,
    /// The storefront and the order service, which place the order.
    Storefront,
}

/// Command-line options of the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Connect to this NATS server instead of running embedded.
    pub nats: Option<String>,
    /// Which nodes to run here.
    pub role: Role,
    /// Print every event's causal record as a `TRACE {json}` line.
    pub trace_json: bool,
    /// Record the causal web and print the transaction's tree.
    pub record: bool,
}

/// Reads `[--nats URL] [--role all|services|storefront] [--trace-json] [--record]`.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        nats: None,
        role: Role::All,
        trace_json: false,
        record: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nats" => options.nats = Some(args.next().ok_or("--nats needs a server URL")?),
            "--role" => {
                options.role = match args.next().as_deref() {
                    Some("all") => Role::All,
                    Some("services") => Role::Services,
                    Some("storefront") => Role::Storefront,
                    other => {
                        return Err(format!(
                            "--role takes all, services or storefront, not {other:?}"
                        ));
                    }
                }
            }
            "--trace-json" => options.trace_json = true,
            "--record" => options.record = true,
            other => {
                return Err(format!(
                    "unknown option {other:?}; options: --nats URL, --role all|services|storefront, --trace-json, --record"
                ));
            }
        }
    }
    if options.role != Role::All && options.nats.is_none() {
        return Err(
            "--role services/storefront runs half of the system: it needs --nats URL".into(),
        );
    }
    Ok(options)
}

/// Runs the demo with `options` and prints its report.
pub async fn run(options: Options) -> happen::Result<()> {
    let played = play(&options, None).await?;
    if let Some(tx) = &played.transaction {
        println!("Transaction: {}", tx.correlation_id());
    }
    report(&played.log, played.result.as_ref(), options.trace_json);
    if let Some(tx) = &played.transaction {
        println!("\nThe transaction as recorded (happen::trace):\n\n{tx}");
    }
    Ok(())
}

/// What a run of the demo left behind.
pub struct Played {
    log: Log,
    result: Option<Event>,
    /// The order's transaction as recorded (with `--record`, where the
    /// storefront ran).
    pub transaction: Option<happen::trace::Transaction>,
}

/// Runs the demo; with `--record`, records into `recorder` when one is
/// given (embedded), else into a recorder of its own.
pub async fn play(
    options: &Options,
    recorder: Option<happen::trace::Recorder>,
) -> happen::Result<Played> {
    let mut config = HappenConfig::default();
    if options.record && options.nats.is_none() {
        config = config
            .recorder(recorder.unwrap_or_else(|| happen::trace::Recorder::in_memory(100_000)));
    }
    let happen = match &options.nats {
        None => Happen::embedded_with(config),
        #[cfg(feature = "nats")]
        Some(url) => {
            let mut nats = NatsConfig::new(url.clone()).name("order-demo");
            if options.record {
                nats = nats.record(happen::trace::TraceRetention::default());
            }
            Happen::connect_with(nats, config).await?
        }
        #[cfg(not(feature = "nats"))]
        Some(_) => {
            return Err(HappenError::Config(
                "this build has no NATS support; build with the `nats` feature".into(),
            ));
        }
    };
    let log = Log::default();
    let services = options.role != Role::Storefront;
    let storefront_here = options.role != Role::Services;

    // The notification service tells us when the whole process has finished.
    let (done_tx, done_rx) = oneshot::channel();
    if services {
        start_services(&happen, &log, done_tx)?;
    }
    let storefront = if storefront_here {
        start_order_service(&happen, &log)?;
        Some(happen.node("storefront")?)
    } else {
        None
    };
    // Every node is reachable (over NATS: the server has their
    // subscriptions) before anything is sent, or another process is told to
    // start.
    happen.flush().await?;

    let mut result = None;
    let mut correlation = None;
    if let Some(storefront) = storefront {
        let order = Event::new(
            "create-order",
            json!({
                "customer": { "id": "cust-123", "name": "Jane Doe", "address": { "street": "123 Main St", "city": "Anytown", "zip": "12345" } },
                "items": [ { "id": "prod-a1", "quantity": 2 }, { "id": "prod-b7", "quantity": 1 } ],
                "total": 129.99
            }),
        );
        let sent = storefront
            .send("order-service", order)
            .timeout(std::time::Duration::from_secs(30));
        correlation = Some(sent.id().to_owned());
        let response = sent.response_event().await?;
        log.record(&response);
        result = Some(response);
    } else {
        println!("READY: services are listening; start the storefront");
    }
    if services {
        done_rx.await.map_err(|_| HappenError::NoResponse {
            node: "notification-service".into(),
            event_type: "order.completed".into(),
        })?;
    }
    // Every flow ends (and is recorded) before the runtime is down.
    happen.shutdown().await;
    let mut transaction = None;
    if let (Some(recorder), Some(correlation)) = (happen.recorder(), correlation) {
        recorder.flush().await;
        transaction = Some(recorder.transaction(&correlation).await?);
    }
    Ok(Played {
        log,
        result,
        transaction,
    })
}

fn start_order_service(happen: &Happen, log: &Log) -> happen::Result<()> {
    // Every step of the order flow gets the log from the node, typed.
    let orders = happen.node("order-service")?.with_local(log.clone());
    orders.on("create-order", validate_order)?;
    Ok(())
}

fn start_services(happen: &Happen, log: &Log, done: oneshot::Sender<()>) -> happen::Result<()> {
    let inventory = happen.node("inventory-service")?;
    let payments = happen.node("payment-service")?;
    let shipping = happen.node("shipping-service")?;
    let notifications = happen.node("notification-service")?;

    let l = log.clone();
    inventory.on("check-inventory", move |event: Event, _cx: Context| {
        l.record(&event);
        async move {
            let count = event.payload()["items"].as_array().map_or(0, Vec::len);
            json!({ "available": true, "reservationId": format!("RES-{count}") })
        }
    })?;

    let l = log.clone();
    payments.on("process-payment", move |event: Event, cx: Context| {
        l.record(&event);
        async move {
            // A handler knows who asks and that an answer is expected.
            debug_assert!(cx.expects_response());
            let amount = event.payload()["amount"].as_f64().unwrap_or(0.0);
            let status = if amount > 0.0 { "approved" } else { "declined" };
            json!({ "status": status, "transactionId": "TXN-5521", "amount": amount })
        }
    })?;

    let l = log.clone();
    shipping.on("create-shipment", move |event: Event, _cx: Context| {
        l.record(&event);
        async move { json!({ "trackingNumber": "TRK-456" }) }
    })?;

    let done = Arc::new(Mutex::new(Some(done)));
    let l = log.clone();
    notifications.on("order.*", move |event: Event, _cx: Context| {
        l.record(&event);
        let done = done.lock().unwrap().take();
        async move {
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    })?;
    Ok(())
}

fn report(log: &Log, result: Option<&Event>, trace_json: bool) {
    if let Some(response) = result {
        println!(
            "Result:\n{}\n",
            serde_json::to_string_pretty(response.payload()).unwrap_or_default()
        );
    }
    let mut events = log.0.lock().unwrap().clone();
    events.sort_by(|a, b| a.id().cmp(b.id()));
    if trace_json {
        for e in &events {
            let c = e.causal();
            let record = json!({ "type": e.event_type(), "id": c.id, "causationId": c.causation_id, "correlationId": c.correlation_id, "sender": c.sender, "path": c.path });
            println!("TRACE {record}");
        }
        return;
    }
    if let Some(first) = events.first() {
        println!(
            "Causal chain of the events seen here (correlationId {}):\n",
            first.causal().correlation_id
        );
    }
    println!(
        "{:<18} {:<22} {:<38} {:<38} path",
        "type", "sender", "id", "causationId"
    );
    for e in &events {
        let c = e.causal();
        println!(
            "{:<18} {:<22} {:<38} {:<38} {}",
            e.event_type(),
            c.sender,
            c.id,
            c.causation_id.as_deref().unwrap_or("(root)"),
            c.path.join(" > ")
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("order_processing: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(options).await {
        eprintln!("order_processing failed: {error}");
        std::process::exit(1);
    }
}
