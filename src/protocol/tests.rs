use super::*;
use crate::record::{Opened, Opener, Sealer};
use seed::SeedDigest;

fn seq(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start + i as u8)
}

fn vector_key() -> Key {
    Key::new(KeyId::new("alice").unwrap(), &seq(0x00)).unwrap()
}

/// The shared vectors (tests/vectors/linkgate1.json, computed independently by
/// tests/vectors/generate.py with Python's hmac and the `cryptography` package).
fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../../tests/vectors/linkgate1.json")).unwrap()
}

fn hex_of(value: &serde_json::Value, field: &str) -> Vec<u8> {
    hex::decode(
        value[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field}")),
    )
    .unwrap()
}

fn keyring_with(key: &Key) -> Keyring {
    let mut ring = Keyring::new();
    ring.insert(key.clone());
    ring
}

/// Runs both halves of the handshake with the vectors' inputs and checks every published value;
/// returns both sides' secrets.
fn run_vector(
    mode: Mode,
    name: &str,
) -> (
    serde_json::Value,
    Option<SessionSecrets>,
    Option<SessionSecrets>,
) {
    let all = vectors();
    let v = all[name].clone();
    let key = vector_key();
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    assert_eq!(
        hex::encode(encode_challenge(&sn)),
        all["challenge"].as_str().unwrap()
    );

    let client_secret = mode
        .has_forward_secrecy()
        .then(|| EphemeralSecret::from_bytes(&seq(0x40)).unwrap());
    let hello = ClientHello::new(&key, key.id(), mode, &sn, cn, client_secret).unwrap();
    let response = hello.response().encode();
    assert_eq!(response, hex_of(&v, "response"), "{name} response");
    assert_eq!(
        hello.response().client_proof.to_vec(),
        hex_of(&v, "client_proof")
    );
    if mode.has_forward_secrecy() {
        let share = hello.response().client_share.unwrap();
        assert_eq!(share.as_bytes().to_vec(), hex_of(&v, "client_share"));
    }

    let dummy = Key::generate(KeyId::new("dummy").unwrap()).unwrap();
    let judged = judge(
        &response,
        &sn,
        &keyring_with(&key),
        &dummy,
        &ModePolicy::new(true, false).with_multiplexing_allowed(true),
        || EphemeralSecret::from_bytes(&seq(0x60)),
    )
    .unwrap();
    let Judgement::Admitted(admitted) = judged else {
        panic!("{name}: {judged:?}")
    };
    assert_eq!(
        admitted.verdict().to_vec(),
        hex_of(&v, "verdict"),
        "{name} verdict"
    );
    let verdict = admitted.verdict().to_vec();
    let (_, server_mode, server_secrets) = admitted.into_parts();
    assert_eq!(server_mode, mode);
    let session = hello.finish(&verdict).unwrap();
    assert_eq!(session.mode(), mode);
    (v, session.into_secrets(), server_secrets)
}

#[test]
fn mode_0x00_vector_is_unchanged() {
    let (v, client, server) = run_vector(Mode::Plain, "mode_0x00_plain");
    assert!(client.is_none() && server.is_none());
    // The values PROTOCOL.md has published since the first release.
    assert_eq!(
        v["client_proof"],
        "bed3e3ecfa58491b058867989079da57f9746b3f285205156a73b27541d531fb"
    );
    let key = vector_key();
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    assert_eq!(
        client_proof(&key, &sn, &cn, key.id()).to_vec(),
        hex_of(&v, "client_proof")
    );
    assert_eq!(
        server_proof(&key, &sn, &cn, key.id()).to_vec(),
        hex_of(&v, "server_proof")
    );
}

/// The secrets, keys, IVs and records of a sealed mode, against the vectors.
fn check_sealed_vectors(v: &serde_json::Value, client: &SessionSecrets, server: &SessionSecrets) {
    for secrets in [client, server] {
        assert_eq!(secrets.c2s.bytes().to_vec(), hex_of(v, "c2s_secret"));
        assert_eq!(secrets.s2c.bytes().to_vec(), hex_of(v, "s2c_secret"));
    }
    let (key, iv) = client.c2s.key_and_iv();
    assert_eq!(key.to_vec(), hex_of(v, "c2s_key"));
    assert_eq!(iv.to_vec(), hex_of(v, "c2s_iv"));
    let (s2c_key, s2c_iv) = client.s2c.key_and_iv();
    assert_eq!(s2c_key.to_vec(), hex_of(v, "s2c_key"));
    assert_eq!(s2c_iv.to_vec(), hex_of(v, "s2c_iv"));
    assert_eq!(
        client.s2c.next().bytes().to_vec(),
        hex_of(v, "s2c_next_secret")
    );

    // c2s: "hello" at seq 0, close_notify at seq 1.
    let mut sealer = Sealer::new(&client.c2s);
    let mut wire = Vec::new();
    sealer.seal(b"hello", &mut wire).unwrap();
    assert_eq!(wire, hex_of(v, "c2s_record_hello_seq0"));
    let mut close = Vec::new();
    sealer.seal_close_notify(&mut close).unwrap();
    assert_eq!(close, hex_of(v, "c2s_record_close_notify_seq1"));

    // s2c: KeyUpdate at seq 0, then "world" under the next secret.
    let mut sealer = Sealer::new(&server.s2c);
    let mut update = Vec::new();
    sealer.seal_key_update(&mut update).unwrap();
    assert_eq!(update, hex_of(v, "s2c_record_key_update_seq0"));
    let mut world = Vec::new();
    sealer.seal(b"world", &mut world).unwrap();
    assert_eq!(world, hex_of(v, "s2c_record_world_after_update_seq0"));

    // And the other side opens them.
    let mut opener = Opener::new(&server.c2s);
    assert_eq!(opener.open_in_place(&mut wire), Ok(Opened::Data(5..10)));
    assert_eq!(&wire[5..10], b"hello");
    assert_eq!(opener.open_in_place(&mut close), Ok(Opened::CloseNotify));
    let mut opener = Opener::new(&client.s2c);
    assert_eq!(opener.open_in_place(&mut update), Ok(Opened::KeyUpdate));
    assert_eq!(opener.open_in_place(&mut world), Ok(Opened::Data(5..10)));
    assert_eq!(&world[5..10], b"world");
}

/// PRK, computed here straight from the hkdf crate as the specification states it.
fn prk_of(v: &serde_json::Value, extra_ikm: &[u8]) -> Vec<u8> {
    let mut salt = seq(0xa0).to_vec();
    salt.extend_from_slice(&seq(0xc0));
    let mut ikm = seq(0x00).to_vec();
    ikm.extend_from_slice(extra_ikm);
    let (prk, _) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(&salt), &ikm);
    assert_eq!(prk.to_vec(), hex_of(v, "prk"));
    prk.to_vec()
}

#[test]
fn mode_0x01_vectors() {
    let (v, client, server) = run_vector(Mode::Sealed, "mode_0x01_sealed");
    prk_of(&v, &[]);
    check_sealed_vectors(&v, &client.unwrap(), &server.unwrap());
}

#[test]
fn mode_0x02_vectors() {
    let (v, client, server) = run_vector(Mode::SealedFs, "mode_0x02_sealed_fs");
    let client_secret = EphemeralSecret::from_bytes(&seq(0x40)).unwrap();
    let server_secret = EphemeralSecret::from_bytes(&seq(0x60)).unwrap();
    assert_eq!(
        server_secret.public_key().as_bytes().to_vec(),
        hex_of(&v, "server_share")
    );
    let shared = client_secret.agree(&server_secret.public_key()).unwrap();
    assert_eq!(shared.to_vec(), hex_of(&v, "shared_secret"));
    prk_of(&v, &shared[..]);
    check_sealed_vectors(&v, &client.unwrap(), &server.unwrap());
}

/// The multiplexed bit changes the mode byte, so the proofs and every key differ from those of
/// the sealed mode underneath; a tunnel's first record is the HTTP/2 preface.
fn check_mux_vectors(mode: Mode, section: &str, underneath: &str) {
    let (v, client, server) = run_vector(mode, section);
    let sealed = &vectors()[underneath];
    assert_ne!(hex_of(&v, "client_proof"), hex_of(sealed, "client_proof"));
    assert_ne!(hex_of(&v, "c2s_secret"), hex_of(sealed, "c2s_secret"));
    // The mode enters through the context, not the PRK.
    assert_eq!(hex_of(&v, "prk"), hex_of(sealed, "prk"));
    let (client, server) = (client.unwrap(), server.unwrap());
    check_sealed_vectors(&v, &client, &server);
    let mut wire = Vec::new();
    Sealer::new(&client.c2s)
        .seal(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut wire)
        .unwrap();
    assert_eq!(wire, hex_of(&v, "c2s_record_h2_preface_seq0"));
}

#[test]
fn mode_0x11_vectors() {
    check_mux_vectors(Mode::SealedMux, "mode_0x11_sealed_mux", "mode_0x01_sealed");
}

#[test]
fn mode_0x12_vectors() {
    check_mux_vectors(
        Mode::SealedFsMux,
        "mode_0x12_sealed_fs_mux",
        "mode_0x02_sealed_fs",
    );
}

/// The proofs are plain HMAC-SHA-256 over the documented transcript, computed here from
/// scratch with `hmac` so the labels and field order are checked independently.
#[test]
fn proofs_match_the_documented_transcript() {
    let key = vector_key();
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    for mode in [Mode::Plain, Mode::Sealed] {
        let mut transcript = b"linkgate/1 client proof\0".to_vec();
        transcript.extend_from_slice(&sn);
        transcript.extend_from_slice(&cn);
        transcript.extend_from_slice(&[mode.wire_byte(), 5]);
        transcript.extend_from_slice(b"alice");
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&seq(0)).unwrap();
        mac.update(&transcript);
        let hello = ClientHello::new(&key, key.id(), mode, &sn, cn, None).unwrap();
        assert_eq!(
            mac.finalize().into_bytes()[..],
            hello.response().client_proof
        );
    }
}

#[test]
fn challenge_round_trip() {
    let nonce = seq(7);
    let challenge = encode_challenge(&nonce);
    assert_eq!(
        &challenge[..8],
        &[0x4c, 0x47, 0x41, 0x54, 0x45, 0x2f, 0x31, 0x0a]
    );
    assert_eq!(decode_challenge(&challenge), Some(nonce));
    let mut bad = challenge;
    bad[0] = b'X';
    assert_eq!(decode_challenge(&bad), None);
    assert!(greeting_matches_so_far(b"LGA"));
    assert!(greeting_matches_so_far(&challenge));
    assert!(!greeting_matches_so_far(b"SSH-2.0"));
}

#[test]
fn head_rules() {
    assert_eq!(response_remaining_len([0, 1]), Ok(65));
    assert_eq!(response_remaining_len([0, 64]), Ok(128));
    assert_eq!(response_remaining_len([1, 5]), Ok(69));
    assert_eq!(
        response_remaining_len([2, 5]),
        Ok(101),
        "mode 2 carries e_C"
    );
    assert_eq!(response_remaining_len([0, 0]), Err(Malformed::IdLength(0)));
    assert_eq!(
        response_remaining_len([0, 65]),
        Err(Malformed::IdLength(65))
    );
    for reserved in [3u8, 0x10, 0x80, 0xff] {
        assert_eq!(
            response_remaining_len([reserved, 5]),
            Err(Malformed::Mode(reserved))
        );
    }
}

fn judge_default(response: &[u8], sn: &Nonce, ring: &Keyring, policy: ModePolicy) -> Judgement {
    let dummy = Key::generate(KeyId::new("dummy").unwrap()).unwrap();
    judge(
        response,
        sn,
        ring,
        &dummy,
        &policy,
        EphemeralSecret::generate,
    )
    .unwrap()
}

#[test]
fn judge_admits_denies_and_refuses() {
    let key = vector_key();
    let ring = keyring_with(&key);
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    let id = key.id().clone();
    let policy = ModePolicy::default();

    let good = ClientHello::new(&key, &id, Mode::Sealed, &sn, cn, None).unwrap();
    let judged = judge_default(&good.response().encode(), &sn, &ring, policy);
    let Judgement::Admitted(admitted) = &judged else {
        panic!("expected admission, got {judged:?}");
    };
    assert_eq!(admitted.key_id(), &id);
    assert_eq!(admitted.verdict()[0], VERDICT_ADMITTED);

    // The same response against another server nonce (a replay) is a wrong proof.
    let replayed = judge_default(&good.response().encode(), &seq(0x10), &ring, policy);
    assert!(matches!(&replayed, Judgement::Refused(Refusal::WrongProof(i)) if *i == id));
    assert_eq!(replayed.verdict(), &[VERDICT_DENIED]);

    let mut flipped = good.response().encode();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(
        judge_default(&flipped, &sn, &ring, policy),
        Judgement::Refused(Refusal::WrongProof(_))
    ));

    let bob = KeyId::new("bob").unwrap();
    let unknown = ClientHello::new(&key, &bob, Mode::Sealed, &sn, cn, None).unwrap();
    let judged = judge_default(&unknown.response().encode(), &sn, &ring, policy);
    assert!(matches!(&judged, Judgement::Refused(Refusal::UnknownKeyId(i)) if *i == bob));
    assert_eq!(judged.verdict(), &[VERDICT_DENIED]);

    let mut bad_chars = good.response().encode();
    bad_chars[3] = b'/';
    let judged = judge_default(&bad_chars, &sn, &ring, policy);
    assert!(matches!(
        judged,
        Judgement::Refused(Refusal::Malformed(Malformed::IdCharacters))
    ));
    assert_eq!(judged.verdict(), &[VERDICT_MALFORMED]);

    let short = &good.response().encode()[..50];
    assert!(matches!(
        judge_default(short, &sn, &ring, policy),
        Judgement::Refused(Refusal::Malformed(Malformed::Length))
    ));
}

#[test]
fn policy_refuses_modes_with_the_malformed_verdict() {
    let key = vector_key();
    let ring = keyring_with(&key);
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    let response = |mode| {
        ClientHello::new(&key, key.id(), mode, &sn, cn, None)
            .unwrap()
            .response()
            .encode()
    };
    let default = ModePolicy::default();
    let judged = judge_default(&response(Mode::Plain), &sn, &ring, default);
    assert!(
        matches!(
            &judged,
            Judgement::Refused(Refusal::ModeNotAllowed {
                mode: Mode::Plain,
                ..
            })
        ),
        "{judged:?}"
    );
    assert_eq!(judged.verdict(), &[VERDICT_MALFORMED]);
    let strict = ModePolicy::new(false, true);
    assert!(matches!(
        judge_default(&response(Mode::Sealed), &sn, &ring, strict),
        Judgement::Refused(Refusal::ModeNotAllowed {
            mode: Mode::Sealed,
            ..
        })
    ));
    assert!(matches!(
        judge_default(&response(Mode::SealedFs), &sn, &ring, strict),
        Judgement::Admitted(_)
    ));
    assert!(matches!(
        judge_default(
            &response(Mode::Plain),
            &sn,
            &ring,
            ModePolicy::new(true, false)
        ),
        Judgement::Admitted(_)
    ));
}

#[test]
fn multiplexed_modes_need_the_policy_and_follow_the_mode_underneath() {
    let key = vector_key();
    let ring = keyring_with(&key);
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    let response = |mode: Mode| {
        let share = mode
            .has_forward_secrecy()
            .then(|| EphemeralSecret::from_bytes(&seq(0x40)).unwrap());
        ClientHello::new(&key, key.id(), mode, &sn, cn, share)
            .unwrap()
            .response()
            .encode()
    };
    let refused = |judged: Judgement, mode: Mode| matches!(judged, Judgement::Refused(Refusal::ModeNotAllowed { mode: m, .. }) if m == mode);
    for mode in [Mode::SealedMux, Mode::SealedFsMux] {
        // Off by default, even where every other mode is allowed.
        let everything_else = ModePolicy::new(true, false);
        assert!(refused(
            judge_default(&response(mode), &sn, &ring, everything_else),
            mode
        ));
        let allowed = everything_else.with_multiplexing_allowed(true);
        assert!(matches!(
            judge_default(&response(mode), &sn, &ring, allowed),
            Judgement::Admitted(_)
        ));
    }
    // Requiring forward secrecy refuses sealed underneath a tunnel too.
    let strict = ModePolicy::new(false, true).with_multiplexing_allowed(true);
    assert!(refused(
        judge_default(&response(Mode::SealedMux), &sn, &ring, strict),
        Mode::SealedMux
    ));
    assert!(matches!(
        judge_default(&response(Mode::SealedFsMux), &sn, &ring, strict),
        Judgement::Admitted(_)
    ));
}

#[test]
fn a_rewritten_mode_byte_breaks_both_proofs() {
    // A relay turns the client's sealed-fs request into plain: the proof no longer matches, so
    // the gate denies; and the client would refuse a plain verdict anyway.
    let key = vector_key();
    let ring = keyring_with(&key);
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    let hello = ClientHello::new(&key, key.id(), Mode::Sealed, &sn, cn, None).unwrap();
    let mut downgraded = hello.response().encode();
    downgraded[0] = Mode::Plain.wire_byte();
    assert!(matches!(
        judge_default(&downgraded, &sn, &ring, ModePolicy::new(true, false)),
        Judgement::Refused(Refusal::WrongProof(_))
    ));
    // A plain-mode verdict (a valid proof for mode 0x00) is no proof for the client's mode.
    let plain_verdict = {
        let mut v = vec![VERDICT_ADMITTED];
        v.extend_from_slice(&server_proof(&key, &sn, &cn, key.id()));
        v
    };
    assert!(matches!(
        hello.finish(&plain_verdict),
        Err(Error::Rejected(Rejection::ImpostorServer))
    ));
}

#[test]
fn a_low_order_client_share_aborts_after_the_proof() {
    // A client that holds the key but sends the all-zero point gets `malformed`, never keys.
    let key = vector_key();
    let ring = keyring_with(&key);
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    let transcript = Transcript {
        server_nonce: &sn,
        client_nonce: &cn,
        mode: Mode::SealedFs,
        key_id: key.id(),
    };
    let zero = PublicKey::from([0u8; 32]);
    let response = Response {
        mode: Mode::SealedFs,
        key_id: key.id().clone(),
        client_nonce: cn,
        client_share: Some(zero),
        client_proof: proof_of(transcript.client_mac(&key, Some(&zero))),
    };
    let judged = judge_default(&response.encode(), &sn, &ring, ModePolicy::default());
    assert!(
        matches!(judged, Judgement::Refused(Refusal::KeyExchange)),
        "{judged:?}"
    );
    assert_eq!(judged.verdict(), &[VERDICT_MALFORMED]);
}

#[test]
fn verdicts_the_client_refuses() {
    let key = vector_key();
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    let hello = || ClientHello::new(&key, key.id(), Mode::SealedFs, &sn, cn, None).unwrap();
    assert!(matches!(
        hello().finish(&[VERDICT_DENIED]),
        Err(Error::Rejected(Rejection::Denied))
    ));
    assert!(matches!(
        hello().finish(&[VERDICT_MALFORMED]),
        Err(Error::Rejected(Rejection::RefusedAsMalformed(
            Mode::SealedFs
        )))
    ));
    assert!(matches!(
        hello().finish(&[0x07]),
        Err(Error::Rejected(Rejection::MalformedVerdict(7)))
    ));
    assert!(
        matches!(
            hello().finish(&[VERDICT_ADMITTED; 33]),
            Err(Error::Rejected(Rejection::ImpostorServer))
        ),
        "a 33-byte admission is short in mode 0x02"
    );
    assert!(matches!(
        hello().finish(&[VERDICT_ADMITTED; ADMITTED_FS_LEN]),
        Err(Error::Rejected(Rejection::ImpostorServer))
    ));
    assert!(matches!(hello().finish(&[]), Err(Error::ClosedEarly)));
}

#[test]
fn seed_answer_is_plain_hmac_of_the_nonce() {
    // What the recipe computes, from Python's hmac module with the nonce a0 a1 .. bf:
    // hmac.new(b"secret", nonce, "sha256").digest() and hmac.new(b"secret", nonce).digest()
    // (MD5, the published recipe's default before Python 3.8).
    let cases = [
        (
            SeedDigest::Sha256,
            "65836ff26a540958b8d97806aefe0c821cf930a7d5229d6062cc78801dd72daa",
        ),
        (SeedDigest::Md5, "90f1ce69e8dbe0d41699df53796cdfe3"),
    ];
    let key = Key::new_short(KeyId::new("recipe").unwrap(), b"secret").unwrap();
    let nonce = seq(0xa0);
    let mut ring = Keyring::new();
    ring.insert(key.clone());
    ring.insert(Key::generate(KeyId::new("other").unwrap()).unwrap());
    for (digest, expected) in cases {
        let expected = hex::decode(expected).unwrap();
        assert_eq!(digest.answer_len(), expected.len());
        assert_eq!(
            seed::answer(digest, &key, &nonce).as_ref(),
            expected,
            "{digest:?}"
        );
        assert_eq!(
            seed::judge(digest, &expected, &nonce, &ring),
            Some(key.id().clone()),
            "{digest:?}"
        );
        assert_eq!(
            seed::judge(digest, &expected, &seq(0x10), &ring),
            None,
            "{digest:?}: another nonce"
        );
        assert_eq!(
            seed::judge(digest, &expected[..expected.len() - 1], &nonce, &ring),
            None,
            "{digest:?}: short answer"
        );
    }
    // The other digest's answer is refused.
    let sha = seed::answer(SeedDigest::Sha256, &key, &nonce);
    assert_eq!(
        seed::judge(SeedDigest::Md5, &sha.as_ref()[..16], &nonce, &ring),
        None
    );
    assert_eq!(
        format!("{sha:?}"),
        "SeedAnswer(32 bytes)",
        "Debug shows no answer bytes"
    );
}

#[test]
fn debug_hides_proofs_and_secrets() {
    let key = vector_key();
    let (sn, cn) = (seq(0xa0), seq(0xc0));
    let hello = ClientHello::new(&key, key.id(), Mode::Sealed, &sn, cn, None).unwrap();
    let shown = format!("{:?} {:?}", hello, hello.response());
    assert!(shown.contains("alice"));
    assert!(!shown.contains("client_proof"), "{shown}");
    let proof_hex = hex::encode(hello.response().client_proof);
    assert!(!shown.contains(&proof_hex[..8]), "{shown}");

    let judged = judge_default(
        &hello.response().encode(),
        &sn,
        &keyring_with(&key),
        ModePolicy::default(),
    );
    let shown = format!("{judged:?}");
    assert!(
        shown.contains("Admitted") && shown.contains("alice"),
        "{shown}"
    );
    assert!(
        !shown.contains("verdict") && !shown.contains("secrets"),
        "{shown}"
    );
    let Judgement::Admitted(admitted) = judged else {
        unreachable!()
    };
    let shown = format!("{:?}", admitted.secrets().unwrap());
    assert_eq!(shown, "SessionSecrets(..)");
}

#[test]
fn hex_line_is_the_key_and_a_newline() {
    assert_eq!(
        vector_key().to_hex_line().as_str(),
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    );
}

/// Every value PROTOCOL.md prints under "Test vectors" is one the JSON file holds (exactly, or
/// as the end of a RESPONSE), so the document cannot drift from the vectors the tests check.
#[test]
fn protocol_md_prints_the_vectors_of_the_json_file() {
    fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let all_hex = |token: &str| token.bytes().all(|b| b.is_ascii_hexdigit());
    // 24 digits: an iv, the shortest value printed.
    let is_value = |token: &str| token.len() >= 24 && all_hex(token);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"))
        .expect("PROTOCOL.md");
    let section = doc
        .split("\n## Test vectors\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Test vectors section");
    // (value, whether it is part of a RESPONSE line)
    let mut printed: Vec<(String, bool)> = Vec::new();
    let (mut continues, mut in_response) = (false, false);
    for line in section.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(' ') {
            in_response = tokens.first() == Some(&"RESPONSE");
        }
        match tokens.as_slice() {
            // A long value wrapped onto the next line, indented.
            [only] if continues && line.starts_with(' ') && all_hex(only) => {
                printed.last_mut().expect("a value before").0.push_str(only);
            }
            _ => printed.extend(
                tokens
                    .iter()
                    .filter(|t| is_value(t))
                    .map(|t| (t.to_string(), in_response)),
            ),
        }
        continues = tokens.last().is_some_and(|t| is_value(t));
    }
    let mut known = Vec::new();
    strings(&vectors(), &mut known);
    assert!(printed.len() >= 40, "only {} values found", printed.len());
    for (value, in_response) in &printed {
        let found = if *in_response {
            known.iter().any(|k| k.ends_with(value.as_str()))
        } else {
            known.contains(value)
        };
        assert!(
            found,
            "PROTOCOL.md prints {value}, which tests/vectors/linkgate1.json does not hold"
        );
    }
}
