//! Seals on replies: what lets a requester that requires signed events
//! believe an error, a streamed item or the end of a stream.
//!
//! An answer is an event, signed by a signing node as any event it sends
//! (`NodeCore::answer`), and checked as one. The other replies (a refusal, a
//! handler's error, a stream's items and its end) are not events. Anyone who
//! can publish on the server can write to a reply subject it overheard, so a
//! runtime whose node signs *seals* every such reply of that node: a header
//! ([`SEAL_HEADER`]) holding the node's signature over a digest of the
//! node's id, the id of the request it answers and the reply's bytes. The
//! request id names what was asked, so a seal cannot be moved to another
//! request, another node's name, or other bytes; nor can a forger obtain
//! one by sending the node a request of its own (or bytes it cannot read)
//! with the victim's reply subject: that answer names the forger's request,
//! and an unreadable message's refusal is not sealed. The reply subject is
//! not in the digest: the server may rewrite it on the way (across a
//! gateway, `_GR_.`; through an account's service import, `_R_.`), so the
//! subject a responder sees need not be the one its requester waits on.
//!
//! The requester's side (`requests`) checks the seal with the node's
//! registered key, looked up first when this process does not know it yet.

use std::sync::Arc;

use async_nats::HeaderMap;

use super::Shared;
use crate::error::{HappenError, Result};
use crate::id::Id;
use crate::identity::{Keys, Signer, hex};
use crate::transport::Transport;

/// The header holding a reply's seal (hex).
pub(super) const SEAL_HEADER: &str = "Happen-Seal";

/// The key-derivation context of a seal's digest: no other digest made by
/// Happen (an event's hash) can be taken for a reply's.
const CONTEXT: &str = "happen 2026-12-07 reply seal v3";

/// What seals the replies of one of this process's signing nodes.
pub(super) struct Sealer {
    node: Id,
    request: Id,
    signer: Arc<dyn Signer>,
}

impl Sealer {
    /// The sealer for `node`'s replies to the request `request`: `None`
    /// when the node is not one of this process's, or does not sign.
    pub(super) fn for_node(shared: &Shared, node: &str, request: &Id) -> Option<Sealer> {
        let handle = shared.local.node(node)?;
        let core = handle.core();
        core.limits().sign.then(|| Sealer {
            node: handle.shared_id().clone(),
            request: request.clone(),
            signer: core.signer().clone(),
        })
    }

    /// The headers that seal `payload`, a reply to the sealer's request.
    pub(super) fn seal(&self, payload: &[u8]) -> Result<HeaderMap> {
        let digest = digest(&self.node, &self.request, payload);
        let signature = self.signer.sign(&digest)?;
        let mut headers = HeaderMap::new();
        headers.insert(SEAL_HEADER, hex(&signature).as_str());
        Ok(headers)
    }
}

/// Checks the seal of a reply (`message`) to `requester`, which asked
/// `node` with the request `request`: it must be there, and be `node`'s
/// signature over the reply's digest.
pub(super) fn check(
    keys: &Keys,
    requester: &str,
    node: &str,
    request: &str,
    message: &async_nats::Message,
) -> Result<()> {
    let refuse = |reason: String| HappenError::Integrity {
        event_id: String::new(),
        reason: format!("node \"{requester}\" refused a reply from \"{node}\": {reason}"),
    };
    let Some(seal) = message.headers.as_ref().and_then(|h| h.get(SEAL_HEADER)) else {
        return Err(refuse(
            "it is not sealed, and the node requires signed events".into(),
        ));
    };
    let digest = digest(node, request, &message.payload);
    keys.verify(node, &digest, seal.as_str()).map_err(refuse)
}

/// The 32 bytes a seal signs (the [`Signer`] contract: a digest).
fn digest(node: &str, request: &str, payload: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT);
    for part in [node.as_bytes(), request.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeIdentity;

    fn message(subject: &str, payload: &[u8], headers: Option<HeaderMap>) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: bytes::Bytes::copy_from_slice(payload),
            headers,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    fn sealer(node: &str, key: &NodeIdentity) -> Sealer {
        Sealer {
            node: Id::from(node),
            request: Id::from("r1"),
            signer: Arc::new(key.clone()),
        }
    }

    #[test]
    fn a_seal_holds_for_its_node_request_and_bytes_only() {
        let key = NodeIdentity::generate();
        let keys = Keys::default();
        keys.learn("ledger", key.public_key());
        keys.learn("other", key.public_key());
        let headers = sealer("ledger", &key).seal(b"reply").unwrap();
        let sealed =
            |subject: &str, payload: &[u8]| message(subject, payload, Some(headers.clone()));
        // On the subject it was published to, or one the server rewrote.
        for subject in ["_INBOX.a.7", "_GR_.c1.s1._INBOX.a.7"] {
            check(
                &keys,
                "payments",
                "ledger",
                "r1",
                &sealed(subject, b"reply"),
            )
            .unwrap();
        }
        for (what, node, request, payload) in [
            ("another node", "other", "r1", &b"reply"[..]),
            ("another request", "ledger", "r2", b"reply"),
            ("other bytes", "ledger", "r1", b"replY"),
        ] {
            let message = sealed("_INBOX.a.7", payload);
            let error = check(&keys, "payments", node, request, &message).unwrap_err();
            assert!(
                matches!(&error, HappenError::Integrity { reason, .. } if reason.contains("not the sender's")),
                "{what}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_unreadable_or_unknown_seal_is_refused_with_its_reason() {
        let key = NodeIdentity::generate();
        let keys = Keys::default();
        let reason =
            |message: &async_nats::Message| match check(&keys, "payments", "ledger", "r1", message)
            {
                Err(HappenError::Integrity { reason, .. }) => reason,
                other => panic!("{other:?}"),
            };
        assert!(reason(&message("s", b"r", None)).contains("not sealed"));
        let headers = sealer("ledger", &key).seal(b"r").unwrap();
        assert!(
            reason(&message("s", b"r", Some(headers.clone()))).contains("no key is registered")
        );
        keys.learn("ledger", key.public_key());
        let mut garbled = HeaderMap::new();
        garbled.insert(SEAL_HEADER, "not hex");
        assert!(reason(&message("s", b"r", Some(garbled))).contains("not hex"));
        let stranger = NodeIdentity::generate();
        let forged = sealer("ledger", &stranger).seal(b"r").unwrap();
        assert!(reason(&message("s", b"r", Some(forged))).contains("not the sender's"));
        check(
            &keys,
            "payments",
            "ledger",
            "r1",
            &message("s", b"r", Some(headers)),
        )
        .unwrap();
    }
}
