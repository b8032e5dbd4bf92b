//! A received zero buffer whose field names point into one run of bytes
//! (distinct names, none a dotted prefix of another) made the check for
//! clashing names sort names with long shared prefixes: quadratic in the
//! buffer's size (a review measured 668 ms for 775 KB). A writer stores
//! each name once, so such a buffer is refused before any sort.

use happen::zero::{ZeroEvent, ZeroWriter};

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

/// `n` fields whose names all point into one run of `a`s, of lengths 1..=n.
fn overlapping(n: usize) -> Vec<u8> {
    let long = "a".repeat(n);
    let mut writer = ZeroWriter::new("x");
    writer.u8(&long, 0);
    for i in 1..n {
        writer.u8(&format!("f{i}"), 0);
    }
    let mut bytes = writer.finish("s").unwrap().as_bytes().to_vec();
    let (directory, count) = (u32_at(&bytes, 80), u32_at(&bytes, 84));
    let (table, len) = (u32_at(&bytes, 88), u32_at(&bytes, 92));
    assert_eq!(count, n);
    let at = bytes[table..table + len]
        .windows(n)
        .position(|w| w.iter().all(|c| *c == b'a'))
        .unwrap();
    for i in 0..n {
        let entry = directory + i * 16;
        bytes[entry..entry + 4].copy_from_slice(&(at as u32).to_le_bytes());
        bytes[entry + 4..entry + 8].copy_from_slice(&((i + 1) as u32).to_le_bytes());
    }
    bytes
}

#[test]
fn names_that_overlap_in_the_string_table_are_refused() {
    for n in [17, 4096] {
        let error = ZeroEvent::from_bytes(&overlapping(n)).unwrap_err();
        assert!(error.to_string().contains("overlap"), "{n} fields: {error}");
    }
    // The same buffer as written reads.
    let mut writer = ZeroWriter::new("x");
    for i in 0..32 {
        writer.u8(&format!("f{i}"), 0);
    }
    let bytes = writer.finish("s").unwrap().as_bytes().to_vec();
    ZeroEvent::from_bytes(&bytes).unwrap();
}
