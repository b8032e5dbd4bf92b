//! Zero-allocation processing: events as flat binary buffers, for hot paths
//! (sensor streams, market data) where decoding a JSON payload per event
//! costs too much.
//!
//! A [`ZeroEvent`] is one buffer: a fixed header with the causal context
//! (id, cause, correlation, sender, path, timestamp), the payload's values
//! at fixed offsets, a directory naming them, and a string table (the
//! layout is in the module docs of `layout.rs` and in
//! `docs/ARCHITECTURE.md`). Buffers come from a pool and go back to it when
//! the event is dropped, so after warm-up a zero event is built, sent, handled
//! and dropped without touching the heap (in one process; a test counts).
//! The pool is per thread: a buffer goes back to the pool of the thread
//! that drops it. When events are written on one thread and handled on
//! another (a multi-thread runtime, a sensor thread of its own), what the
//! handling thread's pool cannot keep goes to a small shared pool, where
//! the writing thread finds it when its own runs dry. A request (`zero_send`) allocates its
//! answer's channel. With an observer installed, zero events are reported
//! to it as the ordinary events they convert to (see [`crate::observe`]),
//! which allocates; without one they cost it a branch. Each field needs a
//! name of its own that is no dotted prefix of another's: the JSON form an
//! ordinary handler sees could not hold both (`loc` beside `loc.lat` would
//! be a value and an object at once), so sealing refuses them
//! ([`ZeroError::NameClash`]; a send returns it as
//! [`HappenError::Codec`](crate::HappenError::Codec)), and so does the check
//! of a received buffer.
//!
//! - Build one with a [`ZeroWriter`]: `ZeroWriter::new("reading")` then
//!   typed fields (`.u32("count", 3)`, `.f64("location.latitude", 52.5)`,
//!   `.str("device", "d-1")`, `.bytes("samples", &raw)`).
//! - Send it with [`Node::zero_tell`](crate::Node::zero_tell) (no answer) or
//!   [`Node::zero_send`](crate::Node::zero_send) (awaits a [`ZeroAnswer`]).
//! - Handle it with [`Node::zero`](crate::Node::zero): a plain, synchronous
//!   function of the event and a [`ZeroContext`], returning a [`ZeroNext`]
//!   (done, a zero reply, a JSON value, or an ordinary continuum step).
//! - Read it through offsets, as the documentation's `buffer.getFloat64(
//!   offsets.payload.temperature)`: [`ZeroEvent::offsets`] maps names to
//!   offsets and `f64(at)`, `u32(at)`, `str(at)`... read them, or in one go
//!   [`ZeroEvent::get`]`::<f64>("temperature")`.
//!
//! Zero and ordinary events meet at the boundary: an ordinary event sent to
//! a node whose only matching handler is a zero handler is converted
//! ([`ZeroEvent::from_event`]), and a zero event for a node with ordinary
//! handlers only is turned into an ordinary [`Event`](crate::Event) ([`ZeroEvent::to_event`])
//! with its causal context. Each conversion allocates; keep hot paths zero
//! end to end. Zero events have direct delivery only: a node with durable
//! delivery takes no zero handler, and a zero event to a durable node is
//! refused ([`HappenError::Config`](crate::HappenError::Config)), on every runtime.
//!
//! ```
//! use happen::prelude::*;
//! use happen::zero::{ZeroNext, ZeroWriter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> happen::Result<()> {
//! let happen = Happen::embedded();
//! let sensors = happen.node("sensors")?;
//! sensors.zero("reading", |event, _cx| {
//!     let at = event.offsets().get("celsius").expect("a celsius field");
//!     let celsius = event.f64(at)?;
//!     let mut reply = ZeroWriter::new("happen.response");
//!     reply.f64("fahrenheit", celsius * 9.0 / 5.0 + 32.0);
//!     Ok(ZeroNext::Reply(reply))
//! })?;
//!
//! let mut reading = ZeroWriter::new("reading");
//! reading.f64("celsius", 100.0).str("sensor", "s-1");
//! let answer = sensors.zero_send(&sensors, reading).await?;
//! assert_eq!(answer.zero().unwrap().get::<f64>("fahrenheit")?, 212.0);
//! # Ok(()) }
//! ```

mod convert;
mod error;
mod lane;
mod layout;
mod next;
mod observed;
mod pool;
#[cfg(test)]
mod props;
mod reply;
mod run;
mod send;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;

pub use error::ZeroError;
pub(crate) use lane::{Lane, deliver, deliver_accepted};
pub use lane::{ZeroContext, ZeroNext};
pub(crate) use reply::ReplyTo;
#[cfg(feature = "nats")]
pub(crate) use reply::{ERROR_ANSWER, VALUE_ANSWER};
pub use send::ZeroAnswer;
#[cfg(feature = "nats")]
pub(crate) use send::not_durable;
pub use writer::ZeroWriter;

use layout::{
    AT_CAUSATION, AT_CORRELATION, AT_FIELDS, AT_ID, AT_PATH, AT_SENDER, AT_TIMESTAMP, AT_TYPE,
    FIELD, FLAG_CAUSED, STR,
};

/// The kind of a payload value in a zero event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// A boolean (one byte, 0 or 1).
    Bool,
    /// A string in the string table (the value is an 8-byte reference).
    Str,
    /// A raw block of bytes in the buffer (the value is its offset and
    /// length), e.g. an array of fixed-size records.
    Bytes,
    /// JSON text in the string table: what has no flat form (an array, an
    /// object with keys containing `.`) when an ordinary event is converted.
    Json,
    /// JSON `null` (no bytes).
    Null,
}

const KINDS: [Kind; 15] = [
    Kind::I8,
    Kind::I16,
    Kind::I32,
    Kind::I64,
    Kind::U8,
    Kind::U16,
    Kind::U32,
    Kind::U64,
    Kind::F32,
    Kind::F64,
    Kind::Bool,
    Kind::Str,
    Kind::Bytes,
    Kind::Json,
    Kind::Null,
];

impl Kind {
    /// The byte that stands for this kind in the field directory.
    fn byte(self) -> u8 {
        KINDS.iter().position(|k| *k == self).unwrap_or(0) as u8 + 1
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        KINDS.get(usize::from(byte).checked_sub(1)?).copied()
    }

    /// How many bytes the value takes at its offset.
    pub fn width(self) -> usize {
        match self {
            Kind::I8 | Kind::U8 | Kind::Bool => 1,
            Kind::I16 | Kind::U16 => 2,
            Kind::I32 | Kind::U32 | Kind::F32 => 4,
            Kind::I64 | Kind::U64 | Kind::F64 | Kind::Str | Kind::Bytes | Kind::Json => 8,
            Kind::Null => 0,
        }
    }
}

/// An event as one flat buffer; see the [module docs](self).
///
/// Its bytes were checked when it was made or received: reading a named
/// field cannot fail for the buffer's sake, and reads at offsets of your own
/// arithmetic return [`ZeroError::OutOfRange`] rather than panicking.
pub struct ZeroEvent {
    bytes: Vec<u8>,
}

impl Drop for ZeroEvent {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.bytes));
    }
}

impl Clone for ZeroEvent {
    fn clone(&self) -> Self {
        let mut bytes = pool::take();
        bytes.extend_from_slice(&self.bytes);
        ZeroEvent { bytes }
    }
}

impl fmt::Debug for ZeroEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZeroEvent")
            .field("type", &self.event_type())
            .field("id", &self.id())
            .field("sender", &self.sender())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// A zero event's id (or cause): the UUID's 16 bytes, shown in the usual
/// hyphenated form without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZeroId(pub [u8; 16]);

impl ZeroId {
    /// The hyphenated text, on the stack.
    pub fn text(&self) -> ZeroIdText {
        ZeroIdText(crate::uuid7::hyphenated(&self.0))
    }

    /// As an ordinary event id.
    pub fn to_id(&self) -> crate::Id {
        crate::uuid7::text_of(&self.0)
    }
}

impl fmt::Display for ZeroId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for ZeroId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A [`ZeroId`]'s text, held on the stack.
#[derive(Clone, Copy)]
pub struct ZeroIdText([u8; 36]);

impl ZeroIdText {
    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The typed reads of [`ZeroEvent::get`]: `i8` to `u64`, `f32`, `f64`,
/// `bool`, `&str` and `&[u8]`.
pub trait ZeroRead<'a>: Sized {
    /// The kind a field must have to be read as this type.
    const KIND: Kind;
    /// Reads the value at `at`.
    fn read(event: &'a ZeroEvent, at: usize) -> Result<Self, ZeroError>;
}

macro_rules! numbers {
    ($($method:ident $ty:ty => $kind:ident),* $(,)?) => {
        impl ZeroEvent {
            $(
                #[doc = concat!("The `", stringify!($ty), "` at offset `at`.")]
                pub fn $method(&self, at: usize) -> Result<$ty, ZeroError> {
                    Ok(<$ty>::from_le_bytes(layout::take(&self.bytes, at)?))
                }
            )*
        }
        $(
            impl ZeroRead<'_> for $ty {
                const KIND: Kind = Kind::$kind;
                fn read(event: &ZeroEvent, at: usize) -> Result<Self, ZeroError> {
                    event.$method(at)
                }
            }
        )*
    };
}

numbers! {
    i8 i8 => I8, i16 i16 => I16, i32 i32 => I32, i64 i64 => I64,
    u8 u8 => U8, u16 u16 => U16, u32 u32 => U32, u64 u64 => U64,
    f32 f32 => F32, f64 f64 => F64,
}

impl ZeroRead<'_> for bool {
    const KIND: Kind = Kind::Bool;
    fn read(event: &ZeroEvent, at: usize) -> Result<Self, ZeroError> {
        event.bool(at)
    }
}

impl<'a> ZeroRead<'a> for &'a str {
    const KIND: Kind = Kind::Str;
    fn read(event: &'a ZeroEvent, at: usize) -> Result<Self, ZeroError> {
        event.str(at)
    }
}

impl<'a> ZeroRead<'a> for &'a [u8] {
    const KIND: Kind = Kind::Bytes;
    fn read(event: &'a ZeroEvent, at: usize) -> Result<Self, ZeroError> {
        event.bytes(at)
    }
}

impl ZeroEvent {
    /// A zero event from bytes received from elsewhere: checked (hostile
    /// bytes give an error, never a panic), then copied into a pooled buffer.
    pub fn from_bytes(bytes: &[u8]) -> Result<ZeroEvent, ZeroError> {
        layout::check(bytes)?;
        let mut owned = pool::take();
        owned.extend_from_slice(bytes);
        Ok(ZeroEvent { bytes: owned })
    }

    /// The whole buffer (what travels on the wire).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn strings(&self) -> &[u8] {
        layout::strings(&self.bytes)
    }

    /// The event type's bytes (UTF-8, checked when the event was built or
    /// received), without checking them again.
    pub(crate) fn event_type_bytes(&self) -> &[u8] {
        let (offset, len) = layout::header_pair(&self.bytes, AT_TYPE);
        layout::span(self.strings(), offset, len)
    }

    fn header_str(&self, at: usize) -> &str {
        layout::str_at(&self.bytes, self.strings(), at).unwrap_or_default()
    }

    fn id_at(&self, at: usize) -> ZeroId {
        ZeroId(layout::take(&self.bytes, at).unwrap_or_default())
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        self.header_str(AT_TYPE)
    }

    /// The event's unique, time-ordered id.
    pub fn id(&self) -> ZeroId {
        self.id_at(AT_ID)
    }

    /// The id of the event whose handling sent this one; `None` for a root.
    pub fn causation(&self) -> Option<ZeroId> {
        (self.bytes[3] & FLAG_CAUSED != 0).then(|| self.id_at(AT_CAUSATION))
    }

    /// The id shared by every event of one transaction.
    pub fn correlation_id(&self) -> &str {
        self.header_str(AT_CORRELATION)
    }

    /// The node that sent the event.
    pub fn sender(&self) -> &str {
        self.header_str(AT_SENDER)
    }

    /// When it was sent, in ms since the Unix epoch.
    pub fn timestamp(&self) -> u64 {
        u64::from_le_bytes(layout::take(&self.bytes, AT_TIMESTAMP).unwrap_or_default())
    }

    /// The nodes along the causal chain, ending with the sender.
    pub fn path(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + '_ {
        let (at, hops) = layout::header_pair(&self.bytes, AT_PATH);
        (0..hops).map(move |hop| self.header_str(at + hop * STR))
    }

    /// The payload's fields: names (nested ones joined with `.`) to offsets.
    pub fn offsets(&self) -> Offsets<'_> {
        // Found once here, not again for each name looked up.
        let (at, count) = layout::header_pair(&self.bytes, AT_FIELDS);
        let span = count
            .checked_mul(FIELD)
            .map_or(&[][..], |len| layout::span(&self.bytes, at, len));
        Offsets {
            event: self,
            entries: span.as_chunks::<FIELD>().0,
            strings: self.strings(),
        }
    }

    /// The value of field `name`, read as `T` (its kind must be `T`'s).
    ///
    /// ```
    /// # use happen::zero::{ZeroWriter, ZeroEvent};
    /// # let event = ZeroWriter::new("reading").f64("celsius", 21.5).finish("s-1")?;
    /// let celsius: f64 = event.get("celsius")?;
    /// assert_eq!(celsius, 21.5);
    /// assert!(event.get::<u32>("celsius").is_err()); // it is an f64
    /// # Ok::<(), happen::zero::ZeroError>(())
    /// ```
    pub fn get<'a, T: ZeroRead<'a>>(&'a self, name: &str) -> Result<T, ZeroError> {
        let (kind, at) = self
            .offsets()
            .field(name)
            .ok_or_else(|| ZeroError::NoField(name.to_owned()))?;
        if kind != T::KIND {
            return Err(ZeroError::WrongKind {
                field: name.to_owned(),
                expected: T::KIND,
                found: kind,
            });
        }
        T::read(self, at)
    }

    /// The boolean at offset `at`.
    pub fn bool(&self, at: usize) -> Result<bool, ZeroError> {
        match layout::take::<1>(&self.bytes, at)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ZeroError::BadBool { at }),
        }
    }

    /// The string whose reference is at offset `at` (the documentation's
    /// `getString`): from the string table, without copying.
    pub fn str(&self, at: usize) -> Result<&str, ZeroError> {
        layout::str_at(&self.bytes, self.strings(), at)
    }

    /// The raw block whose offset and length are at offset `at` (a
    /// [`Kind::Bytes`] field).
    pub fn bytes(&self, at: usize) -> Result<&[u8], ZeroError> {
        let (offset, len) = layout::pair(&self.bytes, at)?;
        offset
            .checked_add(len)
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or(ZeroError::OutOfRange {
                at: offset,
                width: len,
                len: self.bytes.len(),
            })
    }
}

/// A zero event's field directory: where each payload value is.
#[derive(Clone, Copy)]
pub struct Offsets<'a> {
    event: &'a ZeroEvent,
    /// The directory's entries (a checked buffer's are all in range).
    entries: &'a [[u8; FIELD]],
    /// The string table the entries' names are in.
    strings: &'a [u8],
}

impl<'a> Offsets<'a> {
    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The offset of field `name`'s value (nested names joined with `.`,
    /// as `location.latitude`).
    pub fn get(&self, name: &str) -> Option<usize> {
        self.field(name).map(|(_, at)| at)
    }

    /// The kind and offset of field `name`.
    pub fn field(&self, name: &str) -> Option<(Kind, usize)> {
        let wanted = name.as_bytes();
        let word = |entry: &[u8; FIELD], at: usize| {
            u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]]) as usize
        };
        // Names compared as bytes (checked to be UTF-8 on receipt already),
        // lengths first.
        self.entries.iter().find_map(|entry| {
            let len = word(entry, 4);
            if len != wanted.len() {
                return None;
            }
            if layout::span(self.strings, word(entry, 0), len) != wanted {
                return None;
            }
            Some((Kind::from_byte(entry[8])?, word(entry, 12)))
        })
    }

    /// Every field: name, kind, offset, in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Kind, usize)> + 'a {
        let event = self.event;
        let (at, count) = layout::header_pair(&event.bytes, AT_FIELDS);
        (0..count).map(move |i| {
            let entry = at + i * FIELD;
            let name = event.header_str(entry);
            let kind = Kind::from_byte(event.bytes[entry + 8]).unwrap_or(Kind::Null);
            let offset = layout::u32_at(&event.bytes, entry + 12).unwrap_or(0) as usize;
            (name, kind, offset)
        })
    }
}

impl fmt::Debug for Offsets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(name, _, at)| (name, at)))
            .finish()
    }
}
