//! Key file contents: arbitrary bytes into `Key::decode(id, bytes, allow_short)`, both ways.
//!
//! - Never panics. An `Ok` key has 16..=64 bytes (1..=64 with `allow_short`); an error is a
//!   key-file problem (`NotAKey`) or a length out of range.
//! - The two settings agree: a key accepted strictly is accepted with `allow_short` (same
//!   bytes), and a key of 16 bytes or more accepted with `allow_short` is accepted strictly.
//! - A small model of the formats: input that is not text is a raw key exactly when it has
//!   32..=64 bytes, and then the key is those bytes; one line of hex with an even number of
//!   digits is that hex; anything with inner whitespace, or blank, is not a key.
//! - `Key::to_hex_line` of an accepted key decodes back to the same key.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linkgate::{Error, Key, KeyError, KeyFileProblem, KeyId, MAX_KEY_LEN, MIN_KEY_LEN};

fn id() -> &'static KeyId {
    static ID: OnceLock<KeyId> = OnceLock::new();
    ID.get_or_init(|| KeyId::new("fuzz").expect("a valid key id"))
}

/// What the key's bytes are, as lowercase hex (the key's own bytes are not public).
fn hex_of(key: &Key) -> String {
    let line = key.to_hex_line();
    let hex = line
        .strip_suffix('\n')
        .expect("a hex line ends with a newline");
    assert_eq!(hex.len(), 2 * key.byte_len());
    assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    hex.to_owned()
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let strict = Key::decode(id().clone(), data, false);
    let short = Key::decode(id().clone(), data, true);

    for (result, min) in [(&strict, MIN_KEY_LEN), (&short, 1)] {
        match result {
            Ok(key) => {
                assert!(
                    (min..=MAX_KEY_LEN).contains(&key.byte_len()),
                    "{}",
                    key.byte_len()
                );
                assert_eq!(key.id(), id());
                assert_eq!(key.is_short(), key.byte_len() < MIN_KEY_LEN);
                // The hex line is itself a key file with the same key.
                let again = Key::decode(id().clone(), key.to_hex_line().as_bytes(), min == 1)
                    .expect("a key's own hex line decodes");
                assert_eq!(hex_of(&again), hex_of(key));
            }
            Err(Error::Key(KeyError::Length(len))) => {
                assert_eq!(min, MIN_KEY_LEN, "the strict error for a short-key decode");
                assert!(
                    !(min..=MAX_KEY_LEN).contains(len),
                    "refused a length of {len}"
                );
            }
            Err(Error::Key(KeyError::SeedLength(len))) => {
                assert_eq!(min, 1, "the seed error for a strict decode");
                assert!(
                    !(min..=MAX_KEY_LEN).contains(len),
                    "refused a length of {len}"
                );
            }
            Err(Error::Key(KeyError::Contents {
                problem: KeyFileProblem::NotAKey | KeyFileProblem::MistypedHex(_),
            })) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }

    match (&strict, &short) {
        (Ok(a), Ok(b)) => assert_eq!(hex_of(a), hex_of(b)),
        (Ok(a), Err(err)) => panic!(
            "{} bytes strictly, but with allow_short: {err}",
            a.byte_len()
        ),
        (Err(err), Ok(b)) => assert!(
            b.is_short(),
            "{} bytes refused strictly: {err}",
            b.byte_len()
        ),
        (Err(_), Err(_)) => {}
    }

    // The model.
    let decoded = short.as_ref().ok().map(hex_of);
    let is_text = data
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if !is_text {
        let raw = (32..=MAX_KEY_LEN).contains(&data.len());
        assert_eq!(decoded, raw.then(|| lower_hex(data)), "raw key");
        return;
    }
    let text = data.trim_ascii();
    if text.is_empty() || text.iter().any(u8::is_ascii_whitespace) {
        assert_eq!(decoded, None, "blank or several words");
        return;
    }
    if text.len().is_multiple_of(2) && text.iter().all(u8::is_ascii_hexdigit) {
        let expected = (text.len() / 2 <= MAX_KEY_LEN).then(|| text.to_ascii_lowercase());
        let expected = expected.map(|hex| String::from_utf8(hex).expect("ASCII"));
        assert_eq!(decoded, expected, "hex key");
    } else if let Some(key) = &decoded {
        // Base64: four characters give at most three bytes.
        assert!(
            key.len() / 2 <= text.len() * 3 / 4 + 2,
            "base64 key too long"
        );
    }
});
