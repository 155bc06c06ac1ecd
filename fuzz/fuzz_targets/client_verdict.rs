//! The client's half of the handshake: arbitrary bytes as a CHALLENGE and as a VERDICT.
//!
//! - `protocol::greeting_matches_so_far` and `protocol::decode_challenge` on the input never
//!   panic and agree with the greeting `LGATE/1\n`: a complete CHALLENGE decodes exactly when its
//!   first 8 bytes are the greeting, and `encode_challenge` gives the same 40 bytes back.
//! - The first byte chooses the mode (plain, sealed, sealed-fs); a `ClientHello` for a fixed key,
//!   id and nonces is built and the rest of the input is its VERDICT. `ClientHello::finish`
//!   never panics and never succeeds: an admission needs the server's proof, which takes the key.
//!   The error is the one the VERDICT's first byte calls for (closed early, denied, refused as
//!   malformed in our mode, a malformed verdict byte, or an impostor server for `0x00`).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linkgate::protocol::{
    self, ADMITTED_FS_LEN, ADMITTED_LEN, CHALLENGE_LEN, ClientHello, EphemeralSecret, MAGIC, Nonce,
    Response, VERDICT_ADMITTED, VERDICT_DENIED, VERDICT_MALFORMED,
};
use linkgate::{Error, Key, KeyId, Mode, Rejection};

const SERVER_NONCE: Nonce = [0x5a; 32];
const CLIENT_NONCE: Nonce = [0xc1; 32];
const CLIENT_EPHEMERAL: [u8; 32] = [0xe5; 32];

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        Key::new(KeyId::new("alice").expect("valid id"), &[0xa1; 32]).expect("a 32-byte key")
    })
}

fuzz_target!(|data: &[u8]| {
    check_challenge(data);

    let Some((&selector, verdict)) = data.split_first() else {
        return;
    };
    let mode = Mode::ALL[usize::from(selector) % Mode::ALL.len()];
    let key = key();
    let ephemeral = mode.has_forward_secrecy().then(|| {
        EphemeralSecret::from_bytes(&CLIENT_EPHEMERAL).expect("an X25519 secret from 32 bytes")
    });
    let hello = ClientHello::new(key, key.id(), mode, &SERVER_NONCE, CLIENT_NONCE, ephemeral)
        .expect("ClientHello::new with a given ephemeral secret");
    let expected_len = if mode.has_forward_secrecy() {
        ADMITTED_FS_LEN
    } else {
        ADMITTED_LEN
    };
    assert_eq!(hello.admitted_verdict_len(), expected_len);
    assert_eq!(
        Response::decode(&hello.response().encode()).as_ref(),
        Ok(hello.response())
    );

    let result = hello.finish(verdict);
    let err = match result {
        Ok(session) => panic!(
            "FINDING: an arbitrary VERDICT admitted the client: mode {mode}, verdict {verdict:02x?}, \
             session {session:?}"
        ),
        Err(err) => err,
    };
    let expected = match verdict.first() {
        None => matches!(err, Error::ClosedEarly),
        Some(&VERDICT_DENIED) => matches!(err, Error::Rejected(Rejection::Denied)),
        Some(&VERDICT_MALFORMED) => {
            matches!(err, Error::Rejected(Rejection::RefusedAsMalformed(m)) if m == mode)
        }
        // The server's proof is checked before anything else of an admission.
        Some(&VERDICT_ADMITTED) => matches!(err, Error::Rejected(Rejection::ImpostorServer)),
        Some(&other) => {
            matches!(err, Error::Rejected(Rejection::MalformedVerdict(b)) if b == other)
        }
    };
    assert!(expected, "mode {mode}, verdict {verdict:02x?}: {err:?}");
});

fn check_challenge(data: &[u8]) {
    // Whatever prefix a client has received, the answer is a plain prefix comparison, and once
    // a byte differs it stays `false`.
    let mut matched = true;
    for end in 0..=data.len().min(MAGIC.len() + 1) {
        let so_far = &data[..end];
        let n = end.min(MAGIC.len());
        let now = protocol::greeting_matches_so_far(so_far);
        assert_eq!(now, so_far[..n] == MAGIC[..n], "{so_far:02x?}");
        assert!(
            matched || !now,
            "matched again after a mismatch: {so_far:02x?}"
        );
        matched = now;
    }
    assert_eq!(
        protocol::greeting_matches_so_far(data),
        data.iter().zip(MAGIC).all(|(a, b)| *a == b)
    );

    if let Some(challenge) = data.first_chunk::<CHALLENGE_LEN>() {
        match protocol::decode_challenge(challenge) {
            Some(nonce) => {
                assert!(challenge.starts_with(&MAGIC));
                assert_eq!(nonce[..], challenge[MAGIC.len()..]);
                assert_eq!(&protocol::encode_challenge(&nonce), challenge);
            }
            None => assert!(!challenge.starts_with(&MAGIC)),
        }
        assert_eq!(
            protocol::decode_challenge(challenge).is_some(),
            protocol::greeting_matches_so_far(challenge)
        );
    }
}
