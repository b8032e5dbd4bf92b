//! Running one zero event's handler and answering its requester, whoever
//! runs it (the lane's task, or a requester that claimed it).

use std::sync::Arc;

use serde_json::Value;

use super::lane::{Item, Which, ZeroContext, ZeroFn, ZeroNext};
use super::observed::{self, Report};
use super::reply::ReplyTo;
use super::send::ZeroAnswer;
use super::writer::Stamp;
use super::{ZeroEvent, ZeroWriter};
use crate::entry::Entry;
use crate::error::HappenError;
use crate::node::Node;

/// Runs one zero event's handler (`handlers` are the lane's as the event's
/// batch was taken) and answers its requester; reported to the node's
/// observers when it has any (one branch when it has none).
pub(super) fn run(node: &Node, item: Item, handlers: &[Arc<ZeroFn>]) {
    if node.core().observers().is_active() {
        let handle = |item, report: &mut _| handle(node, item, handlers, report);
        return observed::run(node.core(), item, handle);
    }
    handle(node, item, handlers, &mut ());
}

/// [`run`], telling `report` how the event ended and what reply it sealed
/// (`()`, which does nothing, when nobody observes).
fn handle<R: Report>(node: &Node, item: Item, handlers: &[Arc<ZeroFn>], report: &mut R) {
    let Item {
        event,
        reply,
        handler,
    } = item;
    let core = node.core();
    let expects_response = !matches!(reply, ReplyTo::Nobody);
    let handler: &ZeroFn = match &handler {
        Which::Owned(handler) => &**handler,
        Which::At(at) => match handlers.get(*at) {
            Some(handler) => &**handler,
            None => {
                // Not reached: a batch's handlers are taken with it, and a
                // claimed event holds its own.
                let error = HappenError::Config("a zero event lost its handler".into());
                report.ended(Some(&error), expects_response);
                reply.answer(Err(error), core);
                return;
            }
        },
    };
    let cx = ZeroContext {
        node,
        event: &event,
        expects_response,
    };
    // The error is formatted (and dropped) inside too: its `Display` is the
    // handler's code.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler(&event, &cx).map_err(|error| error.to_string())
    }));
    let failed = |cause: String| HappenError::HandlerFailed {
        node: core.id().to_string(),
        event_type: event.event_type().to_owned(),
        cause,
        source: None,
    };
    let mut answer = match outcome {
        // The common one-way case: nothing to answer, nothing to build.
        Ok(Ok(ZeroNext::Done)) if !expects_response => return report.ended(None, false),
        Err(panic) => Err(HappenError::HandlerPanicked {
            node: core.id().to_string(),
            event_type: event.event_type().to_owned(),
            message: crate::error::panic_message(&*panic),
        }),
        Ok(Err(cause)) => Err(failed(cause)),
        Ok(Ok(ZeroNext::Done)) => Ok(ZeroAnswer::Value(Value::Null)),
        Ok(Ok(ZeroNext::Value(value))) => Ok(ZeroAnswer::Value(value)),
        Ok(Ok(ZeroNext::Reply(mut writer))) => {
            if !expects_response {
                // Nobody to answer: the writer goes back to the pool.
                return report.ended(None, false);
            }
            let sealed = seal_child(&mut writer, core.id(), &event);
            if let Ok(reply) = &sealed {
                report.stamped(core, reply);
            }
            sealed.map(ZeroAnswer::Zero).map_err(HappenError::from)
        }
        Ok(Ok(ZeroNext::Then(step))) => {
            // The ordinary flow reports its own end to the observers.
            let ordinary = event.to_event();
            let responder = reply.into_responder(core);
            let (flow, _) = Entry::new(step, ()).start(
                node.core().clone(),
                ordinary,
                crate::event::now_millis(),
                responder,
                0,
                None,
            );
            match core.runtime_inner() {
                Some(runtime) => runtime.spawn(async move {
                    let _ = flow.await;
                }),
                None => drop(tokio::spawn(async move {
                    let _ = flow.await;
                })),
            }
            return;
        }
    };
    if answer.is_err()
        && let Some(runtime) = core.runtime_inner()
    {
        runtime.transport().local().tally().failed();
    }
    if R::ON {
        // What the requester will be told (a reply of a reserved type is
        // refused there; checking again is harmless).
        answer = answer.and_then(super::reply::not_reserved);
        report.ended(answer.as_ref().err(), expects_response);
    }
    if let Err(error) = &answer
        && !expects_response
    {
        tracing::warn!(node = %core.id(), event_type = event.event_type(), %error, "zero handler failed");
    }
    reply.answer(answer, core);
}

/// Seals `writer` as a child of `parent`, sent by `sender`.
pub(crate) fn seal_child(
    writer: &mut ZeroWriter,
    sender: &str,
    parent: &ZeroEvent,
) -> std::result::Result<ZeroEvent, super::ZeroError> {
    let (id, timestamp) = crate::uuid7::next_bytes();
    writer.seal(Stamp {
        id,
        timestamp,
        sender,
        causation: Some(parent.id().0),
        correlation: Some(parent.correlation_id()),
        path: parent.path().chain(std::iter::once(sender)),
    })
}
