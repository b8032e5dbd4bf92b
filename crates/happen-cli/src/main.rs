//! `happen`: the command-line companion of the Happen framework.
//!
//! ```text
//! happen demo [--nats URL] [--role all|services|storefront] [--trace-json] [--record]
//! happen trace [--nats URL CORRELATION_ID] [--json]
//! happen watch [PATTERN] [--nats URL] [--count N]
//! happen view [--nats URL] [--port P] [--repeat SECONDS]
//! happen bench [--nats URL] [--messages N] [--reps N]
//! happen state get --nats URL --node ID
//! happen state set --nats URL --node ID JSON
//! happen version
//! ```
//!
//! `happen --help`, and `--help` after any command, says the rest. Wherever
//! `--nats URL` is accepted, `HAPPEN_NATS_URL` may stand in for it. Usage
//! errors exit with 2, failures while running with 1.
//!
//! Without the `nats` feature (on by default) the binary links no NATS code:
//! the demo runs embedded only, and `state` says which feature it needs.

use std::future::Future;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::Value;

// The demo is the crate's `order_processing` example, compiled in here so that
// `happen demo` and `cargo run --example order_processing` are one program.
// Its `parse_args` serves the example; this binary maps its own options.
mod bench;
#[allow(dead_code)]
#[path = "../../happen/examples/order_processing.rs"]
mod order_processing;
mod trace;
mod view;

/// The environment variable that may give the NATS URL instead of `--nats`.
const NATS_URL_ENV: &str = "HAPPEN_NATS_URL";

#[cfg(feature = "nats")]
const AFTER_HELP: &str = "\
Every --nats URL may come from the HAPPEN_NATS_URL environment variable instead.
Exit status: 0 on success, 2 for a usage error, 1 when the command fails.";

#[cfg(not(feature = "nats"))]
const AFTER_HELP: &str = "\
This build has no NATS support (built without the `nats` feature): the demo
runs embedded only, and `state` is unavailable. Rebuild with `--features nats`.
Exit status: 0 on success, 2 for a usage error, 1 when the command fails.";

/// Tools for Happen systems.
#[derive(Debug, Parser)]
#[command(name = "happen", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the order-processing demo (embedded: no server needed)
    Demo(DemoArgs),
    /// Read or replace a node's state in a NATS system
    #[cfg_attr(
        not(feature = "nats"),
        command(about = "Read or replace a node's state in a NATS system \
                         (not in this build: it needs the `nats` feature)")
    )]
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Print a transaction's causal tree from the recorded trace (without
    /// --nats: the embedded demo's)
    Trace(trace::TraceArgs),
    /// Show events as they happen, with their causal links (without
    /// --nats: the embedded demo's)
    Watch(trace::WatchArgs),
    /// Serve a web page (on 127.0.0.1) drawing transactions' causal graphs,
    /// live (without --nats: the embedded demo's)
    View(view::ViewArgs),
    /// Measure this machine (or a NATS server) beside a baseline in the
    /// same run, and print the table
    Bench(bench::BenchArgs),
    /// Print the version
    Version,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Run over the NATS server at URL instead of in this process alone
    #[arg(
        long,
        value_name = "URL",
        env = NATS_URL_ENV,
        required_if_eq_any([("role", "services"), ("role", "storefront")]),
    )]
    nats: Option<String>,

    /// Which nodes this process runs. `services` and `storefront` are the
    /// two halves of a system spread over two processes: they need --nats
    #[arg(long, value_enum, default_value_t = Role::All)]
    role: Role,

    /// Print each event's causal record as a `TRACE {json}` line
    #[arg(long)]
    trace_json: bool,

    /// Record the causal web (over NATS: in JetStream, for `happen trace`)
    /// and print the order's transaction as a tree
    #[arg(long)]
    record: bool,
}

/// The demo's roles, spelled for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Every node, in this process
    All,
    /// The inventory, payment, shipping and notification services
    Services,
    /// The storefront and the order service, which place the order
    Storefront,
}

impl From<Role> for order_processing::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::All => Self::All,
            Role::Services => Self::Services,
            Role::Storefront => Self::Storefront,
        }
    }
}

impl From<DemoArgs> for order_processing::Options {
    fn from(args: DemoArgs) -> Self {
        Self {
            nats: args.nats,
            role: args.role.into(),
            trace_json: args.trace_json,
            record: args.record,
        }
    }
}

#[derive(Debug, Subcommand)]
enum StateAction {
    /// Print a node's state as JSON (`null` if it has none)
    Get {
        #[command(flatten)]
        target: StateTarget,
    },
    /// Replace a node's state with a JSON value, and print the new state
    Set {
        #[command(flatten)]
        target: StateTarget,
        /// The new state, as JSON: '{"balance":42}', 7, '"text"', null
        #[arg(value_name = "JSON", value_parser = parse_json, allow_hyphen_values = true)]
        value: Value,
    },
}

/// Whose state, and where. The command reads and writes the store without
/// becoming the node, so a live node with this id keeps all of its events.
#[derive(Debug, Args)]
struct StateTarget {
    /// The NATS server of the system (required, here or in the environment)
    #[arg(long, value_name = "URL", env = NATS_URL_ENV)]
    nats: Option<String>,

    /// The node whose state to read or write
    #[arg(long, value_name = "ID", value_parser = parse_node_id)]
    node: String,
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("not JSON ({e}); a string needs its quotes, as in '\"text\"'"))
}

fn parse_node_id(id: &str) -> Result<String, String> {
    happen::name::validate_node_id(id)
        .map(|()| id.to_owned())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => demo(args),
        Command::State { action } => state(action),
        Command::Trace(args) => {
            if args.nats.is_some() && args.id.is_none() {
                usage_error(
                    &["trace"],
                    "over NATS, say which transaction: happen trace --nats URL <CORRELATION_ID>",
                );
            }
            if args.nats.is_none() && args.id.is_some() {
                usage_error(
                    &["trace"],
                    "a correlation id is read from a NATS system's trace: add --nats URL (without it, the embedded demo is traced)",
                );
            }
            needs_nats(&["trace"], args.nats.is_some());
            run_async("happen trace", trace::trace(args))
        }
        Command::Watch(args) => {
            needs_nats(&["watch"], args.nats.is_some());
            run_async("happen watch", trace::watch(args))
        }
        Command::Bench(args) => {
            needs_nats(&["bench"], args.nats.is_some());
            run_async("happen bench", bench::bench(args))
        }
        Command::View(args) => {
            needs_nats(&["view"], args.nats.is_some());
            run_async("happen view", view::view(args))
        }
        Command::Version => {
            print!("{}", Cli::command().render_version());
            ExitCode::SUCCESS
        }
    }
}

/// Reports a usage error found after parsing (of the command named by
/// `path` below `happen`), formatted and with the exit status (2) of those
/// clap finds itself.
fn usage_error(path: &[&str], message: &str) -> ! {
    let mut command = Cli::command();
    command.build(); // so that usage lines say `happen state get`, not `get`
    for name in path {
        command = command
            .find_subcommand(name)
            .expect("a subcommand of Cli")
            .clone();
    }
    command
        .error(ErrorKind::MissingRequiredArgument, message)
        .exit()
}

/// Runs `work` to completion on a fresh tokio runtime; an error is printed
/// after `label` and makes the exit status 1.
fn run_async(label: &str, work: impl Future<Output = Result<(), String>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(work));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{label}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A usage error when `--nats` is given to a build without NATS support.
fn needs_nats(path: &[&str], given: bool) {
    if !cfg!(feature = "nats") && given {
        usage_error(
            path,
            "--nats (or HAPPEN_NATS_URL) needs NATS support, and this build has none: \
             rebuild happen-cli with `--features nats`, or unset HAPPEN_NATS_URL to run embedded",
        );
    }
}

/// A runtime on the NATS server at `url` that reads (and would write) the
/// system's JetStream trace.
#[cfg(feature = "nats")]
async fn connect_recording(url: &str) -> Result<happen::Happen, String> {
    let config = happen::NatsConfig::new(url)
        .name("happen-cli")
        .record(happen::trace::TraceRetention::default());
    happen::Happen::connect(config)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

#[cfg(not(feature = "nats"))]
async fn connect_recording(_url: &str) -> Result<happen::Happen, String> {
    Err("this build has no NATS support".to_owned())
}

fn demo(args: DemoArgs) -> ExitCode {
    needs_nats(&["demo"], args.nats.is_some());
    let options = order_processing::Options::from(args);
    run_async("happen demo failed", async move {
        order_processing::run(options)
            .await
            .map_err(|e| e.to_string())
    })
}

#[cfg(not(feature = "nats"))]
fn state(_action: StateAction) -> ExitCode {
    usage_error(
        &["state"],
        "`happen state` works over NATS, and this build has no NATS support: \
         rebuild happen-cli with `--features nats`",
    )
}

#[cfg(feature = "nats")]
fn state(action: StateAction) -> ExitCode {
    let (verb, target, value) = match action {
        StateAction::Get { target } => ("get", target, None),
        StateAction::Set { target, value } => ("set", target, Some(value)),
    };
    // Checked here rather than by clap, whose message would not mention
    // the environment variable.
    let Some(url) = target.nats else {
        usage_error(
            &["state", verb],
            "no NATS server given: pass --nats URL, or set HAPPEN_NATS_URL",
        );
    };
    run_async("happen state", async move {
        let happen = happen::Happen::connect(happen::NatsConfig::new(&url).name("happen-cli"))
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let result = read_or_write(&happen, &target.node, value).await;
        happen.shutdown().await;
        println!("{}", result.map_err(|e| e.to_string())?);
        Ok(())
    })
}

/// Reads (`value` is `None`) or replaces the state of `node`.
#[cfg(feature = "nats")]
async fn read_or_write(
    happen: &happen::Happen,
    node: &str,
    value: Option<Value>,
) -> happen::Result<Value> {
    // `state_of`, not `node`: a node made here with the target's id would
    // join its NATS queue group and take a share of its requests.
    let state = happen.state_of(node)?;
    match value {
        None => state.get().await,
        Some(value) => state.set(move |_| value.clone()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `happen demo <args>` ignoring `HAPPEN_NATS_URL`, so the test
    /// means the same wherever it runs.
    fn demo_options(args: &[&str]) -> Result<order_processing::Options, clap::Error> {
        let command = Cli::command()
            .mut_subcommand("demo", |demo| demo.mut_arg("nats", |nats| nats.env(None)));
        let matches =
            command.try_get_matches_from(["happen", "demo"].iter().chain(args).copied())?;
        match <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?.command {
            Command::Demo(args) => Ok(args.into()),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn example_options(args: &[&str]) -> Result<order_processing::Options, String> {
        order_processing::parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn the_demo_reads_its_options_as_the_example_does() {
        for args in [
            &[][..],
            &["--trace-json"],
            &["--role", "all"],
            &["--nats", "nats://h:4222"],
            &["--nats", "nats://h:4222", "--role", "services"],
            &[
                "--role",
                "storefront",
                "--nats",
                "nats://h:4222",
                "--trace-json",
            ],
        ] {
            assert_eq!(
                demo_options(args).unwrap(),
                example_options(args).unwrap(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn the_demo_refuses_what_the_example_refuses() {
        for args in [
            &["--role", "services"][..],
            &["--role", "storefront", "--trace-json"],
            &["--role", "everything"],
            &["--nats"],
            &["--bogus"],
        ] {
            assert!(example_options(args).is_err(), "{args:?}");
            let error = demo_options(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn state_set_wants_json() {
        let parse = |value: &str| {
            Cli::try_parse_from([
                "happen", "state", "set", "--nats", "nats://h", "--node", "n", value,
            ])
        };
        assert!(parse(r#"{"a":1}"#).is_ok());
        assert!(
            parse("-3").is_ok(),
            "a negative number is a value, not a flag"
        );
        let error = parse("plain words").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(
            error.to_string().contains("a string needs its quotes"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_node_id_is_a_usage_error() {
        let error = Cli::try_parse_from([
            "happen", "state", "get", "--nats", "nats://h", "--node", "a.b",
        ])
        .unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }
}
