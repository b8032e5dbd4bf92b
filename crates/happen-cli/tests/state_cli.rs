//! `happen state` reads and writes a node's state without becoming the node.
//!
//! An earlier CLI made a node with the target's id to reach its state; over
//! NATS that node joined the target's queue group, and while the CLI ran it
//! took a share of the live node's requests (answering them `NoHandler`).
//! Here a node is kept busy with requests from another runtime while the CLI
//! reads and writes its state, and every request must reach the real node.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use happen::prelude::*;
use happen::{Happen, NatsConfig};
use happen_test::NatsServer;

const URL_ENV: &str = "HAPPEN_NATS_URL";

/// Runs the `happen` binary with `args`, with `HAPPEN_NATS_URL` set to
/// `env_url` or removed.
fn happen_cli(args: &[&str], env_url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_happen"));
    command.args(args);
    match env_url {
        Some(url) => command.env(URL_ENV, url),
        None => command.env_remove(URL_ENV),
    };
    command.output().expect("the happen binary runs")
}

fn stdout_of(args: &[&str], env_url: Option<&str>) -> String {
    let out = happen_cli(args, env_url);
    assert!(
        out.status.success(),
        "happen {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

async fn connect(url: &str) -> Happen {
    Happen::connect(NatsConfig::new(url))
        .await
        .expect("connects to the test server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_never_takes_a_live_nodes_requests() {
    const AT_LEAST: usize = 300;
    const PINGERS: usize = 4;
    let server = NatsServer::start().expect("nats-server starts");
    let url = server.url();

    let service = connect(&url).await;
    let svc = service.node("svc").unwrap();
    svc.on("ping", |_event: Event, _cx: Context| async {
        json!("pong")
    })
    .unwrap();
    service.flush().await.unwrap();

    // Callers in another runtime keep requests to svc in flight, back to
    // back, for the CLI's whole run: any moment the CLI spends subscribed as
    // svc would draw some of them.
    let client = connect(&url).await;
    let cli_done = Arc::new(AtomicBool::new(false));
    let pingers: Vec<_> = (0..PINGERS)
        .map(|i| {
            let caller = client.node(&format!("caller-{i}")).unwrap();
            let cli_done = cli_done.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !cli_done.load(Ordering::Acquire) || answers.len() < AT_LEAST / PINGERS {
                    let answer = caller
                        .send("svc", Event::new("ping", json!(null)))
                        .timeout(Duration::from_secs(20))
                        .response()
                        .await;
                    answers.push(answer);
                }
                answers
            })
        })
        .collect();

    let cli = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            for n in 1..=3 {
                let value = format!(r#"{{"version":{n}}}"#);
                stdout_of(
                    &["state", "set", "--nats", &url, "--node", "svc", &value],
                    None,
                );
            }
            stdout_of(&["state", "get", "--nats", &url, "--node", "svc"], None)
        }
    });
    let got = cli.await.expect("the CLI thread");
    cli_done.store(true, Ordering::Release);
    let mut answers = Vec::new();
    for pinger in pingers {
        answers.extend(pinger.await.expect("a pinging task"));
    }

    let got: serde_json::Value = serde_json::from_str(&got).expect("get prints JSON");
    assert_eq!(
        got,
        json!({ "version": 3 }),
        "get prints the last value set"
    );
    assert!(answers.len() >= AT_LEAST, "{} requests", answers.len());
    let wrong: Vec<String> = answers
        .iter()
        .filter(|answer| !matches!(answer, Ok(v) if *v == json!("pong")))
        .map(|answer| format!("{answer:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests were not answered by svc, such as {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(3)]
    );
    // And the live node sees what the CLI wrote.
    assert_eq!(svc.state().get().await.unwrap(), json!({ "version": 3 }));

    client.shutdown().await;
    service.shutdown().await;
}

#[test]
fn the_url_may_come_from_the_environment() {
    let server = NatsServer::start().expect("nats-server starts");
    let url = server.url();
    stdout_of(&["state", "set", "--node", "cfg", "[1,2,3]"], Some(&url));
    assert_eq!(
        stdout_of(&["state", "get", "--node", "cfg"], Some(&url)).trim(),
        "[1,2,3]"
    );
    // --nats, when given, wins over the environment.
    let unreachable = "nats://127.0.0.1:1";
    assert_eq!(
        stdout_of(
            &["state", "get", "--nats", &url, "--node", "cfg"],
            Some(unreachable)
        )
        .trim(),
        "[1,2,3]"
    );
    // And the help says the variable exists.
    let help = stdout_of(&["state", "get", "--help"], None);
    assert!(help.contains(URL_ENV), "{help}");
}

#[test]
fn usage_errors_exit_with_2_and_say_what_is_missing() {
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "state",
                "set",
                "--nats",
                "nats://127.0.0.1:1",
                "--node",
                "svc",
            ],
            "<JSON>",
        ),
        (
            &[
                "state",
                "set",
                "--nats",
                "nats://127.0.0.1:1",
                "--node",
                "svc",
                "hello",
            ],
            "a string needs its quotes",
        ),
        (&["state", "get", "--node", "svc"], URL_ENV),
        (&["state", "get", "--nats", "nats://127.0.0.1:1"], "--node"),
        (&["stat"], "state"), // clap suggests the command meant
    ];
    for (args, hint) in cases {
        let out = happen_cli(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "happen {args:?}: {stderr}");
        assert!(
            stderr.contains(hint),
            "happen {args:?} should mention {hint}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "happen {args:?} printed to stdout");
    }
}

#[test]
fn an_unreachable_server_is_a_failure_not_a_usage_error() {
    let out = happen_cli(
        &[
            "state",
            "get",
            "--nats",
            "nats://127.0.0.1:1",
            "--node",
            "svc",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to nats://127.0.0.1:1"),
        "{stderr}"
    );
}
