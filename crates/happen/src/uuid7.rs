//! Event ids: UUID version 7 (RFC 9562), made without locks or allocation.
//!
//! An id is 48 bits of Unix time in milliseconds, a 22-bit sequence and 52
//! random bits. The time and sequence come from one process-wide atomic
//! word, so ids made in this process sort in the order they were made, on
//! every thread, even within one millisecond (the sequence orders them; if
//! it would overflow, the id borrows the next millisecond). The random bits
//! keep ids from different processes apart and make an id impossible to
//! guess from the ones before it (the documentation asks for
//! cryptographically secure ids): they come from the thread's ChaCha12
//! generator, seeded and periodically reseeded from the operating system
//! (`rand`'s thread generator). Until 2026-12-07 they came from xorshift64*,
//! whose state two consecutive ids gave away (a spec audit predicted the
//! next ids exactly).

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use crate::event::now_millis;
use crate::id::Id;

/// Bits of the per-millisecond sequence.
const SEQUENCE_BITS: u32 = 22;

/// `millis << SEQUENCE_BITS | sequence` of the last id made.
static LAST: AtomicU64 = AtomicU64::new(0);

/// 64 bits from a cryptographically secure generator (see the module docs).
pub(crate) fn random() -> u64 {
    if let Some(deterministic) = crate::testkit::clock::random() {
        return deterministic;
    }
    rand::rng().next_u64()
}

/// The next (time, sequence) word: later than every one made before.
fn next_word(millis: u64) -> u64 {
    let fresh = millis << SEQUENCE_BITS;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = if fresh > last { fresh } else { last + 1 };
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A new event id and the time it was made (ms since the Unix epoch).
pub(crate) fn next() -> (Id, u64) {
    if let Some(deterministic) = crate::testkit::clock::next_id() {
        return deterministic;
    }
    let (bytes, millis) = fresh();
    (text_of(&bytes), millis)
}

/// [`next`] as the id's 16 bytes, for the zero-allocation path.
pub(crate) fn next_bytes() -> ([u8; 16], u64) {
    if let Some((id, millis)) = crate::testkit::clock::next_id() {
        return (bytes_of(id.as_str()).unwrap_or_default(), millis);
    }
    fresh()
}

/// The wall clock in ms since the Unix epoch (0 before it). On Linux it is
/// read with `clock_gettime` directly: `SystemTime::now().duration_since`
/// took ~20 ns more per read on this project's machine (69 ns against
/// 49), and every event reads the clock once for its id.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn wall_millis() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    match (u64::try_from(now.tv_sec), u64::try_from(now.tv_nsec)) {
        (Ok(secs), Ok(nanos)) => secs.saturating_mul(1000).saturating_add(nanos / 1_000_000),
        _ => 0,
    }
}

/// The wall clock in ms since the Unix epoch (0 before it).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn wall_millis() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| {
            d.as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(d.subsec_millis()))
        })
        .unwrap_or(0)
}

fn fresh() -> ([u8; 16], u64) {
    let millis = now_millis();
    let word = next_word(millis);
    let (time, sequence) = (word >> SEQUENCE_BITS, word & ((1 << SEQUENCE_BITS) - 1));
    let high = (time & 0xffff_ffff_ffff) << 16 | 0x7000 | (sequence >> 10);
    let low = (0b10 << 62) | (sequence & 0x3ff) << 52 | (random() >> 12);
    (
        (u128::from(high) << 64 | u128::from(low)).to_be_bytes(),
        millis,
    )
}

/// The id of the `seq`-th event emitted by the `flow`-th flow `node` ran
/// for the event `cause`, the same every time that flow runs (exactly-once
/// delivery: a re-run's events carry the ids of the first run's, so
/// de-duplication drops them). A UUID of version 8 (application-defined):
/// the cause's time in the first 48 bits, as in v7, so ids stay roughly
/// time-ordered, then bits of a BLAKE3 hash of the inputs.
pub(crate) fn derived(cause: &str, node: &str, flow: u32, seq: u32, millis: u64) -> Id {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"happen.derived-id.v2\0");
    hasher.update(cause.as_bytes());
    hasher.update(b"\0");
    hasher.update(node.as_bytes());
    hasher.update(b"\0");
    hasher.update(&flow.to_be_bytes());
    hasher.update(&seq.to_be_bytes());
    let hash = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_bytes()[..16]);
    let mut value = u128::from_be_bytes(bytes);
    // time | version 8 | 12 hash bits | variant 0b10 | 62 hash bits
    let time = u128::from(millis & 0xffff_ffff_ffff) << 80;
    value = time | (value & ((1u128 << 80) - 1));
    value = (value & !(0xf_u128 << 76)) | (0x8_u128 << 76);
    value = (value & !(0b11_u128 << 62)) | (0b10_u128 << 62);
    text_of(&value.to_be_bytes())
}

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

/// The hyphenated lower-case text of a UUID's 16 bytes.
pub(crate) fn text_of(bytes: &[u8; 16]) -> Id {
    // The `uuid` crate writes the digits and knows them to be ASCII, so the
    // text needs no UTF-8 check (this crate allows itself no `unsafe`).
    let mut text = [0u8; 36];
    Id::from(
        &*uuid::Uuid::from_bytes(*bytes)
            .hyphenated()
            .encode_lower(&mut text),
    )
}

/// The hyphenated lower-case text form (8-4-4-4-12) of a UUID's 16 bytes,
/// as ASCII bytes.
pub(crate) fn hyphenated(bytes: &[u8; 16]) -> [u8; 36] {
    let mut text = [b'-'; 36];
    // Where each byte's two digits go; the hyphens stay between the groups.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (byte, at) in bytes.iter().zip(AT) {
        text[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
    text
}

/// Each ASCII byte's value as a lower-case hex digit, or `0xff` (not one).
const HEX_VALUES: [u8; 256] = {
    let mut values = [0xff_u8; 256];
    let mut i = 0;
    while i < 16 {
        values[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    values
};

/// The 16 bytes of `text` if it is a UUID in exactly the form
/// [`text_of`] writes (so that the bytes give back the same text).
///
/// Every event's ids go through here on the wire and into its hash, so it
/// reads the digits through a table with no branch per digit: an invalid
/// digit's `0xff` leaves high bits in `invalid`.
pub(crate) fn bytes_of(text: &str) -> Option<[u8; 16]> {
    let text: &[u8; 36] = text.as_bytes().try_into().ok()?;
    if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
        return None;
    }
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut bytes = [0u8; 16];
    let mut invalid = 0u8;
    for (byte, at) in bytes.iter_mut().zip(AT) {
        let high = HEX_VALUES[usize::from(text[at])];
        let low = HEX_VALUES[usize::from(text[at + 1])];
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (invalid & 0xf0 == 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec audit's attack on the old generator (xorshift64*, output
    /// multiplied by a constant, 52 of its 64 bits in an id): the 4,096
    /// values of the 12 bits an id leaves out each give a candidate state;
    /// one that turns an id into the next one predicts the ids after it.
    /// With a secure generator no candidate links two ids.
    #[test]
    fn an_id_does_not_give_away_the_next_ones() {
        const MUL: u64 = 0x2545_f491_4f6c_dd1d;
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        // The multiplier's inverse modulo 2^64 (Newton's iteration).
        let mut inverse = MUL;
        for _ in 0..6 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(MUL.wrapping_mul(inverse)));
        }
        let random_bits = |bytes: [u8; 16]| (u128::from_be_bytes(bytes) as u64) & ((1 << 52) - 1);
        for _ in 0..20 {
            let (first, second) = (random_bits(fresh().0), random_bits(fresh().0));
            let linked = (0..4096u64).find(|low| {
                let state = ((first << 12) | low).wrapping_mul(inverse);
                step(state).wrapping_mul(MUL) >> 12 == second
            });
            assert_eq!(linked, None, "two ids gave away the generator's state");
        }
    }

    /// The clock every id reads is the system's wall clock, in ms.
    #[test]
    fn the_wall_clock_reads_as_system_time_does() {
        use std::time::{SystemTime, UNIX_EPOCH};
        let system = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        for _ in 0..1000 {
            let before = system();
            let read = wall_millis();
            let after = system();
            assert!(
                before <= read && read <= after,
                "{before} <= {read} <= {after}"
            );
        }
    }

    /// A derived id depends on its inputs only, is a well-formed version 8
    /// UUID, and starts with the cause's time.
    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let cause = "0190b4e2-7c1a-7000-8000-000000000001";
        let at = 1_720_000_000_000;
        let a = derived(cause, "payments", 0, 0, at);
        assert_eq!(a, derived(cause, "payments", 0, 0, at));
        assert_ne!(a, derived(cause, "payments", 0, 1, at));
        assert_ne!(
            a,
            derived(cause, "payments", 1, 0, at),
            "another handler's flow"
        );
        assert_ne!(
            derived(cause, "payments", 1, 0, at),
            derived(cause, "payments", 0, 1, at)
        );
        assert_ne!(a, derived(cause, "billing", 0, 0, at));
        assert_ne!(a, derived("other", "payments", 0, 0, at));
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(
            &a[..13],
            &text_of(&(1_720_000_000_000u128 << 80).to_be_bytes())[..13]
        );
        assert_eq!(bytes_of(&a).map(|b| text_of(&b)), Some(a));
    }

    #[test]
    fn ids_are_version_7_uuids_in_creation_order() {
        let ids: Vec<(Id, u64)> = (0..50_000).map(|_| next()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} !< {}", pair[0].0, pair[1].0);
        }
        for (id, millis) in ids.iter().step_by(997) {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 7);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = uuid.get_timestamp().expect("a time").to_unix();
            let id_millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            // Only a sequence overflow moves the id's time ahead.
            assert!(
                id_millis >= *millis && id_millis <= millis + 1000,
                "{id_millis} vs {millis}"
            );
        }
    }

    #[test]
    fn text_and_bytes_convert_both_ways() {
        let (id, _) = next();
        let bytes = bytes_of(&id).expect("our own ids parse");
        assert_eq!(text_of(&bytes), id);
        for not_canonical in [
            "",
            "n1",
            "0195F3C2-7B1A-7CC0-8A3E-2F4B1C9D0E11",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e1",
            "0195f3c2x7b1a-7cc0-8a3e-2f4b1c9d0e11",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0eé",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d\u{10ffff}",
            "\u{10ffff}5f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e11",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e1g",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e1-",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e1 ",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e1/",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e1:",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e1`",
            "g195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e11",
            "0195f3c2-7b1a-7cc0-8a3e-2f4b1c9d0e11-",
            "0195f3c2-7b1a-7cc0-8a3e2-f4b1c9d0e11",
        ] {
            assert_eq!(bytes_of(not_canonical), None, "{not_canonical}");
        }
    }

    /// Every ASCII character at every position of an id: accepted exactly
    /// where the canonical form has that kind of character, and then read
    /// as the `uuid` crate reads it.
    #[test]
    fn only_the_canonical_text_is_read_as_bytes() {
        let (id, _) = next();
        for at in 0..36 {
            for c in 0u8..128 {
                let mut text = id.as_bytes().to_vec();
                text[at] = c;
                let text = String::from_utf8(text).unwrap();
                let canonical = if matches!(at, 8 | 13 | 18 | 23) {
                    c == b'-'
                } else {
                    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
                };
                match bytes_of(&text) {
                    Some(bytes) => {
                        assert!(canonical, "{text:?} accepted");
                        assert_eq!(uuid::Uuid::parse_str(&text).unwrap().as_bytes(), &bytes);
                    }
                    None => assert!(!canonical, "{text:?} refused"),
                }
            }
        }
    }

    /// Every byte value at every position of the 16 bytes is written as
    /// the `uuid` crate writes it and read back.
    #[test]
    fn every_byte_is_written_and_read_as_the_uuid_crate_does() {
        for at in 0..16 {
            for b in 0..=255u8 {
                let mut bytes = [0x5a_u8; 16];
                bytes[at] = b;
                let text = text_of(&bytes);
                let expected = uuid::Uuid::from_bytes(bytes).hyphenated().to_string();
                assert_eq!(text, expected);
                assert_eq!(bytes_of(&text), Some(bytes), "{text}");
            }
        }
    }

    #[test]
    fn ids_from_many_threads_are_unique() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..20_000).map(|_| next().0).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<Id> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
