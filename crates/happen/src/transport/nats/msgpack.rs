//! MessagePack written and read directly, for the messages every event
//! travels in (see [`super::compact`]): no serde visitor per value.
//!
//! The writer chooses each marker exactly as `rmp-serde` does (the smallest
//! form of an integer, `str8` from 32 bytes, `f64` for every float), so the
//! bytes are the same whichever of the two wrote them; a test holds the two
//! to that.
//!
//! The reader answers `None` for anything outside the forms it knows (an
//! extension type, a float that is not finite, text that is not UTF-8, a
//! map keyed by something other than text or by one of serde_json's
//! reserved keys, nesting deeper than [`MAX_NESTING`]). It never guesses: its caller then hands the same bytes
//! to the `serde` decoder, which decodes them or says why not. So the reader
//! only has to agree with that decoder on what it accepts, which the wire
//! property tests check.

use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and maps the reader follows itself
/// (well inside the `serde` decoder's limit, so that both agree on all it
/// accepts).
pub(super) const MAX_NESTING: usize = 64;

/// How the keys serde_json reserves for itself start.
const SERDE_JSON_TOKEN: &str = "$serde_json::private::";

/// A length MessagePack cannot write (4 GiB or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a text, array or map of 4 GiB or more, which MessagePack cannot hold")
    }
}

impl std::error::Error for TooLong {}

type Written = Result<(), TooLong>;

fn len32(len: usize) -> Result<u32, TooLong> {
    u32::try_from(len).map_err(|_| TooLong)
}

/// A length after its marker: `markers` are the 8-, 16- and 32-bit forms
/// (`None`: no 8-bit form).
#[inline]
fn wide_length(out: &mut Vec<u8>, len: u32, markers: (Option<u8>, u8, u8)) {
    match markers.0 {
        Some(marker) if len < 256 => out.extend_from_slice(&[marker, len as u8]),
        _ if len < 65536 => {
            out.push(markers.1);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(markers.2);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

#[inline]
pub(super) fn nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

#[inline]
pub(super) fn uint(out: &mut Vec<u8>, value: u64) {
    if value < 128 {
        out.push(value as u8);
    } else if value < 256 {
        out.extend_from_slice(&[0xcc, value as u8]);
    } else if value < 65536 {
        out.push(0xcd);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value < 1 << 32 {
        out.push(0xce);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn sint(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        uint(out, value as u64);
    } else if value >= -32 {
        out.push(value as u8);
    } else if value >= -128 {
        out.extend_from_slice(&[0xd0, value as u8]);
    } else if value >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(value as i16).to_be_bytes());
    } else if value >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(value as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// A length `len` with a one-byte form below `short` (`fixed | len`),
/// then the wider `markers` (see [`wide_length`]).
#[inline]
fn header(
    out: &mut Vec<u8>,
    len: usize,
    short: u32,
    fixed: u8,
    markers: (Option<u8>, u8, u8),
) -> Written {
    let len = len32(len)?;
    if len < short {
        out.push(fixed | len as u8);
    } else {
        wide_length(out, len, markers);
    }
    Ok(())
}

#[inline]
pub(super) fn str(out: &mut Vec<u8>, text: &str) -> Written {
    header(out, text.len(), 32, 0xa0, (Some(0xd9), 0xda, 0xdb))?;
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

#[inline]
pub(super) fn bin(out: &mut Vec<u8>, bytes: &[u8]) -> Written {
    // No one-byte form.
    header(out, bytes.len(), 0, 0, (Some(0xc4), 0xc5, 0xc6))?;
    out.extend_from_slice(bytes);
    Ok(())
}

#[inline]
pub(super) fn array_len(out: &mut Vec<u8>, len: usize) -> Written {
    header(out, len, 16, 0x90, (None, 0xdc, 0xdd))
}

fn map_len(out: &mut Vec<u8>, len: usize) -> Written {
    header(out, len, 16, 0x80, (None, 0xde, 0xdf))
}

/// A JSON value, as `serde_json`'s `Serialize` hands it to `rmp-serde`.
pub(super) fn value(out: &mut Vec<u8>, value: &Value) -> Written {
    match value {
        Value::Null => nil(out),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => number(out, n),
        Value::String(s) => str(out, s)?,
        Value::Array(items) => {
            array_len(out, items.len())?;
            for item in items {
                self::value(out, item)?;
            }
        }
        Value::Object(map) => self::map(out, map)?,
    }
    Ok(())
}

pub(super) fn map(out: &mut Vec<u8>, map: &Map<String, Value>) -> Written {
    map_len(out, map.len())?;
    for (key, item) in map {
        str(out, key)?;
        value(out, item)?;
    }
    Ok(())
}

fn number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        uint(out, u);
    } else if let Some(i) = n.as_i64() {
        sint(out, i);
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        out.push(0xcb);
        out.extend_from_slice(&f.to_be_bytes());
    }
}

/// Text or bytes, as a reader met them.
pub(super) enum Raw<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// An integer as it was written: unsigned or signed.
enum Int {
    U(u64),
    I(i64),
}

/// Reads MessagePack from a slice; `None` is "not a form this reader
/// takes" (see the module docs), never an error of its own.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte has been read.
    pub(super) fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }

    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let taken = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(taken)
    }

    #[inline]
    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// Takes a nil if one is next.
    #[inline]
    pub(super) fn nil(&mut self) -> bool {
        let next = self.bytes.get(self.at) == Some(&0xc0);
        self.at += usize::from(next);
        next
    }

    /// A value that may be nil: `Some(None)` for nil.
    #[inline]
    pub(super) fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        if self.nil() {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    fn length(&mut self, marker: u8) -> Option<usize> {
        Some(match marker {
            0xc4 | 0xd9 => usize::from(self.byte()?),
            0xc5 | 0xda | 0xdc | 0xde => usize::from(u16::from_be_bytes(self.be()?)),
            0xc6 | 0xdb | 0xdd | 0xdf => u32::from_be_bytes(self.be()?) as usize,
            _ => return None,
        })
    }

    pub(super) fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x90..=0x9f => Some(usize::from(marker & 0x0f)),
            marker @ (0xdc | 0xdd) => self.length(marker),
            _ => None,
        }
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x80..=0x8f => Some(usize::from(marker & 0x0f)),
            marker @ (0xde | 0xdf) => self.length(marker),
            _ => None,
        }
    }

    /// Text (valid UTF-8) or bytes.
    #[inline]
    pub(super) fn raw(&mut self) -> Option<Raw<'a>> {
        let marker = self.byte()?;
        let (len, text) = match marker {
            0xa0..=0xbf => (usize::from(marker & 0x1f), true),
            0xd9..=0xdb => (self.length(marker)?, true),
            0xc4..=0xc6 => (self.length(marker)?, false),
            _ => return None,
        };
        let bytes = self.take(len)?;
        Some(if text {
            Raw::Text(std::str::from_utf8(bytes).ok()?)
        } else {
            Raw::Bytes(bytes)
        })
    }

    pub(super) fn text(&mut self) -> Option<&'a str> {
        match self.raw()? {
            Raw::Text(text) => Some(text),
            Raw::Bytes(_) => None,
        }
    }

    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        match self.raw()? {
            Raw::Bytes(bytes) => Some(bytes),
            Raw::Text(_) => None,
        }
    }

    fn int(&mut self, marker: u8) -> Option<Int> {
        Some(match marker {
            0x00..=0x7f => Int::U(u64::from(marker)),
            0xe0..=0xff => Int::I(i64::from(marker as i8)),
            0xcc => Int::U(u64::from(self.byte()?)),
            0xcd => Int::U(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => Int::U(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Int::U(u64::from_be_bytes(self.be()?)),
            0xd0 => Int::I(i64::from(self.byte()? as i8)),
            0xd1 => Int::I(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Int::I(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Int::I(i64::from_be_bytes(self.be()?)),
            _ => return None,
        })
    }

    /// An integer that fits a `u64`.
    pub(super) fn uint(&mut self) -> Option<u64> {
        let marker = self.byte()?;
        match self.int(marker)? {
            Int::U(u) => Some(u),
            Int::I(i) => u64::try_from(i).ok(),
        }
    }

    /// A JSON value at nesting `depth` (the value's own arrays and maps
    /// count from there).
    pub(super) fn value(&mut self, depth: usize) -> Option<Value> {
        let marker = *self.bytes.get(self.at)?;
        Some(match marker {
            0xc0 => {
                self.at += 1;
                Value::Null
            }
            0xc2 | 0xc3 => {
                self.at += 1;
                Value::Bool(marker == 0xc3)
            }
            0xca => {
                self.at += 1;
                let f = f32::from_be_bytes(self.be()?);
                Value::Number(Number::from_f64(f64::from(f))?)
            }
            0xcb => {
                self.at += 1;
                Value::Number(Number::from_f64(f64::from_be_bytes(self.be()?))?)
            }
            0xa0..=0xbf | 0xd9..=0xdb => Value::String(self.text()?.to_owned()),
            0x90..=0x9f | 0xdc | 0xdd => {
                let depth = deeper(depth)?;
                let len = self.array_len()?;
                let mut items = Vec::new();
                for _ in 0..len {
                    items.push(self.value(depth)?);
                }
                Value::Array(items)
            }
            0x80..=0x8f | 0xde | 0xdf => Value::Object(self.map(depth)?),
            _ => {
                self.at += 1;
                match self.int(marker)? {
                    Int::U(u) => Value::Number(u.into()),
                    Int::I(i) => Value::Number(i.into()),
                }
            }
        })
    }

    /// A map keyed by text, at nesting `depth`; a key met twice keeps its
    /// last value, as `serde_json` does.
    pub(super) fn map(&mut self, depth: usize) -> Option<Map<String, Value>> {
        let depth = deeper(depth)?;
        let len = self.map_len()?;
        let mut map = Map::new();
        for _ in 0..len {
            let key = self.text()?;
            if key.starts_with(SERDE_JSON_TOKEN) {
                // serde_json's own markers (a raw value, with its
                // `raw_value` feature, which another crate of a build may
                // turn on): serde decides what they are.
                return None;
            }
            let key = key.to_owned();
            let item = self.value(depth)?;
            map.insert(key, item);
        }
        Some(map)
    }
}

/// One level deeper, within [`MAX_NESTING`].
pub(super) fn deeper(depth: usize) -> Option<usize> {
    (depth < MAX_NESTING).then_some(depth + 1)
}
