//! Where a zero event's outcome goes: nobody, a zero or ordinary requester
//! in this process, or a requester elsewhere.

use tokio::sync::oneshot;

use super::send::ZeroAnswer;
use crate::delivery::Responder;
use crate::error::{HappenError, Result};
use crate::event::Event;
use crate::node::NodeCore;
use crate::stream::Outcome;

/// Where a zero event's outcome goes.
pub(crate) enum ReplyTo {
    /// Nobody waits.
    Nobody,
    /// A zero requester in this process.
    Zero(oneshot::Sender<Result<ZeroAnswer>>),
    /// An ordinary requester (the event was converted from `request`).
    Ordinary(Responder, Event),
    /// A zero requester elsewhere: the transport sends the answer.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Wire(Box<dyn FnOnce(Result<ZeroAnswer>) + Send>),
}

impl ReplyTo {
    /// Answers with `error` (a refusal before any handler ran).
    pub(crate) fn refuse(self, error: HappenError) {
        match self {
            ReplyTo::Nobody => {}
            ReplyTo::Zero(tx) => {
                let _ = tx.send(Err(error));
            }
            ReplyTo::Wire(send) => send(Err(error)),
            ReplyTo::Ordinary(responder, _) => responder.unwrapped().reply(Err(error)),
        }
    }

    pub(crate) fn answer(self, answer: Result<ZeroAnswer>, node: &NodeCore) {
        let answer = answer.and_then(not_reserved);
        if let Err(error) = answer {
            return self.refuse(error);
        }
        match self {
            ReplyTo::Nobody => {}
            ReplyTo::Zero(tx) => {
                let _ = tx.send(answer);
            }
            ReplyTo::Wire(send) => send(answer),
            ReplyTo::Ordinary(responder, request) => {
                let outcome = answer.and_then(|answer| node.answer(answer.into_value(), &request));
                responder.unwrapped().reply(outcome);
            }
        }
    }

    /// The ordinary responder standing for this reply, for a flow of
    /// ordinary steps (the answer is forwarded, as a JSON value).
    pub(crate) fn into_responder(self, node: &NodeCore) -> Option<Responder> {
        let forward = |send: Box<dyn FnOnce(Result<ZeroAnswer>) + Send>| {
            let (tx, rx) = oneshot::channel::<Outcome>();
            let task = async move {
                let answer = match rx.await {
                    Ok(Outcome::Done(outcome)) => {
                        outcome.map(|event| ZeroAnswer::Value(event.payload().clone()))
                    }
                    Ok(Outcome::Value(outcome)) => outcome.map(ZeroAnswer::Value),
                    Ok(Outcome::Stream(_)) => Err(HappenError::Codec {
                        message: "a zero request was answered with a stream".into(),
                        source: None,
                    }),
                    Err(_) => Err(HappenError::Cancelled),
                };
                send(answer);
            };
            match node.runtime_inner() {
                Some(runtime) => runtime.spawn(task),
                None => drop(tokio::spawn(task)),
            }
            Responder::Local(tx)
        };
        match self {
            ReplyTo::Nobody => None,
            ReplyTo::Ordinary(responder, _) => Some(responder),
            ReplyTo::Zero(tx) => Some(forward(Box::new(move |answer| {
                let _ = tx.send(answer);
            }))),
            ReplyTo::Wire(send) => Some(forward(send)),
        }
    }
}

/// The type of a zero answer that carries a JSON value across processes.
pub(crate) const VALUE_ANSWER: &str = "happen.value";
/// The type of a zero answer that carries an error across processes.
pub(crate) const ERROR_ANSWER: &str = "happen.error";

/// A zero reply of one of the types the wire uses for values and errors
/// would be read as one over NATS (and not in one process): refused on
/// every runtime, with the reason.
pub(super) fn not_reserved(answer: ZeroAnswer) -> Result<ZeroAnswer> {
    if let ZeroAnswer::Zero(event) = &answer
        && matches!(event.event_type(), VALUE_ANSWER | ERROR_ANSWER)
    {
        return Err(HappenError::Config(format!(
            "a zero reply may not be of type {:?}: {VALUE_ANSWER} and {ERROR_ANSWER} carry values and errors between processes",
            event.event_type()
        )));
    }
    Ok(answer)
}
