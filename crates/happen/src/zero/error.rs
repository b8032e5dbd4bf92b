//! [`ZeroError`]: why a zero event could not be read or made.

use super::Kind;
use crate::error::HappenError;

/// Why a zero event's bytes could not be read (or made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZeroError {
    /// The bytes do not start with the zero layout's magic (`HZ`).
    #[error("not a zero event (no HZ magic)")]
    NotZero,
    /// Fewer bytes than the header needs.
    #[error("zero event truncated: {len} bytes, the header needs {needed}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes there are.
        len: usize,
    },
    /// A layout version this build does not read.
    #[error("zero event layout version {0} is not supported (this build reads 1)")]
    Version(u8),
    /// Header flags this build does not know.
    #[error("zero event has unknown flags {0:#04x}")]
    Flags(u8),
    /// The header's length is not the buffer's.
    #[error("zero event says it is {declared} bytes long but is {actual}")]
    Length {
        /// The header's length.
        declared: usize,
        /// The buffer's.
        actual: usize,
    },
    /// A read (or a region the header names) beyond the buffer.
    #[error("zero event read of {width} bytes at offset {at} is outside its {len} bytes")]
    OutOfRange {
        /// The offset.
        at: usize,
        /// The bytes asked for.
        width: usize,
        /// The buffer's length.
        len: usize,
    },
    /// A string reference outside the string table, or not UTF-8 (an event
    /// type that is not a valid event type counts too).
    #[error("zero event has a bad string reference at offset {at}")]
    BadString {
        /// Where the reference is.
        at: usize,
    },
    /// A field of an unknown kind.
    #[error("zero event field has unknown kind byte {byte} at offset {at}")]
    Kind {
        /// Where the kind byte is.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// A boolean that is neither 0 nor 1.
    #[error("zero event boolean at offset {at} is neither 0 nor 1")]
    BadBool {
        /// Where.
        at: usize,
    },
    /// No field of that name.
    #[error("zero event has no field \"{0}\"")]
    NoField(String),
    /// A field name with more dotted parts than [`crate::depth::MAX_DEPTH`]:
    /// read as JSON, each part is a level of nesting.
    #[error("zero event field name at offset {at} nests deeper than {limit} levels")]
    TooDeep {
        /// Where the name's reference is (0 while writing).
        at: usize,
        /// [`crate::depth::MAX_DEPTH`].
        limit: usize,
    },
    /// The field is of another kind than the one read.
    #[error("zero event field \"{field}\" is {found:?}, read as {expected:?}")]
    WrongKind {
        /// The field.
        field: String,
        /// The kind asked for.
        expected: Kind,
        /// The field's kind.
        found: Kind,
    },
    /// Two fields whose names the JSON form (what an ordinary handler or an
    /// observer sees) cannot hold both of: the same name twice, a name that
    /// is also a dotted prefix of another (`loc` and `loc.lat`: a value
    /// that would also be an object), or the empty name (a payload that is
    /// not an object) beside another. Refused when the event is sealed,
    /// and in a received buffer.
    #[error(
        "zero event field names {first:?} and {second:?} clash: in JSON one would hide the other (give each field a name of its own, none a dotted prefix of another)"
    )]
    NameClash {
        /// The name written first.
        first: String,
        /// The name clashing with it.
        second: String,
    },
    /// The event would be larger than the layout's 4 GiB, an id that is not
    /// a UUID, or the writer was already finished.
    #[error("cannot make a zero event: {0}")]
    Unrepresentable(&'static str),
}

impl From<ZeroError> for HappenError {
    fn from(error: ZeroError) -> Self {
        match error {
            // The same limit as for any payload: the same error.
            ZeroError::TooDeep { limit, .. } => HappenError::TooDeep {
                what: error.to_string(),
                limit,
            },
            _ => HappenError::Codec {
                message: error.to_string(),
                source: None,
            },
        }
    }
}
