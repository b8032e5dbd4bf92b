//! Node identity: ed25519 key pairs, and signatures over event hashes.
//!
//! Every node can have a key pair ([`NodeIdentity`], in the NATS `nkeys`
//! format, so a seed can live in the same secret store as NATS
//! credentials). A node configured to sign
//! ([`NodeConfig::sign`](crate::NodeConfig::sign)) puts a signature over
//! each event's [hash](crate::integrity) in `context.integrity.signature`
//! as it sends it, and its public key in the runtime's key registry, where
//! receivers look it up by node id: in memory in one process, in the
//! JetStream key-value bucket `<PREFIX>_identity` over NATS.
//!
//! A receiving node checks every signature an event carries before a
//! handler sees it: against the registered key of the event's sender
//! (`causal.sender`), over the hash of the event as it arrived. A node with
//! [`NodeConfig::require_signed`](crate::NodeConfig::require_signed)
//! refuses unsigned events too. A refused event is a
//! [`HappenError::Integrity`] for a requester, and for a broadcast or a
//! remote tell a [`system::REFUSED`](crate::system::REFUSED) report, counted.
//!
//! What a signature proves: the event was made by a holder of the sender's
//! key and not changed since. What it does not: that the event is new (a
//! copy of a signed event verifies again: use the event id, which the
//! durable modes de-duplicate), or that the registry is honest (the
//! registry is as trustworthy as whoever can write to it: over NATS, limit
//! who can write the bucket with the server's permissions).
//!
//! Over NATS a node id belongs to one key at a time: a signing node whose id
//! a live process holds under another key gets
//! [`HappenError::IdentityConflict`] from [`Happen::flush`](crate::Happen::flush)
//! (or [`Node::ready`](crate::Node::ready)): two different nodes claiming
//! one id. Instances of one node share its key (load it from one seed); a
//! record whose key no live process holds any more is taken over.
//!
//! For the whole system (or a family of nodes), give the settings to a
//! pattern of node ids:
//! `HappenConfig::default().for_nodes("*", NodeConfig::new().sign(true).require_signed(true))`.
//!
//! A node's key is made when it is first needed, unless one is given with
//! [`NodeConfig::identity`](crate::NodeConfig::identity). Signing with an
//! external key store (an HSM, a KMS) is a [`Signer`]; checking with one,
//! a [`Verifier`] ([`HappenConfig::verifier`](crate::HappenConfig::verifier)).
//!
//! ```
//! use happen::prelude::*;
//! use happen::NodeIdentity;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let key = NodeIdentity::generate();
//! let seed = key.seed()?; // keep it secret; NodeIdentity::from_seed(&seed) gives the key back
//! let payments = happen.node_with("payments", NodeConfig::new().identity(key).sign(true))?;
//! let ledger = happen.node_with("ledger", NodeConfig::new().require_signed(true))?;
//! ledger.on("entry", |e: Event, _cx: Context| async move {
//!     json!(e.context().integrity.is_some())
//! })?;
//! assert_eq!(payments.send(&ledger, Event::new("entry", json!(1))).await?, true);
//!
//! // An unsigned sender is refused by the ledger.
//! let shop = happen.node("shop")?;
//! let refused = shop.send(&ledger, Event::new("entry", json!(2))).await.unwrap_err();
//! assert!(matches!(refused, HappenError::Integrity { .. }), "{refused}");
//! assert_eq!(NodeIdentity::from_seed(&seed)?.public_key(), payments.public_key());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::HappenError;
use crate::error::{HappenError as Error, Result};
use crate::event::Event;
use crate::integrity::EventHash;

/// An ed25519 key pair in the nkeys format; see the [module docs](self).
/// Cloning shares the key.
#[derive(Clone)]
pub struct NodeIdentity(Arc<nkeys::KeyPair>);

impl NodeIdentity {
    /// A new random key pair.
    pub fn generate() -> NodeIdentity {
        NodeIdentity(Arc::new(nkeys::KeyPair::new_module()))
    }

    /// The key pair of an nkeys seed (`S...`, e.g. from `nsc` or
    /// [`NodeIdentity::seed`]).
    pub fn from_seed(seed: &str) -> Result<NodeIdentity> {
        nkeys::KeyPair::from_seed(seed.trim())
            .map(|keys| NodeIdentity(Arc::new(keys)))
            .map_err(|e| Error::Config(format!("not a usable nkeys seed: {e}")))
    }

    /// The key pair whose seed is the text of the file at `path`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<NodeIdentity> {
        let path = path.as_ref();
        let seed = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read the seed file {}: {e}", path.display()))
        })?;
        Self::from_seed(&seed)
    }

    /// The public key, as registered and shared (`M...`).
    pub fn public_key(&self) -> String {
        self.0.public_key()
    }

    /// The seed: the secret to keep to have the same key again.
    pub fn seed(&self) -> Result<String> {
        self.0
            .seed()
            .map_err(|e| Error::Config(format!("this key pair has no seed: {e}")))
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeIdentity")
            .field(&self.public_key())
            .finish()
    }
}

/// Makes signatures for a node: its key pair, or an external key store.
pub trait Signer: Send + Sync + 'static {
    /// The public key receivers verify with (nkeys format for the default
    /// [`Verifier`]).
    fn public_key(&self) -> String;
    /// Signs `message`, a 32-byte digest: an event's hash, or a reply's
    /// seal.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}

impl Signer for NodeIdentity {
    fn public_key(&self) -> String {
        NodeIdentity::public_key(self)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.0
            .sign(message)
            .map_err(|e| Error::Config(format!("cannot sign: {e}")))
    }
}

/// Checks signatures: ed25519 over nkeys public keys by default
/// ([`Ed25519`]).
pub trait Verifier: Send + Sync + 'static {
    /// `Ok` when `signature` is `public_key`'s over `message`; the reason
    /// otherwise.
    fn verify(
        &self,
        public_key: &str,
        message: &[u8],
        signature: &[u8],
    ) -> std::result::Result<(), String>;
}

/// The default [`Verifier`]: ed25519 signatures, nkeys public keys.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ed25519;

impl Verifier for Ed25519 {
    fn verify(
        &self,
        public_key: &str,
        message: &[u8],
        signature: &[u8],
    ) -> std::result::Result<(), String> {
        let key = parsed(public_key)?;
        key.verify(message, signature)
            .map_err(|_| "the signature is not the sender's".to_owned())
    }
}

/// Public keys already parsed from their text (4 µs each time otherwise,
/// a tenth of a verification). Bounded: emptied when it grows past
/// [`PARSED_KEYS`] entries.
static PARSED: LazyLock<RwLock<HashMap<String, Arc<nkeys::KeyPair>>>> =
    LazyLock::new(Default::default);
const PARSED_KEYS: usize = 10_000;

fn parsed(public_key: &str) -> std::result::Result<Arc<nkeys::KeyPair>, String> {
    if let Some(key) = PARSED
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(public_key)
    {
        return Ok(key.clone());
    }
    let key = Arc::new(
        nkeys::KeyPair::from_public_key(public_key)
            .map_err(|e| format!("the registered key is not usable: {e}"))?,
    );
    let mut cache = PARSED.write().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= PARSED_KEYS {
        cache.clear();
    }
    cache.insert(public_key.to_owned(), key.clone());
    Ok(key)
}

/// What an event carries besides its causal record to prove where it came
/// from: the documentation's `context.integrity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// The sender's signature over the event's hash (64 bytes, as hex).
    pub signature: String,
}

/// A signer handed to a node's configuration; compared by identity.
#[derive(Clone)]
pub struct SignerRef(pub(crate) Arc<dyn Signer>);

impl PartialEq for SignerRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SignerRef {}

impl fmt::Debug for SignerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Signer").field(&self.0.public_key()).finish()
    }
}

/// A node's signer: the configured one, or a key pair made on first use
/// (one slot either way: idle nodes stay small).
pub(crate) struct NodeKeys(OnceLock<Arc<dyn Signer>>);

impl NodeKeys {
    pub(crate) fn new(configured: Option<SignerRef>) -> NodeKeys {
        let slot = OnceLock::new();
        if let Some(SignerRef(signer)) = configured {
            let _ = slot.set(signer);
        }
        NodeKeys(slot)
    }

    /// The signer (making a key pair the first time, if none was given).
    pub(crate) fn signer(&self) -> &Arc<dyn Signer> {
        self.0
            .get_or_init(|| Arc::new(NodeIdentity::generate()) as Arc<dyn Signer>)
    }
}

/// The application context key naming the node a signed event was sent to
/// (absent on a signed broadcast): under the hash, so under the signature.
pub const SIGNED_FOR: &str = "signedFor";

/// Signs `event` (already stamped) in `context.integrity`: `signer`'s
/// signature over its hash. An event sent to one node (`to`) first names
/// that node in its context ([`SIGNED_FOR`]), so the signature fails at
/// any other node it is replayed to; a broadcast (`None`) names none.
pub(crate) fn sign(event: &mut Event, signer: &dyn Signer, to: Option<&str>) -> Result<()> {
    let cx = event.context_mut();
    match to {
        Some(node) => {
            cx.extra.insert(SIGNED_FOR.into(), node.into());
        }
        None => {
            cx.extra.remove(SIGNED_FOR);
        }
    }
    cx.causal.hash = None;
    let signature = signer.sign(EventHash::of(event).as_bytes())?;
    event.context_mut().integrity = Some(Integrity {
        signature: hex(&signature),
    });
    Ok(())
}

/// The runtime's public keys by node id, and how signatures are checked.
pub(crate) struct Keys {
    known: RwLock<HashMap<String, String>>,
    verifier: RwLock<Arc<dyn Verifier>>,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::new(Arc::new(Ed25519))
    }
}

impl Keys {
    pub(crate) fn new(verifier: Arc<dyn Verifier>) -> Keys {
        Keys {
            known: RwLock::new(HashMap::new()),
            verifier: RwLock::new(verifier),
        }
    }

    /// Checks signatures with `verifier` from now on.
    pub(crate) fn set_verifier(&self, verifier: Arc<dyn Verifier>) {
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = verifier;
    }

    /// Notes `node`'s public key.
    pub(crate) fn learn(&self, node: &str, public_key: String) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned(), public_key);
    }

    /// Forgets `node`'s public key (its record was deleted from the
    /// registry: the key is revoked, and the node's signatures fail until a
    /// key is registered again).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn forget(&self, node: &str) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    /// `node`'s public key, if known.
    pub(crate) fn public_key(&self, node: &str) -> Option<String> {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    /// Checks `event`'s signature at `node` (if it has one; `required`: it
    /// must): its sender's registered key's over its hash, and made for
    /// `node` when it names the node it was sent to ([`SIGNED_FOR`]).
    pub(crate) fn check(&self, node: &str, event: &Event, required: bool) -> Result<()> {
        let reject = |reason: String| {
            Err(Error::Integrity {
                event_id: event.id().to_owned(),
                reason: format!("node \"{node}\" refused it: {reason}"),
            })
        };
        let Some(integrity) = &event.context().integrity else {
            if required {
                return reject("it is not signed, and the node requires signed events".into());
            }
            return Ok(());
        };
        let sender = &event.causal().sender;
        self.verify(sender, event.hash().as_bytes(), &integrity.signature)
            .or_else(reject)?;
        match event.context().extra.get(SIGNED_FOR) {
            Some(to) if to.as_str() != Some(node) => reject(format!(
                "it was signed for node {to}, not for this one (a replay?)"
            )),
            _ => Ok(()),
        }
    }

    /// Whether `signature` (hex) is `signer`'s registered key's over
    /// `message`; the reason if not.
    pub(crate) fn verify(
        &self,
        signer: &str,
        message: &[u8],
        signature: &str,
    ) -> std::result::Result<(), String> {
        let Some(key) = self.public_key(signer) else {
            return Err(format!("no key is registered for its sender \"{signer}\""));
        };
        let Some(signature) = unhex(signature) else {
            return Err("its signature is not hex".into());
        };
        let verifier = self
            .verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        verifier
            .verify(&key, message, &signature)
            .map_err(|reason| format!("{reason} (sender \"{signer}\")"))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use serde_json::json;

    fn signed_by(keys: &NodeIdentity, sender: &str) -> Event {
        let mut event = Event::new("t", json!({ "amount": 100 }));
        crate::event::stamp(&mut event, &Id::from(sender), None);
        sign(&mut event, keys, None).unwrap();
        event
    }

    #[test]
    fn seeds_give_the_same_key_back() {
        let key = NodeIdentity::generate();
        let again = NodeIdentity::from_seed(&key.seed().unwrap()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(NodeIdentity::from_seed("not a seed").is_err());
        assert!(NodeIdentity::from_file("/nonexistent/seed").is_err());
    }

    #[test]
    fn a_signature_verifies_for_its_sender_only_and_only_unchanged() {
        let (alice, mallory) = (NodeIdentity::generate(), NodeIdentity::generate());
        let keys = Keys::new(Arc::new(Ed25519));
        keys.learn("alice", alice.public_key());
        keys.learn("mallory", mallory.public_key());
        let event = signed_by(&alice, "alice");
        keys.check("n", &event, true).unwrap();

        // Tampered after signing: the payload, the sender.
        let changed = Event::from_parts(
            Id::from("t"),
            json!({ "amount": 1000 }),
            event.context().clone(),
            None,
        );
        assert!(keys.check("n", &changed, false).is_err());
        let mut claimed = event.clone();
        claimed.context_mut().causal.sender = Id::from("mallory");
        assert!(keys.check("n", &claimed, false).is_err());
        // Forged: signed with another key.
        let forged = signed_by(&mallory, "alice");
        let error = keys.check("n", &forged, false).unwrap_err().to_string();
        assert!(error.contains("not the sender's"), "{error}");
        // Unknown sender, unsigned when required, not hex.
        assert!(
            keys.check("n", &signed_by(&alice, "stranger"), false)
                .is_err()
        );
        let mut unsigned = Event::new("t", json!(1));
        crate::event::stamp(&mut unsigned, &Id::from("alice"), None);
        assert!(keys.check("n", &unsigned, true).is_err());
        assert!(keys.check("n", &unsigned, false).is_ok());
        let mut garbled = event.clone();
        garbled.context_mut().integrity = Some(Integrity {
            signature: "zz".into(),
        });
        assert!(keys.check("n", &garbled, false).is_err());
    }

    #[test]
    fn a_signature_made_for_one_node_fails_at_any_other() {
        let alice = NodeIdentity::generate();
        let keys = Keys::new(Arc::new(Ed25519));
        keys.learn("alice", alice.public_key());
        let mut event = Event::new("t", json!({ "amount": 100 }));
        crate::event::stamp(&mut event, &Id::from("alice"), None);
        sign(&mut event, &alice, Some("ledger")).unwrap();
        keys.check("ledger", &event, true).unwrap();
        let error = keys.check("audit", &event, true).unwrap_err().to_string();
        assert!(error.contains("signed for node \"ledger\""), "{error}");
        // Still a signature over the event's hash, as any verifier reads it;
        // taking the node's name out breaks it.
        let signature = unhex(&event.context().integrity.as_ref().unwrap().signature).unwrap();
        Ed25519
            .verify(&alice.public_key(), event.hash().as_bytes(), &signature)
            .unwrap();
        let mut unnamed = event.clone();
        unnamed.context_mut().extra.remove(SIGNED_FOR);
        assert!(keys.check("audit", &unnamed, true).is_err());
        // A broadcast's signature holds wherever it is delivered.
        let broadcast = signed_by(&alice, "alice");
        for node in ["ledger", "audit"] {
            keys.check(node, &broadcast, true).unwrap();
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("éé"), None);
    }
}
