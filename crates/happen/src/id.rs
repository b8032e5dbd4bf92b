//! [`Id`]: an immutable, shared string for the identifiers every event
//! carries (event ids, node ids, correlation ids, paths).
//!
//! Events are stamped and forwarded constantly, so an `Id` is cheap to make
//! and to clone: text of up to 38 bytes (a UUID, a typical node id) is kept
//! inline, with no allocation and no reference count; longer text is shared
//! behind an `Arc`. It reads like a `&str` (it derefs to one), compares,
//! hashes and orders like one, and serializes as a plain string.
//!
//! ```
//! use happen::Id;
//!
//! let node = Id::from("order-service");
//! let copy = node.clone(); // no copy of the text
//! assert_eq!(copy, "order-service");
//! assert!(node.starts_with("order"));
//! assert_eq!(serde_json::to_string(&node).unwrap(), "\"order-service\"");
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use arrayvec::ArrayString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest text kept inline (a hyphenated UUID is 36 bytes).
const INLINE: usize = 38;

/// An immutable identifier string; see the [module docs](self).
#[derive(Clone)]
pub struct Id(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<INLINE>),
    Shared(Arc<str>),
}

impl Id {
    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(text) => text,
            Repr::Shared(text) => text,
        }
    }

    fn new(text: &str) -> Id {
        match ArrayString::from(text) {
            Ok(inline) => Id(Repr::Inline(inline)),
            Err(_) => Id(Repr::Shared(Arc::from(text))),
        }
    }
}

impl Default for Id {
    fn default() -> Self {
        Id(Repr::Inline(ArrayString::new()))
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Id {}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Hashes as the text does, so that maps keyed by `Id` can be looked up
/// with a `&str` ([`Borrow`]).
impl std::hash::Hash for Id {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Deref for Id {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Id {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::new(s)
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id::new(&s)
    }
}

impl From<&String> for Id {
    fn from(s: &String) -> Self {
        Id::new(s)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> Self {
        id.as_str().to_owned()
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Id {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Id> for str {
    fn eq(&self, other: &Id) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Id> for &str {
    fn eq(&self, other: &Id) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Id> for String {
    fn eq(&self, other: &Id) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Straight from the decoder's text: no intermediate String.
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an identifier string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Id, E> {
                Ok(Id::from(v))
            }
        }
        deserializer.deserialize_str(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_and_long_ids_behave_like_their_text() {
        let long = "a-node-id-that-is-longer-than-the-inline-limit-of-ids";
        for text in ["", "n1", "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e11", long] {
            let id = Id::from(text);
            assert_eq!(id, text);
            assert_eq!(id.len(), text.len());
            assert_eq!(id.clone(), id);
            assert_eq!(format!("{id}"), text);
            assert_eq!(format!("{id:?}"), format!("{text:?}"));
            let mut map = HashMap::new();
            map.insert(id.clone(), 1);
            assert_eq!(map.get(text), Some(&1), "hash agrees with str");
        }
        assert!(matches!(Id::from(long).0, Repr::Shared(_)));
        assert!(matches!(Id::from("n1").0, Repr::Inline(_)));
        let (a, b, ab) = (Id::from("a"), Id::from("b"), Id::from("ab"));
        assert!(a < b);
        assert!(ab > a);
        assert_eq!(Id::default(), "");
        let unicode = Id::from("nœud-é");
        assert_eq!(unicode.as_str(), "nœud-é");
    }
}
