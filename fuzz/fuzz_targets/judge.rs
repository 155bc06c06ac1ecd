//! The server's half of the handshake: arbitrary bytes as a RESPONSE.
//!
//! - `protocol::response_remaining_len` on the first two bytes and `protocol::Response::decode`
//!   on the whole input never panic; a RESPONSE that decodes re-encodes to exactly the input, and
//!   its length agrees with `response_remaining_len`.
//! - `protocol::judge` against a fixed keyring (with every mode allowed) never panics, never
//!   fails (it may only fail when the system's randomness does), and never admits: the keys are
//!   not in the input, so no proof can verify. Each refusal is the one the decoded RESPONSE
//!   calls for, with the matching VERDICT byte, and a stricter policy refuses exactly the modes
//!   it should.
//! - A control that keeps the admitting path covered: for a RESPONSE that decodes, an honest
//!   client with the same key id, mode and client nonce (and the key registered for that id) is
//!   admitted, `ClientHello::finish` accepts the server's VERDICT, and in the sealed modes both
//!   sides hold the same traffic secrets (what one seals, the other opens).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linkgate::protocol::{
    self, ClientHello, EphemeralSecret, Judgement, MAX_RESPONSE_TAIL_LEN, ModePolicy, Nonce,
    RESPONSE_HEAD_LEN, Response, VERDICT_DENIED, VERDICT_MALFORMED,
};
use linkgate::record::{Opened, Opener, Sealer, TrafficSecret};
use linkgate::{Key, KeyId, Keyring, Mode, Refusal};

const SERVER_NONCE: Nonce = [0x5a; 32];
/// Ids in the keyring: a short one, a typical one and one of the longest allowed length. The
/// seeds in `seeds/judge` use them so that the wrong-proof path is reached from the start.
const IDS: [&str; 3] = [
    "a",
    "alice",
    "k-0123456789.abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWX",
];

struct Fixture {
    keyring: Keyring,
    dummy: Key,
    lenient: ModePolicy,
    strict: ModePolicy,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut keyring = Keyring::new();
        for (i, id) in IDS.into_iter().enumerate() {
            let id = KeyId::new(id).expect("a valid key id");
            let secret = [0xa0 + i as u8; 32];
            keyring.insert(Key::new(id, &secret).expect("a 32-byte key"));
        }
        Fixture {
            keyring,
            dummy: Key::new(KeyId::new("dummy").expect("valid id"), &[0xdd; 32]).expect("key"),
            // Plain and tunnels allowed: every mode reaches the proof check.
            lenient: ModePolicy::new(true, false).with_multiplexing_allowed(true),
            // Plain and tunnels refused, forward secrecy required: only mode 0x02 gets past
            // the policy.
            strict: ModePolicy::new(false, true),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();

    let remaining = data
        .first_chunk::<RESPONSE_HEAD_LEN>()
        .map(|head| protocol::response_remaining_len(*head));
    if let Some(Ok(n)) = remaining {
        // n + 32 + 32, plus 32 in mode 0x02, with 1 <= n <= 64.
        assert!((65..=MAX_RESPONSE_TAIL_LEN).contains(&n), "remaining {n}");
    }

    let decoded = Response::decode(data);
    if let Ok(response) = &decoded {
        assert_eq!(response.encode(), data, "decode/encode round trip");
        assert_eq!(
            remaining.and_then(Result::ok),
            Some(data.len() - RESPONSE_HEAD_LEN),
            "a decoded RESPONSE has the length its head announces"
        );
        assert_eq!(
            response.mode.has_forward_secrecy(),
            response.client_share.is_some()
        );
    } else if let Some(Ok(n)) = remaining {
        // The head was fine, so either the length or the id's characters are wrong.
        assert!(
            data.len() != RESPONSE_HEAD_LEN + n
                || matches!(decoded, Err(linkgate::Malformed::IdCharacters)),
            "{decoded:?}"
        );
    }

    let judged = protocol::judge(
        data,
        &SERVER_NONCE,
        &f.keyring,
        &f.dummy,
        &f.lenient,
        EphemeralSecret::generate,
    )
    .expect("judge fails only when the system's randomness does");
    check_refusal(f, &decoded, &judged, false);

    let judged_strictly = protocol::judge(
        data,
        &SERVER_NONCE,
        &f.keyring,
        &f.dummy,
        &f.strict,
        EphemeralSecret::generate,
    )
    .expect("judge fails only when the system's randomness does");
    check_refusal(f, &decoded, &judged_strictly, true);

    if let Ok(response) = decoded {
        honest_client_is_admitted(&response);
    }
});

/// The judgement must be the refusal the RESPONSE calls for, never an admission.
fn check_refusal(
    f: &Fixture,
    decoded: &Result<Response, linkgate::Malformed>,
    judged: &Judgement,
    strict: bool,
) {
    let refusal = match judged {
        Judgement::Admitted(admitted) => {
            panic!("admitted without the key: {admitted:?} (strict policy: {strict})")
        }
        Judgement::Refused(refusal) => refusal,
        other => panic!("a new kind of judgement: {other:?}"),
    };
    let verdict = match (decoded, refusal) {
        (Err(malformed), Refusal::Malformed(got)) => {
            assert_eq!(malformed, got);
            VERDICT_MALFORMED
        }
        (Ok(response), Refusal::ModeNotAllowed { mode, .. }) => {
            assert!(strict, "the lenient policy refused {mode}");
            assert_eq!(*mode, response.mode);
            assert_ne!(*mode, Mode::SealedFs, "the strict policy allows sealed-fs");
            VERDICT_MALFORMED
        }
        (Ok(response), Refusal::WrongProof(id)) => {
            assert!(!strict || response.mode == Mode::SealedFs);
            assert_eq!(id, &response.key_id);
            assert!(f.keyring.get(id.as_str()).is_some(), "{id} is not known");
            VERDICT_DENIED
        }
        (Ok(response), Refusal::UnknownKeyId(id)) => {
            assert!(!strict || response.mode == Mode::SealedFs);
            assert_eq!(id, &response.key_id);
            assert!(f.keyring.get(id.as_str()).is_none(), "{id} is known");
            VERDICT_DENIED
        }
        // Refusal::KeyExchange can only come after a verified proof.
        (decoded, refusal) => panic!("{refusal:?} for {decoded:?} (strict policy: {strict})"),
    };
    assert_eq!(judged.verdict(), [verdict]);
}

/// The admitting path, from fuzzer-chosen id, mode and nonce: an honest client is admitted and
/// both sides agree on the session.
fn honest_client_is_admitted(response: &Response) {
    const SECRET: [u8; 32] = [0x3c; 32];
    let key = Key::new(response.key_id.clone(), &SECRET).expect("a 32-byte key");
    let mut keyring = Keyring::new();
    keyring.insert(key.clone());
    // Deterministic X25519 secrets from input bytes, so a crash reproduces.
    let client_secret = ephemeral(&response.client_proof);
    let server_secret = response.client_share.map(|share| *share.as_bytes());
    let hello = ClientHello::new(
        &key,
        &response.key_id,
        response.mode,
        &SERVER_NONCE,
        response.client_nonce,
        response.mode.has_forward_secrecy().then_some(client_secret),
    )
    .expect("ClientHello::new with a given ephemeral secret");
    let wire = hello.response().encode();
    assert_eq!(Response::decode(&wire).as_ref(), Ok(hello.response()));
    let policy = ModePolicy::new(true, false).with_multiplexing_allowed(true);
    let judged = protocol::judge(
        &wire,
        &SERVER_NONCE,
        &keyring,
        &fixture().dummy,
        &policy,
        || Ok(ephemeral(&server_secret.unwrap_or([0x77; 32]))),
    )
    .expect("judge with a given ephemeral secret");
    let Judgement::Admitted(admitted) = judged else {
        panic!("an honest client was refused: {judged:?}");
    };
    assert_eq!(admitted.key_id(), &response.key_id);
    assert_eq!(admitted.mode(), response.mode);
    assert_eq!(admitted.verdict().len(), hello.admitted_verdict_len());
    let session = hello
        .finish(admitted.verdict())
        .expect("the client accepts an honest server's VERDICT");
    assert_eq!(session.mode(), response.mode);
    match (session.secrets(), admitted.secrets()) {
        (None, None) => assert_eq!(response.mode, Mode::Plain),
        (Some(client), Some(server)) => {
            assert!(response.mode.is_sealed());
            same_secret(client.client_to_server(), server.client_to_server());
            same_secret(server.server_to_client(), client.server_to_client());
        }
        (client, server) => panic!("secrets on one side only: {client:?} / {server:?}"),
    }
}

fn ephemeral(bytes: &[u8; 32]) -> EphemeralSecret {
    EphemeralSecret::from_bytes(bytes).expect("any 32 bytes are an X25519 secret")
}

/// `TrafficSecret` has no equality (it is a secret): compare by sealing with one and opening
/// with the other.
fn same_secret(sealing: &TrafficSecret, opening: &TrafficSecret) {
    let mut wire = Vec::new();
    Sealer::new(sealing).seal(b"ping", &mut wire).expect("seal");
    let opened = Opener::new(opening)
        .open_in_place(&mut wire)
        .expect("the peer opens what was sealed under the same secret");
    assert_eq!(opened, Opened::Data(5..9));
    assert_eq!(&wire[5..9], b"ping");
}
