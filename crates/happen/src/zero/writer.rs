//! Building zero events: typed fields written straight into pooled buffers.

use super::layout::{
    self, AT_CAUSATION, AT_CORRELATION, AT_FIELDS, AT_ID, AT_LEN, AT_PATH, AT_SENDER, AT_STRINGS,
    AT_TIMESTAMP, AT_TYPE, FIELD, FLAG_CAUSED, HEADER, MAGIC, VERSION,
};
use super::{Kind, ZeroError, ZeroEvent, pool};

/// Builds a zero event's payload; a send stamps and seals it.
///
/// Fields are written in order, each at the next offset; nested values are
/// named with `.` (`location.latitude`). Strings go to the string table.
/// Each field needs a name of its own that is no dotted prefix of another
/// (`loc` beside `loc.lat` would be a value and an object at once in the
/// JSON form): sealing refuses them with [`ZeroError::NameClash`].
/// The buffers come from the pool and return to it, so a writer allocates
/// nothing once the pool is warm.
///
/// ```
/// use happen::zero::ZeroWriter;
///
/// let mut reading = ZeroWriter::new("sensor-reading");
/// reading
///     .str("sensorId", "s-17")
///     .f64("temperature", 21.5)
///     .u64("timestamp", 1_767_225_600_000)
///     .f64("location.latitude", 52.52)
///     .f64("location.longitude", 13.40);
/// let event = reading.finish("sensor-gateway")?;
/// let at = event.offsets().get("location.latitude").unwrap();
/// assert_eq!(event.f64(at)?, 52.52);
/// assert_eq!(event.get::<&str>("sensorId")?, "s-17");
/// # Ok::<(), happen::zero::ZeroError>(())
/// ```
pub struct ZeroWriter {
    data: Vec<u8>,
    fields: Vec<u8>,
    strings: Vec<u8>,
    event_type: (u32, u32),
    /// The first error met while writing (boxed: a writer is moved whole,
    /// and the error is rare).
    error: Option<Box<ZeroError>>,
    /// Finished: what is written from now on makes no event.
    spent: bool,
    /// One bit per field name's [`name_bit`]: names that could clash in the
    /// JSON form share one.
    names: u64,
    /// Two names shared a bit: sealing checks them for a clash.
    suspect: bool,
    /// Why the event type is not valid: a send says it as an ordinary send
    /// would ([`HappenError::InvalidName`](crate::HappenError::InvalidName));
    /// `finish` says [`ZeroError::BadString`].
    invalid_type: Option<Box<crate::name::NameError>>,
}

impl Drop for ZeroWriter {
    fn drop(&mut self) {
        // Sent, the writer's data became the event: nothing to give back.
        pool::give(std::mem::take(&mut self.data));
        pool::give_scratch([
            std::mem::take(&mut self.fields),
            std::mem::take(&mut self.strings),
        ]);
    }
}

impl std::fmt::Debug for ZeroWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroWriter")
            .field("bytes", &self.data.len())
            .field("fields", &(self.fields.len() / super::layout::FIELD))
            .finish()
    }
}

/// What a send stamps on a zero event.
pub(crate) struct Stamp<'a, P> {
    pub(crate) id: [u8; 16],
    pub(crate) timestamp: u64,
    pub(crate) sender: &'a str,
    pub(crate) causation: Option<[u8; 16]>,
    /// `None`: the event's own id (a root event).
    pub(crate) correlation: Option<&'a str>,
    /// The path, ending with the sender.
    pub(crate) path: P,
}

impl ZeroWriter {
    /// A writer for an event of `event_type` (an invalid type is reported
    /// when the event is sent or finished).
    pub fn new(event_type: &str) -> ZeroWriter {
        let mut data = pool::take();
        let [fields, strings] = pool::take_scratch();
        data.extend_from_slice(&[0; HEADER]);
        let mut writer = ZeroWriter {
            data,
            fields,
            strings,
            event_type: (0, 0),
            error: None,
            spent: false,
            names: 0,
            suspect: false,
            invalid_type: None,
        };
        if let Err(error) = crate::name::validate_event_type(event_type) {
            writer.fail(ZeroError::BadString { at: AT_TYPE });
            writer.invalid_type = Some(Box::new(error));
        }
        writer.event_type = writer.add_str(event_type);
        writer
    }

    /// Why the event type is not valid, as an ordinary send says it.
    pub(crate) fn type_error(&mut self) -> Option<crate::HappenError> {
        self.invalid_type
            .take()
            .map(|error| crate::HappenError::InvalidName(*error))
    }

    /// The offset the next field's value will take: with
    /// [`bytes`](Self::bytes), where a block of records starts is this plus 8.
    pub fn position(&self) -> usize {
        self.data.len()
    }

    /// Keeps `error` unless an earlier one is kept: sealing returns it.
    #[cold]
    fn fail(&mut self, error: ZeroError) {
        self.error.get_or_insert_with(|| Box::new(error));
    }

    fn add_str(&mut self, text: &str) -> (u32, u32) {
        self.add_text(text.as_bytes())
    }

    /// Adds UTF-8 `text` to the string table.
    fn add_text(&mut self, text: &[u8]) -> (u32, u32) {
        let at = self.strings.len();
        self.strings.extend_from_slice(text);
        match (u32::try_from(at), u32::try_from(text.len())) {
            (Ok(at), Ok(len)) => (at, len),
            _ => {
                self.fail(ZeroError::Unrepresentable("a string of 4 GiB or more"));
                (0, 0)
            }
        }
    }

    fn field(&mut self, name: &str, kind: Kind, value: &[u8]) -> &mut Self {
        let at = self.data.len();
        self.data.extend_from_slice(value);
        self.entry(name, kind, at)
    }

    fn entry(&mut self, name: &str, kind: Kind, at: usize) -> &mut Self {
        if crate::depth::name_too_deep(name) {
            self.fail(ZeroError::TooDeep {
                at: 0,
                limit: crate::depth::MAX_DEPTH,
            });
            return self;
        }
        let bit = name_bit(name.as_bytes());
        self.suspect |= self.names & bit != 0;
        self.names |= bit;
        let (name_at, name_len) = self.add_str(name);
        let Ok(at) = u32::try_from(at) else {
            self.fail(ZeroError::Unrepresentable("an event of 4 GiB or more"));
            return self;
        };
        let mut record = [0u8; super::layout::FIELD];
        record[..4].copy_from_slice(&name_at.to_le_bytes());
        record[4..8].copy_from_slice(&name_len.to_le_bytes());
        record[8] = kind.byte();
        record[12..].copy_from_slice(&at.to_le_bytes());
        self.fields.extend_from_slice(&record);
        self
    }

    fn string_field(&mut self, name: &str, kind: Kind, text: &str) -> &mut Self {
        let (at, len) = self.add_str(text);
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&at.to_le_bytes());
        value[4..].copy_from_slice(&len.to_le_bytes());
        self.field(name, kind, &value)
    }

    /// A string (in the string table; the value is its reference, read with
    /// [`ZeroEvent::str`]).
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        self.string_field(name, Kind::Str, value)
    }

    /// A block of raw bytes, such as fixed-size records one after another;
    /// read with [`ZeroEvent::bytes`], or at offsets from the block's start.
    pub fn bytes(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let at = self.data.len();
        let block = at + 8;
        let (Ok(block32), Ok(len)) = (u32::try_from(block), u32::try_from(value.len())) else {
            self.fail(ZeroError::Unrepresentable("an event of 4 GiB or more"));
            return self;
        };
        self.data.extend_from_slice(&block32.to_le_bytes());
        self.data.extend_from_slice(&len.to_le_bytes());
        self.data.extend_from_slice(value);
        self.entry(name, Kind::Bytes, at)
    }

    /// JSON `null`.
    pub fn null(&mut self, name: &str) -> &mut Self {
        self.entry(name, Kind::Null, self.data.len())
    }

    /// JSON text kept as it is (what has no flat form).
    pub(crate) fn json_text(&mut self, name: &str, text: &str) -> &mut Self {
        self.string_field(name, Kind::Json, text)
    }

    /// A boolean.
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.field(name, Kind::Bool, &[u8::from(value)])
    }

    /// Stamps the event as a root event sent by `sender` (a fresh id, the
    /// time now) without sending it: for tests, and to keep or hand over
    /// the bytes yourself. The writer is spent: finishing it again returns
    /// [`ZeroError::Unrepresentable`]; make a new writer for the next event.
    pub fn finish(&mut self, sender: &str) -> Result<ZeroEvent, ZeroError> {
        let (id, timestamp) = crate::uuid7::next_bytes();
        self.seal(Stamp {
            id,
            timestamp,
            sender,
            causation: None,
            correlation: None,
            path: std::iter::once(sender),
        })
    }

    /// Writes the causal context and the directories, and hands the buffer
    /// over as an event. The writer is spent.
    pub(crate) fn seal<'a, P: Iterator<Item = &'a str>>(
        &mut self,
        stamp: Stamp<'a, P>,
    ) -> Result<ZeroEvent, ZeroError> {
        // Spent by the first finish, whatever it returns: its directories
        // describe that event (a flag, not a stored error, which every
        // writer's drop would then have to drop).
        if std::mem::replace(&mut self.spent, true) || self.data.len() < HEADER {
            return Err(ZeroError::Unrepresentable(
                "this writer was already finished: make a new one for the next event",
            ));
        }
        if let Some(error) = self.error.take() {
            return Err(*error);
        }
        // Only names that share a bit can clash: most events skip the check.
        let entries = self.fields.as_chunks::<FIELD>().0;
        if self.suspect
            && let Some(pair) = layout::clash(entries, &self.strings)
        {
            return Err(layout::clash_error(entries, &self.strings, pair));
        }
        let sender = self.add_str(stamp.sender);
        let correlation = match stamp.correlation {
            Some(correlation) => self.add_str(correlation),
            // A root event's own id: hex digits and hyphens, UTF-8.
            None => self.add_text(&crate::uuid7::hyphenated(&stamp.id)),
        };
        let fields_at = self.data.len();
        let field_count = self.fields.len() / super::layout::FIELD;
        self.data.extend_from_slice(&self.fields);
        let path_at = self.data.len();
        let mut hops = 0usize;
        for hop in stamp.path {
            let (at, len) = self.add_str(hop);
            self.data.extend_from_slice(&at.to_le_bytes());
            self.data.extend_from_slice(&len.to_le_bytes());
            hops += 1;
        }
        let strings_at = self.data.len();
        self.data.extend_from_slice(&self.strings);
        let total = self.data.len();
        if let Some(error) = self.error.take() {
            return Err(*error);
        }
        let Ok(total32) = u32::try_from(total) else {
            return Err(ZeroError::Unrepresentable("an event of 4 GiB or more"));
        };
        let header = &mut self.data[..HEADER];
        header[..2].copy_from_slice(&MAGIC);
        header[2] = VERSION;
        header[3] = if stamp.causation.is_some() {
            FLAG_CAUSED
        } else {
            0
        };
        let put = |header: &mut [u8], at: usize, value: usize| {
            header[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
        };
        put(header, AT_LEN, total32 as usize);
        header[AT_ID..AT_ID + 16].copy_from_slice(&stamp.id);
        header[AT_CAUSATION..AT_CAUSATION + 16]
            .copy_from_slice(&stamp.causation.unwrap_or_default());
        header[AT_TIMESTAMP..AT_TIMESTAMP + 8].copy_from_slice(&stamp.timestamp.to_le_bytes());
        for (at, (offset, len)) in [
            (AT_TYPE, self.event_type),
            (AT_SENDER, sender),
            (AT_CORRELATION, correlation),
        ] {
            put(header, at, offset as usize);
            put(header, at + 4, len as usize);
        }
        put(header, AT_PATH, path_at);
        put(header, AT_PATH + 4, hops);
        put(header, AT_FIELDS, fields_at);
        put(header, AT_FIELDS + 4, field_count);
        put(header, AT_STRINGS, strings_at);
        put(header, AT_STRINGS + 4, total - strings_at);
        let bytes = std::mem::take(&mut self.data);
        debug_assert_eq!(super::layout::check(&bytes), Ok(()));
        Ok(ZeroEvent { bytes })
    }
}

/// A field name's bit among 64, the same for any two names that clash in
/// the JSON form ([`layout::clash`]): it depends only on the first three
/// bytes of the name's first part (up to a `.`), which a name and any name
/// it is a dotted prefix of share. The empty name clashes with every other,
/// so it takes every bit.
#[inline]
fn name_bit(name: &[u8]) -> u64 {
    let key = match *name {
        [] => return u64::MAX,
        [a] | [a, b'.', ..] => u32::from(a),
        [a, b] | [a, b, b'.', ..] => u32::from(a) | u32::from(b) << 8,
        [a, b, c, ..] => u32::from(a) | u32::from(b) << 8 | u32::from(c) << 16,
    };
    1 << (key.wrapping_mul(0x9E37_79B1) >> 26)
}

macro_rules! writes {
    ($($method:ident $ty:ty => $kind:ident),* $(,)?) => {
        impl ZeroWriter {
            $(
                #[doc = concat!("A `", stringify!($ty), "` (read with [`ZeroEvent::", stringify!($method), "`]).")]
                pub fn $method(&mut self, name: &str, value: $ty) -> &mut Self {
                    self.field(name, Kind::$kind, &value.to_le_bytes())
                }
            )*
        }
    };
}

writes! {
    i8 i8 => I8, i16 i16 => I16, i32 i32 => I32, i64 i64 => I64,
    u8 u8 => U8, u16 u16 => U16, u32 u32 => U32, u64 u64 => U64,
    f32 f32 => F32, f64 f64 => F64,
}
