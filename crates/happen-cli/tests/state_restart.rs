//! Over NATS a node's state lives in JetStream, not in the process: a node
//! that sets its state, exits, and starts again in a new process finds it.

use std::process::Command;

use happen_test::NatsServer;

fn happen(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_happen"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "happen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn state_survives_the_nodes_process() {
    let server = NatsServer::start().expect("nats-server starts");
    let url = server.url();
    assert_eq!(
        happen(&["state", "get", "--nats", &url, "--node", "ledger"]).trim(),
        "null"
    );
    happen(&[
        "state",
        "set",
        "--nats",
        &url,
        "--node",
        "ledger",
        r#"{"balance":42,"owner":"ada"}"#,
    ]);
    // A new process for the same node id.
    let state: serde_json::Value = serde_json::from_str(&happen(&[
        "state", "get", "--nats", &url, "--node", "ledger",
    ]))
    .unwrap();
    assert_eq!(state, serde_json::json!({ "balance": 42, "owner": "ada" }));
    // Other nodes' state is separate.
    assert_eq!(
        happen(&["state", "get", "--nats", &url, "--node", "other"]).trim(),
        "null"
    );
}
