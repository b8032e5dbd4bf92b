//! How deep a JSON value may nest where it leaves the process or goes to
//! disk: [`MAX_DEPTH`] levels.
//!
//! Every decoder Happen reads with (the NATS wire form, the spool and the
//! state stores on disk and in JetStream) stops at a fixed nesting, so that
//! hostile bytes cannot exhaust the stack. A value deeper than that could be
//! written but never read back: an event stored for a durable node would be
//! acknowledged and then lost, and one state value could keep a database
//! from opening. So Happen checks where a value is written: an event's
//! payload when it is encoded for the wire or spooled, a streamed item or a
//! response, a node's state and a global value when they are saved, and the
//! dotted field names of a zero event (each dot is a level once the event
//! is read as JSON); an event's application context values count as its
//! payload does. A value deeper than [`MAX_DEPTH`] is refused there with
//! [`HappenError::TooDeep`], and nothing is written.
//!
//! Within one process an ordinary event is never encoded, so a deeper
//! payload still reaches in-process handlers of nodes that are not durable.
//!
//! ```
//! use happen::prelude::*;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let node = happen.node("n")?;
//! let mut deep = json!(1);
//! for _ in 0..=happen::depth::MAX_DEPTH {
//!     deep = json!([deep]);
//! }
//! let refused = node.state().set(move |_| deep.clone()).await;
//! assert!(matches!(refused, Err(HappenError::TooDeep { .. })));
//! assert_eq!(node.state().get().await?, Value::Null); // nothing written
//! # Ok(()) }
//! ```

use serde_json::Value;

use crate::error::{HappenError, Result};

/// The deepest nesting of arrays and objects written to the wire or to
/// disk: a scalar is at depth 0, `[1]` at depth 1.
pub const MAX_DEPTH: usize = 100;

/// Refuses `value` if it nests deeper than [`MAX_DEPTH`]; `what` names it
/// in the error.
pub(crate) fn check(value: &Value, what: impl FnOnce() -> String) -> Result<()> {
    if within(value, MAX_DEPTH) {
        Ok(())
    } else {
        Err(HappenError::TooDeep {
            what: what(),
            limit: MAX_DEPTH,
        })
    }
}

/// Refuses an event (or any member of a batch) whose payload or
/// application context nests deeper than [`MAX_DEPTH`].
#[cfg_attr(not(any(feature = "nats", feature = "redb")), allow(dead_code))]
pub(crate) fn check_event(event: &crate::Event) -> Result<()> {
    for event in event.events() {
        check(event.payload(), || {
            format!("the payload of a \"{}\" event", event.event_type())
        })?;
        for (key, value) in &event.context().extra {
            check(value, || {
                format!(
                    "the context value \"{key}\" of a \"{}\" event",
                    event.event_type()
                )
            })?;
        }
    }
    Ok(())
}

/// Whether `value` nests at most `levels` deep. Recurses at most
/// `levels + 1` times, however deep the value.
fn within(value: &Value, levels: usize) -> bool {
    match value {
        Value::Array(items) => levels > 0 && items.iter().all(|v| within(v, levels - 1)),
        Value::Object(map) => levels > 0 && map.values().all(|v| within(v, levels - 1)),
        _ => true,
    }
}

/// How many levels a dotted zero field name makes once read as JSON.
pub(crate) fn of_name(name: &str) -> usize {
    name.bytes().filter(|b| *b == b'.').count() + 1
}

/// Whether a dotted zero field name nests deeper than [`MAX_DEPTH`] (a
/// name shorter than that cannot, so only long ones are counted).
pub(crate) fn name_too_deep(name: &str) -> bool {
    name.len() >= MAX_DEPTH && of_name(name) > MAX_DEPTH
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, i| {
            if i % 2 == 0 {
                json!([inner])
            } else {
                json!({ "k": inner })
            }
        })
    }

    #[test]
    fn values_up_to_the_limit_pass_and_deeper_ones_are_refused() {
        assert!(check(&json!(1), String::new).is_ok());
        assert!(check(&nested(MAX_DEPTH), String::new).is_ok());
        let error = check(&nested(MAX_DEPTH + 1), || "the payload".into()).unwrap_err();
        assert_eq!(
            error,
            HappenError::TooDeep {
                what: "the payload".into(),
                limit: MAX_DEPTH
            }
        );
        // Empty containers count as a level too.
        assert!(within(&json!([]), 1) && !within(&json!([]), 0));
        assert!(within(&json!({ "a": { "b": 1 }, "c": 2 }), 2));
        assert!(!within(&json!({ "a": { "b": 1 }, "c": 2 }), 1));
    }

    #[test]
    fn the_limit_is_within_what_every_decoder_reads() {
        // serde_json, which the spool and the state stores read with, stops
        // at 128 levels including the record around the value.
        let deepest = nested(MAX_DEPTH);
        let record = json!({ "payload": { "inner": deepest } });
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), record);
    }

    #[test]
    fn dotted_names_count_their_levels() {
        assert_eq!(of_name("celsius"), 1);
        assert_eq!(of_name("location.latitude"), 2);
        assert_eq!(of_name(&".".repeat(10)), 11);
    }
}
