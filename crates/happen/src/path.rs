//! [`Path`]: the ids of the nodes an event's causal chain passed through,
//! ending with its sender.
//!
//! Every event carries one, and most chains are short, so a path of up to two
//! nodes is kept inline (no allocation); longer paths spill to the heap. It
//! reads like a slice of [`Id`]s and compares with vectors of strings.
//!
//! ```
//! use happen::{Id, Path};
//!
//! let mut path = Path::from(vec![Id::from("checkout")]);
//! path.push(Id::from("payments"));
//! assert_eq!(path, vec!["checkout", "payments"]);
//! assert_eq!(path.join(" > "), "checkout > payments");
//! assert_eq!(serde_json::to_string(&path).unwrap(), r#"["checkout","payments"]"#);
//! ```

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use crate::id::Id;

/// The nodes along an event's causal chain; see the [module docs](self).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Path(SmallVec<[Id; 2]>);

impl Path {
    /// A path of one node (a root event's).
    pub fn root(sender: Id) -> Path {
        let mut path = SmallVec::new();
        path.push(sender);
        Path(path)
    }

    /// This path extended by `sender` (a child event's).
    pub fn then(&self, sender: Id) -> Path {
        let mut path = SmallVec::with_capacity(self.0.len() + 1);
        path.extend(self.0.iter().cloned());
        path.push(sender);
        Path(path)
    }

    /// Appends a node.
    pub fn push(&mut self, node: Id) {
        self.0.push(node);
    }
}

impl Deref for Path {
    type Target = [Id];
    fn deref(&self) -> &[Id] {
        &self.0
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl From<Vec<Id>> for Path {
    fn from(ids: Vec<Id>) -> Self {
        Path(SmallVec::from_vec(ids))
    }
}

impl FromIterator<Id> for Path {
    fn from_iter<I: IntoIterator<Item = Id>>(iter: I) -> Self {
        Path(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Path {
    type Item = &'a Id;
    type IntoIter = std::slice::Iter<'a, Id>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> PartialEq<Vec<T>> for Path
where
    Id: PartialEq<T>,
{
    fn eq(&self, other: &Vec<T>) -> bool {
        self.0.len() == other.len() && self.0.iter().zip(other).all(|(a, b)| a == b)
    }
}

impl<T, const N: usize> PartialEq<[T; N]> for Path
where
    Id: PartialEq<T>,
{
    fn eq(&self, other: &[T; N]) -> bool {
        self.0.len() == N && self.0.iter().zip(other).all(|(a, b)| a == b)
    }
}

impl Serialize for Path {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for Path {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Id>::deserialize(deserializer).map(Path::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_paths() {
        let root = Path::root(Id::from("a"));
        assert_eq!(root, vec!["a"]);
        let two = root.then(Id::from("b"));
        assert_eq!(two, ["a", "b"]);
        let four = two.then(Id::from("c")).then(Id::from("d"));
        assert_eq!(four, vec!["a", "b", "c", "d"]);
        assert_ne!(four, vec!["a", "b", "c"]);
        assert_eq!(four.len(), 4);
        let json = serde_json::to_value(&four).unwrap();
        let back: Path = serde_json::from_value(json).unwrap();
        assert_eq!(back, four);
        assert_eq!(format!("{four:?}"), r#"["a", "b", "c", "d"]"#);
    }
}
