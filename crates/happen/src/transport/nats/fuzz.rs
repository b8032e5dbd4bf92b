//! Decoding and verifying hostile bytes, many times: arbitrary byte
//! strings and mutations of genuine events (bytes flipped, cut, repeated,
//! inserted), each through the event and reply decoders with their
//! integrity checks. Nothing may panic; a mutation that still decodes must
//! still be the event it was (its hash matched).
//!
//! `HAPPEN_FUZZ_CASES` sets the number of inputs (default 20,000, as CI
//! runs it); `scripts/fuzz` runs a million in release mode. Each run
//! prints `fuzz: inputs=N panics=0 ...`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::json;

use super::wire;
use crate::id::Id;
use crate::{Event, HappenError};

/// The key of the signed genuine event.
static SIGNER: std::sync::LazyLock<crate::NodeIdentity> =
    std::sync::LazyLock::new(crate::NodeIdentity::generate);

/// A small, seeded generator (xorshift64*): the same inputs every run.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Genuine encoded events to mutate: roots, children, batches, sources,
/// application fields, payloads of every JSON kind.
fn genuine() -> Vec<(Event, Vec<u8>)> {
    let mut events = Vec::new();
    let payloads = [
        json!(null),
        json!(42),
        json!(-7),
        json!(2.5),
        json!("text"),
        json!([1, "a", null, { "k": [true, false] }]),
        json!({ "orderId": "ORD-1", "items": [{ "sku": "X", "qty": 2 }], "total": 19.99 }),
    ];
    let mut parent = Event::new("root", json!(1));
    crate::event::stamp(&mut parent, &Id::from("origin-node"), None);
    for (i, payload) in payloads.iter().enumerate() {
        let mut event = Event::new(format!("type.{i}"), payload.clone())
            .with_source("tenant:a:user-1", "user")
            .with_context("trace", json!(i));
        let cause = (i % 2 == 0).then_some(&parent);
        crate::event::stamp(&mut event, &Id::from("sender"), cause);
        events.push(event);
    }
    let mut batch = Event::batch([
        Event::new("m", json!(1)),
        Event::new("m", json!({ "x": 2 })),
    ])
    .expect("a batch");
    crate::event::stamp(&mut batch, &Id::from("batcher"), None);
    events.push(batch);
    let mut signed = Event::new("signed", json!({ "amount": 100 }));
    crate::event::stamp(&mut signed, &Id::from("signer"), None);
    crate::identity::sign(&mut signed, &*SIGNER, None).expect("signs");
    events.push(signed);
    events
        .into_iter()
        .map(|e| {
            let bytes = wire::encode_event(&e).expect("encodes");
            (e, bytes)
        })
        .collect()
}

pub(super) fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 | 1 => {
                let i = rng.below(out.len());
                if let Some(b) = out.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            2 => out.truncate(rng.below(out.len() + 1)),
            3 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            _ => {
                let (from, len) = (rng.below(out.len()), 1 + rng.below(16));
                let chunk: Vec<u8> = out.iter().skip(from).take(len).copied().collect();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
        }
    }
    out
}

#[test]
fn hostile_bytes_never_panic_and_never_pass_as_another_event() {
    let cases: u64 = std::env::var("HAPPEN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let genuine = genuine();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut panics, mut decoded, mut rejected_by_hash, mut undecodable) = (0u64, 0u64, 0u64, 0u64);
    let mut changed_but_accepted = 0u64;
    let mut signature_refused = 0u64;
    let keys = crate::identity::Keys::default();
    keys.learn("signer", SIGNER.public_key());
    for case in 0..cases {
        let (original, input) = if case % 4 == 0 {
            let len = rng.below(300);
            (
                None,
                (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>(),
            )
        } else {
            let (event, bytes) = &genuine[rng.below(genuine.len())];
            (Some(event), mutate(&mut rng, bytes))
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let _ = wire::decode_reply(&input);
            wire::decode_event(&input)
        }));
        match outcome {
            Err(_) => panics += 1,
            Ok(Ok(event)) => {
                decoded += 1;
                if original.is_some_and(|o| o.hash() != event.hash()) {
                    changed_but_accepted += 1;
                }
                // A signature changed on the way decodes, and is refused
                // where signatures are checked.
                if let Some(original) = original
                    && event.context().integrity != original.context().integrity
                {
                    if keys.check("n", &event, false).is_ok() {
                        changed_but_accepted += 1;
                    } else {
                        signature_refused += 1;
                    }
                }
            }
            Ok(Err(HappenError::Integrity { .. })) => rejected_by_hash += 1,
            Ok(Err(_)) => undecodable += 1,
        }
    }
    println!(
        "fuzz: inputs={cases} panics={panics} decoded={decoded} rejected-by-hash={rejected_by_hash} undecodable={undecodable} signature-refused={signature_refused} changed-but-accepted={changed_but_accepted}"
    );
    assert_eq!(panics, 0);
    assert_eq!(changed_but_accepted, 0);
    assert!(
        rejected_by_hash > 0 && undecodable > 0,
        "the mutations reach both checks"
    );
}
