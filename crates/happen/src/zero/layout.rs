//! The flat layout of a zero event: where each part lives, and the one
//! check every buffer passes before anyone reads it.
//!
//! All numbers are little-endian. A buffer is
//!
//! ```text
//! header (96 bytes) | payload values | field directory | path | string table
//! ```
//!
//! | at | size | what |
//! |---|---|---|
//! | 0 | 2 | magic `HZ` |
//! | 2 | 1 | layout version (1) |
//! | 3 | 1 | flags: bit 0, the event has a cause |
//! | 4 | 4 | the buffer's length |
//! | 8 | 16 | event id (UUID bytes) |
//! | 24 | 16 | causation id (zeros without a cause) |
//! | 40 | 8 | timestamp, ms since the Unix epoch |
//! | 48 | 8 | event type (a string reference) |
//! | 56 | 8 | sender (a string reference) |
//! | 64 | 8 | correlation id (a string reference) |
//! | 72 | 8 | path: offset, count of string references |
//! | 80 | 8 | field directory: offset, count of 16-byte entries |
//! | 88 | 8 | string table: offset, length |
//!
//! A string reference is 8 bytes: offset into the string table, length. A
//! field directory entry is 16 bytes: the field's name (a string reference,
//! nested names joined with `.`), its kind (one byte, [`Kind`]), three zero
//! bytes, the offset of its value in the buffer.

use super::{Kind, ZeroError};

pub(crate) const MAGIC: [u8; 2] = *b"HZ";
pub(crate) const VERSION: u8 = 1;
pub(crate) const HEADER: usize = 96;
pub(crate) const FLAG_CAUSED: u8 = 1;

pub(crate) const AT_LEN: usize = 4;
pub(crate) const AT_ID: usize = 8;
pub(crate) const AT_CAUSATION: usize = 24;
pub(crate) const AT_TIMESTAMP: usize = 40;
pub(crate) const AT_TYPE: usize = 48;
pub(crate) const AT_SENDER: usize = 56;
pub(crate) const AT_CORRELATION: usize = 64;
pub(crate) const AT_PATH: usize = 72;
pub(crate) const AT_FIELDS: usize = 80;
pub(crate) const AT_STRINGS: usize = 88;
pub(crate) const FIELD: usize = 16;
pub(crate) const STR: usize = 8;

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> Result<u32, ZeroError> {
    Ok(u32::from_le_bytes(take::<4>(bytes, at)?))
}

/// The `N` bytes at `at`, or [`ZeroError::OutOfRange`].
pub(crate) fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], ZeroError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(ZeroError::OutOfRange {
            at,
            width: N,
            len: bytes.len(),
        })
}

/// A (offset, count or length) pair at `at`.
pub(crate) fn pair(bytes: &[u8], at: usize) -> Result<(usize, usize), ZeroError> {
    Ok((u32_at(bytes, at)? as usize, u32_at(bytes, at + 4)? as usize))
}

/// The string a reference at `at` names, in the table `strings`.
pub(crate) fn str_at<'a>(
    bytes: &'a [u8],
    strings: &'a [u8],
    at: usize,
) -> Result<&'a str, ZeroError> {
    let (offset, len) = pair(bytes, at)?;
    let raw = offset
        .checked_add(len)
        .and_then(|end| strings.get(offset..end))
        .ok_or(ZeroError::BadString { at })?;
    std::str::from_utf8(raw).map_err(|_| ZeroError::BadString { at })
}

/// The pair at `at` in the header (`at` a constant below [`HEADER`], so
/// that the reads need no bounds checks once inlined); `(0, 0)` if the
/// buffer is shorter than a header (never, for a checked one).
#[inline]
pub(crate) fn header_pair(bytes: &[u8], at: usize) -> (usize, usize) {
    let Some(header) = bytes.first_chunk::<HEADER>() else {
        return (0, 0);
    };
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]) as usize
    };
    (word(at), word(at + 4))
}

/// `len` bytes of `bytes` from `offset`, or none if out of range.
#[inline]
pub(crate) fn span(bytes: &[u8], offset: usize, len: usize) -> &[u8] {
    offset
        .checked_add(len)
        .and_then(|end| bytes.get(offset..end))
        .unwrap_or_default()
}

/// The string table of a checked buffer.
#[inline]
pub(crate) fn strings(bytes: &[u8]) -> &[u8] {
    let (offset, len) = header_pair(bytes, AT_STRINGS);
    span(bytes, offset, len)
}

/// A region of `count` entries of `width` bytes at the offset in the
/// header's pair at `at`, checked to lie after the header and in the buffer.
fn region(bytes: &[u8], at: usize, width: usize) -> Result<(usize, usize), ZeroError> {
    let (offset, count) = pair(bytes, at)?;
    let end = count
        .checked_mul(width)
        .and_then(|size| size.checked_add(offset));
    match end {
        Some(end) if offset >= HEADER && end <= bytes.len() => Ok((offset, count)),
        _ => Err(ZeroError::OutOfRange {
            at: offset,
            width: count.saturating_mul(width),
            len: bytes.len(),
        }),
    }
}

/// Checks everything a reader relies on: the header, that every region,
/// string and value lies in the buffer, that strings are UTF-8 and kinds
/// known, and that no two field names clash in the JSON form ([`clash`]).
/// After it, reading a named field cannot fail on the buffer's account.
/// Allocates nothing (but for a directory of more than 16 fields, sorted
/// once to find clashing names).
pub(crate) fn check(bytes: &[u8]) -> Result<(), ZeroError> {
    // The whole string table is checked as UTF-8 once, and each reference
    // then only for its bounds and character boundaries: a slice of valid
    // UTF-8 between two boundaries is valid UTF-8. A table with bad bytes
    // anywhere takes the reference-by-reference path, which names the
    // first bad string (and passes bytes that no string refers to).
    if let Some(table) = header_table(bytes)
        && let Ok(table) = std::str::from_utf8(table)
    {
        return check_with(bytes, |at| in_table(bytes, table, at));
    }
    let strings = header_table(bytes).unwrap_or_default();
    check_with(bytes, |at| str_at(bytes, strings, at))
}

/// The string table a header names, if it lies in the buffer (the same
/// [`region`] [`check_with`] checks, with its error).
fn header_table(bytes: &[u8]) -> Option<&[u8]> {
    let (offset, len) = region(bytes, AT_STRINGS, 1).ok()?;
    bytes.get(offset..offset + len)
}

/// The string the reference at `at` names in `table` (already known to
/// be UTF-8): `str` slicing checks the bounds and that both ends fall on
/// character boundaries, so no byte is checked again. An empty string may
/// start anywhere in the table, as [`str_at`] allows.
fn in_table<'a>(bytes: &[u8], table: &'a str, at: usize) -> Result<&'a str, ZeroError> {
    let (offset, len) = pair(bytes, at)?;
    if len == 0 && offset <= table.len() {
        return Ok("");
    }
    offset
        .checked_add(len)
        .and_then(|end| table.get(offset..end))
        .ok_or(ZeroError::BadString { at })
}

/// [`check`] with `string` checking each string reference.
fn check_with<'a>(
    bytes: &'a [u8],
    string: impl Fn(usize) -> Result<&'a str, ZeroError>,
) -> Result<(), ZeroError> {
    if bytes.len() < HEADER {
        return Err(ZeroError::Truncated {
            needed: HEADER,
            len: bytes.len(),
        });
    }
    if bytes[..2] != MAGIC {
        return Err(ZeroError::NotZero);
    }
    if bytes[2] != VERSION {
        return Err(ZeroError::Version(bytes[2]));
    }
    if bytes[3] & !FLAG_CAUSED != 0 {
        return Err(ZeroError::Flags(bytes[3]));
    }
    let declared = u32_at(bytes, AT_LEN)? as usize;
    if declared != bytes.len() {
        return Err(ZeroError::Length {
            declared,
            actual: bytes.len(),
        });
    }
    region(bytes, AT_STRINGS, 1)?;
    let event_type = string(AT_TYPE)?;
    if crate::name::validate_event_type(event_type).is_err() {
        return Err(ZeroError::BadString { at: AT_TYPE });
    }
    string(AT_SENDER)?;
    string(AT_CORRELATION)?;
    let (path, hops) = region(bytes, AT_PATH, STR)?;
    for hop in 0..hops {
        string(path + hop * STR)?;
    }
    let (fields, count) = region(bytes, AT_FIELDS, FIELD)?;
    for field in 0..count {
        let at = fields + field * FIELD;
        if crate::depth::name_too_deep(string(at)?) {
            return Err(ZeroError::TooDeep {
                at,
                limit: crate::depth::MAX_DEPTH,
            });
        }
        let kind = Kind::from_byte(bytes[at + 8]).ok_or(ZeroError::Kind {
            at: at + 8,
            byte: bytes[at + 8],
        })?;
        if bytes[at + 9..at + 12] != [0, 0, 0] {
            return Err(ZeroError::Kind {
                at: at + 9,
                byte: bytes[at + 9],
            });
        }
        let value = u32_at(bytes, at + 12)? as usize;
        let width = kind.width();
        if value < HEADER || value.checked_add(width).is_none_or(|end| end > bytes.len()) {
            return Err(ZeroError::OutOfRange {
                at: value,
                width,
                len: bytes.len(),
            });
        }
        match kind {
            Kind::Str | Kind::Json => {
                string(value)?;
            }
            Kind::Bytes => {
                let (offset, len) = pair(bytes, value)?;
                if offset < HEADER || offset.checked_add(len).is_none_or(|end| end > bytes.len()) {
                    return Err(ZeroError::OutOfRange {
                        at: offset,
                        width: len,
                        len: bytes.len(),
                    });
                }
            }
            Kind::Bool if bytes[value] > 1 => {
                return Err(ZeroError::BadBool { at: value });
            }
            _ => {}
        }
    }
    let entries = span(bytes, fields, count * FIELD).as_chunks::<FIELD>().0;
    let strings = header_table(bytes).unwrap_or_default();
    // A writer stores each name once, so the names fit in the table. Names
    // pointing into one run of bytes would make the clash check's sort
    // compare long shared prefixes (quadratic in the buffer's size).
    let named = entries.iter().map(|e| word(e, 4) as u64);
    if named.sum::<u64>() > strings.len() as u64 {
        return Err(ZeroError::Unrepresentable(
            "field names overlap in the string table (a writer stores each once)",
        ));
    }
    if let Some(pair) = clash(entries, strings) {
        return Err(clash_error(entries, strings, pair));
    }
    Ok(())
}

/// Directories of more fields than this are checked for clashing names by
/// sorting them (in a buffer kept per thread); smaller ones pair by pair.
const PAIRWISE: usize = 16;

/// Two fields (by place in the directory) whose names the JSON form cannot
/// hold both of, if there are any: the same name twice, a name that is a dotted
/// prefix of another (`loc` and `loc.lat`: a value that would also be an
/// object), or the empty name (the whole payload) beside any other.
/// `entries` are directory records whose names are in `strings`.
pub(crate) fn clash(entries: &[[u8; FIELD]], strings: &[u8]) -> Option<(usize, usize)> {
    let name = |entry: &[u8; FIELD]| span(strings, word(entry, 0), word(entry, 4));
    if entries.len() <= PAIRWISE {
        // Lengths first, from the directory: two names of different lengths
        // clash only where the longer has a `.` just past the shorter (or
        // the shorter is empty), so most pairs are told apart without
        // reading their bytes.
        for (second, b) in entries.iter().enumerate() {
            let (b_at, b_len) = (word(b, 0), word(b, 4));
            for (first, a) in entries[..second].iter().enumerate() {
                let (a_at, a_len) = (word(a, 0), word(a, 4));
                let (short, long_at) = if a_len <= b_len {
                    (a_len, b_at)
                } else {
                    (b_len, a_at)
                };
                let suspect = a_len == b_len
                    || short == 0
                    || long_at.checked_add(short).and_then(|at| strings.get(at)) == Some(&b'.');
                if suspect && clashes(name(a), name(b)) {
                    return Some((first, second));
                }
            }
        }
        return None;
    }
    sorted_clash(entries, strings)
}

thread_local! {
    /// The order [`sorted_clash`] sorts, kept for the thread's next check.
    static ORDER: std::cell::Cell<Vec<usize>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`clash`] for many fields: sorted, in `O(n log n)`.
#[inline(never)]
fn sorted_clash(entries: &[[u8; FIELD]], strings: &[u8]) -> Option<(usize, usize)> {
    let name = |entry: &[u8; FIELD]| span(strings, word(entry, 0), word(entry, 4));
    // Ordered part by part (`.` below every other byte), a name's
    // descendants follow it at once, and equal names are neighbours.
    let key = |byte: &u8| {
        if *byte == b'.' {
            0
        } else {
            u16::from(*byte) + 1
        }
    };
    // The order is sorted in a buffer kept per thread: no allocation once
    // the thread has checked an event of as many fields.
    let mut order = ORDER.with(|kept| kept.take());
    order.clear();
    order.extend(0..entries.len());
    order.sort_unstable_by(|a, b| {
        let (a, b) = (name(&entries[*a]), name(&entries[*b]));
        a.iter().map(key).cmp(b.iter().map(key))
    });
    let found = order
        .windows(2)
        .find(|pair| clashes(name(&entries[pair[0]]), name(&entries[pair[1]])))
        .map(|pair| (pair[0].min(pair[1]), pair[0].max(pair[1])));
    ORDER.with(|kept| kept.set(order));
    found
}

/// The little-endian `u32` at `at` of a directory entry.
#[inline(always)]
fn word(entry: &[u8; FIELD], at: usize) -> usize {
    // One load (an array built byte by byte is not always read as one).
    let bytes: [u8; 4] = entry[at..at + 4].try_into().unwrap_or_default();
    u32::from_le_bytes(bytes) as usize
}

/// The error for the fields at `pair` (from [`clash`]).
#[cold]
pub(crate) fn clash_error(
    entries: &[[u8; FIELD]],
    strings: &[u8],
    (first, second): (usize, usize),
) -> ZeroError {
    let name = |at: usize| {
        let entry = &entries[at];
        String::from_utf8_lossy(span(strings, word(entry, 0), word(entry, 4))).into_owned()
    };
    ZeroError::NameClash {
        first: name(first),
        second: name(second),
    }
}

/// Whether names `a` and `b` clash (see [`clash`]).
#[inline]
fn clashes(a: &[u8], b: &[u8]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    match long.get(short.len()) {
        None => short == long,
        Some(b'.') => long.starts_with(short),
        Some(_) => short.is_empty(),
    }
}
