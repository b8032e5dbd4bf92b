//! `happen`: the command-line companion of the Happen framework.
//!
//! ```text
//! happen demo [--nats URL] [--role all|services|storefront] [--trace-json]
//!                  run the order-processing demo (embedded unless --nats is given)
//! happen state get --nats URL --node ID          print a node's state
//! happen state set --nats URL --node ID JSON     replace a node's state
//! happen version   print the version
//! happen help      print this help
//! ```

use std::process::ExitCode;

// The demo is the crate's `order_processing` example, compiled in here so that
// `happen demo` and `cargo run --example order_processing` are the same program.
#[allow(dead_code)]
#[path = "../../happen/examples/order_processing.rs"]
mod order_processing;

const HELP: &str = "\
happen: tools for Happen systems

USAGE:
    happen <COMMAND>

COMMANDS:
    demo       run the order-processing demo (embedded: no server needed)
               options: --nats URL             run over NATS
                        --role services        run the services half (with --nats)
                        --role storefront      run the storefront half (with --nats)
                        --trace-json           print each event's causal record as JSON
    state      read or replace a node's state in a NATS system
               happen state get --nats URL --node ID
               happen state set --nats URL --node ID JSON
    version    print the version
    help       print this help
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            let options = match order_processing::parse_args(args[1..].iter().cloned()) {
                Ok(options) => options,
                Err(message) => {
                    eprintln!("happen demo: {message}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("happen: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(order_processing::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("happen demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("state") => match state_command(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("happen state: {message}");
                ExitCode::FAILURE
            }
        },
        Some("version" | "--version" | "-V") => {
            println!("happen {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None | Some("help" | "--help" | "-h") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("happen: unknown command {other:?}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

/// `happen state get|set --nats URL --node ID [JSON]`.
fn state_command(args: &[String]) -> Result<(), String> {
    let (verb, rest) = args.split_first().ok_or("expected get or set")?;
    let mut nats = None;
    let mut node = None;
    let mut value = None;
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--nats" => nats = Some(rest.next().ok_or("--nats needs a URL")?.clone()),
            "--node" => node = Some(rest.next().ok_or("--node needs a node id")?.clone()),
            json if value.is_none() && verb == "set" => {
                value = Some(
                    serde_json::from_str::<serde_json::Value>(json)
                        .map_err(|e| format!("{json:?} is not JSON: {e}"))?,
                );
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let nats = nats.ok_or("--nats URL is required")?;
    let node = node.ok_or("--node ID is required")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let happen = happen::Happen::connect(happen::NatsConfig::new(nats).name("happen-cli"))
            .await
            .map_err(|e| e.to_string())?;
        // Through the store, without becoming the node: a live node with
        // this id keeps all of its requests.
        let state = happen.state_of(&node).map_err(|e| e.to_string())?;
        let result = match (verb.as_str(), value) {
            ("get", None) => state.get().await,
            ("set", Some(value)) => state.set(move |_| value.clone()).await,
            ("set", None) => return Err("set needs a JSON value".to_owned()),
            (other, _) => return Err(format!("unknown verb {other:?}; use get or set")),
        }
        .map_err(|e| e.to_string())?;
        println!("{result}");
        happen.shutdown().await;
        Ok(())
    })
}
