//! `happen view`: a local web page drawing the causal graph of a
//! transaction, live, and a feed of transactions.
//!
//! A small axum server on 127.0.0.1 serves the page (HTML, script and style
//! compiled into the binary: nothing is fetched from elsewhere) and the
//! three routes it reads: `/api/transactions` (the recent ones, newest first),
//! `/api/transactions/{id}` (one, as `happen::trace::Transaction` JSON),
//! and `/api/live` (every record as it is made, as server-sent events).
//!
//! Embedded, the demo runs in this process with a recorder (`--repeat`
//! runs it again every so often). Over NATS, transactions are read from the
//! system's JetStream trace and the feed follows its records live.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use futures::Stream;
use happen::trace::Recorder;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::order_processing;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("view.js");

#[derive(Debug, Args)]
pub(crate) struct ViewArgs {
    /// Show the NATS system at URL (its JetStream trace) instead of the
    /// embedded demo
    #[arg(long, value_name = "URL", env = crate::NATS_URL_ENV)]
    pub(crate) nats: Option<String>,

    /// The port on 127.0.0.1 to serve on (0: any free port)
    #[arg(long, default_value_t = 7777)]
    pub(crate) port: u16,

    /// Embedded: run the demo again every SECONDS
    #[arg(long, value_name = "SECONDS")]
    pub(crate) repeat: Option<u64>,
}

/// Where the page's answers come from.
struct Sources {
    /// Answers for one transaction.
    queries: Recorder,
    /// Recent transactions, kept from the live records.
    feed: Recorder,
    /// Set by Ctrl-C: live streams end.
    stop: tokio::sync::watch::Receiver<bool>,
}

pub(crate) async fn view(args: ViewArgs) -> Result<(), String> {
    let feed = Recorder::in_memory(200_000);
    let (queries, runtime) = match &args.nats {
        None => (feed.clone(), None),
        Some(url) => {
            let happen = crate::connect_recording(url).await?;
            let queries = happen.recorder().ok_or("no recorder")?.clone();
            // The feed keeps what the system records from now on.
            let mut live = queries.watch();
            queries.watching().await;
            let kept = feed.clone();
            tokio::spawn(async move {
                loop {
                    match live.recv().await {
                        Ok(record) => kept.keep(record),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
            });
            (queries, Some(happen))
        }
    };
    // Ctrl-C ends everything: the demo's repetitions, the server, and the
    // pages' live streams (which would otherwise hold the server's
    // graceful shutdown open for as long as a tab is).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    let sources = Arc::new(Sources {
        queries,
        feed: feed.clone(),
        stop: stop.clone(),
    });
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/view.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route("/api/transactions", get(transactions))
        .route("/api/transactions/{id}", get(transaction))
        .route("/api/live", get(live))
        .with_state(sources);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let _ = writeln!(std::io::stdout(), "view: http://{address}/");
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop))
                .await
        }
    });
    if args.nats.is_none() {
        let options = order_processing::Options {
            nats: None,
            role: order_processing::Role::All,
            trace_json: false,
            record: true,
        };
        loop {
            let played = tokio::select! {
                played = order_processing::play(&options, Some(feed.clone())) => played,
                () = stopped(stop.clone()) => break,
            };
            let played = played.map_err(|e| e.to_string())?;
            if let Some(tx) = &played.transaction {
                let _ = writeln!(std::io::stdout(), "Transaction: {}", tx.correlation_id());
            }
            let Some(seconds) = args.repeat else { break };
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(seconds.max(1))) => {}
                () = stopped(stop.clone()) => break,
            }
        }
    }
    // Whoever started us may have stopped reading (a closed pipe): that
    // must not stop the server.
    let _ = writeln!(std::io::stdout(), "serving until Ctrl-C");
    let served = server.await.map_err(|e| e.to_string())?;
    if let Some(happen) = runtime {
        happen.shutdown().await;
    }
    served.map_err(|e| e.to_string())
}

fn page(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The recent transactions, newest first, each with its root's type and
/// whether anything failed.
async fn transactions(State(sources): State<Arc<Sources>>) -> Response {
    let mut list = Vec::new();
    for id in sources.feed.recent(50) {
        let Ok(tx) = sources.feed.transaction(&id).await else {
            continue;
        };
        let root = tx.roots().first().map(|e| e.event_type.clone());
        list.push(serde_json::json!({
            "correlationId": id,
            "root": root,
            "events": tx.events().len(),
            "failed": !tx.failed().is_empty(),
        }));
    }
    Json(list).into_response()
}

async fn transaction(State(sources): State<Arc<Sources>>, Path(id): Path<String>) -> Response {
    // Over NATS the read waits for the server: not for good.
    match tokio::time::timeout(QUERY_LIMIT, sources.queries.transaction(&id)).await {
        Ok(Ok(tx)) => Json(tx).into_response(),
        Ok(Err(e)) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the trace was not read within {} s: is the NATS server reachable?",
                QUERY_LIMIT.as_secs()
            ),
        )
            .into_response(),
    }
}

/// How long a page's request waits for the trace to be read.
const QUERY_LIMIT: Duration = Duration::from_secs(10);

/// Resolves once Ctrl-C was pressed.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn live(
    State(sources): State<Arc<Sources>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let records = BroadcastStream::new(sources.feed.watch()).filter_map(|record| {
        let record = record.ok()?;
        SseEvent::default().json_data(record).ok().map(Ok)
    });
    let records = futures::StreamExt::take_until(records, Box::pin(stopped(sources.stop.clone())));
    Sse::new(records).keep_alive(KeepAlive::default())
}
