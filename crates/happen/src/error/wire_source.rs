//! The wire form of a `HandlerFailed`'s source: the step's error when it is
//! a `HappenError`, nested at most [`SOURCES_ON_THE_WIRE`] deep; a message
//! nesting more (which no Happen writes) is refused when read, so a peer
//! cannot make the decoder recurse further than that.

use std::cell::Cell;
use std::thread::LocalKey;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

use super::{Cause, HappenError, SOURCES_ON_THE_WIRE};

thread_local! {
    /// How many sources the value being written is nested in.
    static WRITING: Cell<usize> = const { Cell::new(0) };
    /// How many sources the value being read is nested in.
    static READING: Cell<usize> = const { Cell::new(0) };
}

/// One level deeper in `depth` until dropped (a panic included).
struct Deeper(&'static LocalKey<Cell<usize>>);

impl Deeper {
    fn enter(depth: &'static LocalKey<Cell<usize>>) -> Self {
        depth.set(depth.get() + 1);
        Deeper(depth)
    }
}

impl Drop for Deeper {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

fn travelling(source: &Option<Cause>) -> Option<&HappenError> {
    let error = source.as_ref()?.downcast_ref::<HappenError>()?;
    (WRITING.get() < SOURCES_ON_THE_WIRE).then_some(error)
}

pub(super) fn stays(source: &Option<Cause>) -> bool {
    travelling(source).is_none()
}

pub(super) fn serialize<S: Serializer>(
    source: &Option<Cause>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let Some(error) = travelling(source) else {
        return serializer.serialize_none();
    };
    let _deeper = Deeper::enter(&WRITING);
    serializer.serialize_some(error)
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cause>, D::Error> {
    if READING.get() >= SOURCES_ON_THE_WIRE {
        return Err(D::Error::custom(format!(
            "an error nests more than {SOURCES_ON_THE_WIRE} sources"
        )));
    }
    let _deeper = Deeper::enter(&READING);
    Ok(Option::<HappenError>::deserialize(deserializer)?.map(Cause::new))
}

#[cfg(test)]
mod tests {
    use super::super::{Cause, HappenError, SOURCES_ON_THE_WIRE};

    /// A chain as flows make it: each level's cause is its source's text.
    fn chain(depth: usize) -> HappenError {
        let mut error = HappenError::Shutdown;
        for hop in 0..depth {
            error = HappenError::HandlerFailed {
                node: format!("n{hop}"),
                event_type: "t".into(),
                cause: error.to_string(),
                source: Some(Cause::new(error)),
            };
        }
        error
    }

    #[test]
    fn a_deep_chain_debugs_in_linear_size_and_keeps_every_level() {
        let small = format!("{:?}", chain(10)).len();
        let deep = format!("{:?}", chain(100));
        println!(
            "Debug of a failed chain: {small} bytes at 10 deep, {} at 100",
            deep.len()
        );
        // Each level adds the same amount (its name, and its text once in
        // the top cause); quadratic growth would be 100 times that.
        assert!(
            deep.len() < small * 20,
            "{} bytes at 100 deep, {small} at 10",
            deep.len()
        );
        for hop in 0..100 {
            assert!(
                deep.contains(&format!("node: \"n{hop}\"")),
                "level {hop} missing"
            );
        }
        assert!(deep.contains("Shutdown"), "the innermost error is shown");
    }

    #[test]
    fn sources_are_written_and_read_at_most_so_deep() {
        let written = serde_json::to_value(chain(20)).unwrap();
        let back: HappenError = serde_json::from_value(written.clone()).unwrap();
        let mut typed = 0;
        let mut at = &back;
        while let Some(inner) = at.handler_error::<HappenError>() {
            typed += 1;
            at = inner;
        }
        assert_eq!(typed, SOURCES_ON_THE_WIRE);
        // A peer that nests more is refused, not followed down.
        let mut deeper = serde_json::json!({ "kind": "shutdown" });
        for _ in 0..=SOURCES_ON_THE_WIRE + 1 {
            deeper = serde_json::json!({
                "kind": "handler-failed",
                "details": { "node": "n", "event_type": "t", "cause": "c", "source": deeper }
            });
        }
        let refused = serde_json::from_value::<HappenError>(deeper).unwrap_err();
        assert!(refused.to_string().contains("nests more than"), "{refused}");
        // Nothing is left counted on the thread after either.
        assert_eq!(serde_json::to_value(chain(20)).unwrap(), written);
        assert!(serde_json::from_value::<HappenError>(written).is_ok());
    }
}
