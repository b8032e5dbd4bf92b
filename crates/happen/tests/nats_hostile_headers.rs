//! Header blocks no client library writes, published by a raw peer to a
//! node's subject: the receiving process must keep serving. The server
//! relays a message's header bytes unchecked, so the client library of the
//! receiver is what meets them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use happen::nats::NatsConfig;
use happen::prelude::*;
use happen_test::NatsServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod support;
use support::*;

/// A peer speaking the NATS text protocol itself.
struct Peer {
    lines: BufReader<tokio::net::tcp::OwnedReadHalf>,
    out: tokio::net::tcp::OwnedWriteHalf,
}

impl Peer {
    async fn connect(url: &str) -> Peer {
        let stream = TcpStream::connect(url.trim_start_matches("nats://"))
            .await
            .unwrap();
        let (read, out) = stream.into_split();
        let mut peer = Peer {
            lines: BufReader::new(read),
            out,
        };
        let mut info = String::new();
        peer.lines.read_line(&mut info).await.unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let hello = b"CONNECT {\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n";
        peer.out.write_all(hello).await.unwrap();
        peer.pong().await;
        peer
    }

    /// Returns once the server has read everything written before.
    async fn pong(&mut self) {
        self.out.write_all(b"PING\r\n").await.unwrap();
        let mut line = String::new();
        while !line.starts_with("PONG") {
            line.clear();
            assert!(self.lines.read_line(&mut line).await.unwrap() > 0);
            assert!(!line.starts_with("-ERR"), "{line}");
        }
    }

    /// Publishes `payload` to `subject` with the raw header block `header`.
    async fn hpub(&mut self, subject: &str, header: &[u8], payload: &[u8]) {
        let total = header.len() + payload.len();
        let mut frame = format!("HPUB {subject} {} {total}\r\n", header.len()).into_bytes();
        frame.extend_from_slice(header);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.out.write_all(&frame).await.unwrap();
        self.pong().await;
    }
}

/// Each hostile header block, sent to a node's subject, leaves its process
/// serving: a request sent after each one is answered. A carriage return
/// inside a header value panicked the client's connection task in
/// async-nats 0.51 (fixed in 0.52, which Happen requires), which no
/// reconnection brings back. The malformed blocks make the client drop
/// its connection and connect again (a security audit counted 55
/// reconnections in 5 s under a flood); what was in flight then is lost,
/// which the fault line counts as disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_blocks_leave_the_receiver_serving() {
    let server = NatsServer::start().unwrap();
    let victim = Happen::connect(fast_reconnect(server.url())).await.unwrap();
    let disconnects = Arc::new(AtomicUsize::new(0));
    let counted = disconnects.clone();
    victim
        .on(happen::CONNECTION_STATUS, move |e: Event, _cx: Context| {
            let counted = counted.clone();
            async move {
                if e.payload()["status"] == "disconnected" {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    let ledger = victim.node("ledger").unwrap();
    ledger
        .on("ping", |_e: Event, _cx: Context| async { json!("pong") })
        .unwrap();
    victim.flush().await.unwrap();
    let client = Happen::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let shop = client.node("shop").unwrap();

    let blocks: [&[u8]; 6] = [
        b"NATS/1.0\r\nX-Note: a\rb\r\n\r\n",
        b"NATS/1.0\r\nno-colon-here\r\n\r\n",
        b"NATS/1.0 abc\r\n\r\n",
        b"NATS/1.0\r\nX-A: \xff\xfe\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"NATS/1.0\r\nBad Name: x\r\n\r\n",
    ];
    let mut peer = Peer::connect(&server.url()).await;
    let mut answered = 0;
    for block in blocks {
        peer.hpub("happen.node.ledger", block, b"x").await;
        // Answered, after a reconnection if the block cost one.
        let answer = within("an answer after a hostile header", 20, async {
            loop {
                let sent = shop.send("ledger", Event::new("ping", json!(null)));
                if let Ok(answer) = sent.timeout(Duration::from_millis(500)).await {
                    return answer;
                }
            }
        })
        .await;
        assert_eq!(answer, json!("pong"));
        answered += 1;
    }
    println!(
        "faults: hostile-headers sent={} answered-after={answered} disconnects={}",
        blocks.len(),
        disconnects.load(Ordering::SeqCst)
    );
    assert_eq!(answered, blocks.len());
}
