//! The linkgate/1 wire format and proofs, with no I/O.
//!
//! Everything here works on byte slices, so unit tests, property tests and fuzzers can drive both
//! halves of the handshake directly; [`crate::Gate`] and [`crate::authenticate`] only move these
//! bytes over a stream. See PROTOCOL.md for the specification.
//!
//! ```text
//! CHALLENGE  server → client   "LGATE/1\n" || server_nonce(32)                         40 bytes
//! RESPONSE   client → server   mode(1) || n(1) || key_id(n) || client_nonce(32) || client_proof(32)
//! VERDICT    server → client   0x00 || server_proof(32)   admitted
//!                              0x01                       denied (wrong proof or unknown key id)
//!                              0x02                       malformed
//! ```

use hmac::Mac;

use crate::error::Malformed;
use crate::keys::{HmacSha256, Key, KeyId, Keyring, is_valid_key_id};

/// The greeting that opens every CHALLENGE.
pub const MAGIC: [u8; 8] = *b"LGATE/1\n";
/// Length of each nonce.
pub const NONCE_LEN: usize = 32;
/// Length of each proof (an HMAC-SHA-256 tag).
pub const PROOF_LEN: usize = 32;
/// Length of the CHALLENGE.
pub const CHALLENGE_LEN: usize = MAGIC.len() + NONCE_LEN;
/// Length of the RESPONSE's fixed header: mode and key id length.
pub const RESPONSE_HEAD_LEN: usize = 2;
/// Longest RESPONSE tail after the head: a 64-byte key id, the nonce and the proof.
pub const MAX_RESPONSE_TAIL_LEN: usize = crate::keys::MAX_KEY_ID_LEN + NONCE_LEN + PROOF_LEN;
/// Length of the admitted VERDICT.
pub const ADMITTED_LEN: usize = 1 + PROOF_LEN;
/// The only mode defined: the stream carries plain application bytes after admission.
pub const MODE_PLAIN: u8 = 0x00;
/// VERDICT byte: admitted, followed by the server's proof.
pub const VERDICT_ADMITTED: u8 = 0x00;
/// VERDICT byte: denied.
pub const VERDICT_DENIED: u8 = 0x01;
/// VERDICT byte: malformed RESPONSE.
pub const VERDICT_MALFORMED: u8 = 0x02;

/// Which handshake a [`crate::Gate`] or a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// linkgate/1: key ids, mutual authentication, verdicts. The default.
    #[default]
    Linkgate1,
    /// The original Python recipe's scheme, for compatibility only: the server sends 32 random
    /// bytes, the client answers `HMAC-SHA-256(K, nonce)`. No key id, no server authentication,
    /// no verdict (a refused client is just closed). See PROTOCOL.md.
    Seed,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "linkgate1" => Ok(Protocol::Linkgate1),
            "seed" => Ok(Protocol::Seed),
            other => Err(format!(
                "unknown protocol {other:?} (use linkgate1 or seed)"
            )),
        }
    }
}

/// The `seed` protocol: the original recipe's challenge-response, without I/O.
pub mod seed {
    use hmac::Mac;

    use super::{NONCE_LEN, Nonce, PROOF_LEN, Proof};
    use crate::keys::{Key, KeyId, Keyring};

    /// Length of the server's random challenge.
    pub const CHALLENGE_LEN: usize = NONCE_LEN;
    /// Length of the client's answer.
    pub const ANSWER_LEN: usize = PROOF_LEN;

    /// The client's answer: `HMAC-SHA-256(K, nonce)`.
    pub fn answer(key: &Key, nonce: &Nonce) -> Proof {
        let mut mac = key.mac();
        mac.update(nonce);
        mac.finalize().into_bytes().into()
    }

    /// The key whose answer this is, checked against every key in constant time each (the same
    /// work whichever key matches, or none). Seed has no key id, so this is how the server still
    /// learns which key connected.
    pub fn judge(answer: &[u8], nonce: &Nonce, keyring: &Keyring) -> Option<KeyId> {
        let mut admitted = None;
        for key in keyring.keys() {
            let mut mac = key.mac();
            mac.update(nonce);
            if mac.verify_slice(answer).is_ok() {
                admitted = Some(key.id().clone());
            }
        }
        admitted
    }
}

const CLIENT_PROOF_LABEL: &[u8] = b"linkgate/1 client proof\0";
const SERVER_PROOF_LABEL: &[u8] = b"linkgate/1 server proof\0";

/// A 32-byte nonce.
pub type Nonce = [u8; NONCE_LEN];
/// A 32-byte proof.
pub type Proof = [u8; PROOF_LEN];

/// The CHALLENGE for `server_nonce`.
pub fn encode_challenge(server_nonce: &Nonce) -> [u8; CHALLENGE_LEN] {
    let mut out = [0u8; CHALLENGE_LEN];
    out[..MAGIC.len()].copy_from_slice(&MAGIC);
    out[MAGIC.len()..].copy_from_slice(server_nonce);
    out
}

/// Checks what a client has received so far against the greeting: `false` as soon as a byte
/// differs, so a client can give up on a non-linkgate server without waiting for 40 bytes.
pub fn greeting_matches_so_far(received: &[u8]) -> bool {
    let n = received.len().min(MAGIC.len());
    received[..n] == MAGIC[..n]
}

/// The server nonce of a complete CHALLENGE, or `None` if the greeting is wrong.
pub fn decode_challenge(challenge: &[u8; CHALLENGE_LEN]) -> Option<Nonce> {
    if challenge[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&challenge[MAGIC.len()..]);
    Some(nonce)
}

/// From the first two RESPONSE bytes, how many bytes remain to be read (`n + 64`).
///
/// The server reads exactly this many more bytes, so application bytes a client sends right
/// after its RESPONSE are left in the stream.
pub fn response_remaining_len(head: [u8; RESPONSE_HEAD_LEN]) -> Result<usize, Malformed> {
    let [mode, n] = head;
    if mode != MODE_PLAIN {
        return Err(Malformed::Mode(mode));
    }
    if n == 0 || usize::from(n) > crate::keys::MAX_KEY_ID_LEN {
        return Err(Malformed::IdLength(n));
    }
    Ok(usize::from(n) + NONCE_LEN + PROOF_LEN)
}

/// A decoded RESPONSE.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// The mode byte (always [`MODE_PLAIN`] once decoded).
    pub mode: u8,
    /// The key id the client claims.
    pub key_id: KeyId,
    /// The client's nonce.
    pub client_nonce: Nonce,
    /// The client's proof.
    pub client_proof: Proof,
}

impl std::fmt::Debug for Response {
    // The proof stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("mode", &self.mode)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// Decodes a whole RESPONSE; `bytes` must be exactly one RESPONSE.
    pub fn decode(bytes: &[u8]) -> Result<Response, Malformed> {
        let (head, rest) = bytes
            .split_first_chunk::<RESPONSE_HEAD_LEN>()
            .ok_or(Malformed::Length)?;
        if rest.len() != response_remaining_len(*head)? {
            return Err(Malformed::Length);
        }
        let (id, rest) = rest.split_at(usize::from(head[1]));
        if !is_valid_key_id(id) {
            return Err(Malformed::IdCharacters);
        }
        let key_id =
            KeyId::new(String::from_utf8_lossy(id)).map_err(|_| Malformed::IdCharacters)?;
        let (client_nonce, client_proof) = rest.split_at(NONCE_LEN);
        Ok(Response {
            mode: head[0],
            key_id,
            client_nonce: client_nonce.try_into().map_err(|_| Malformed::Length)?,
            client_proof: client_proof.try_into().map_err(|_| Malformed::Length)?,
        })
    }

    /// The RESPONSE's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.key_id.as_bytes();
        let mut out = Vec::with_capacity(RESPONSE_HEAD_LEN + id.len() + NONCE_LEN + PROOF_LEN);
        out.push(self.mode);
        // A KeyId is at most 64 bytes, so its length fits in a byte.
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.client_nonce);
        out.extend_from_slice(&self.client_proof);
        out
    }
}

/// The HMAC over one label and the handshake transcript.
fn transcript_mac(
    key: &Key,
    label: &[u8],
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    key_id: &KeyId,
) -> HmacSha256 {
    let id = key_id.as_bytes();
    let mut mac = key.mac();
    mac.update(label);
    mac.update(server_nonce);
    mac.update(client_nonce);
    mac.update(&[MODE_PLAIN, id.len() as u8]);
    mac.update(id);
    mac
}

/// `client_proof = HMAC(K, "linkgate/1 client proof\0" || server_nonce || client_nonce || mode || n || key_id)`.
pub fn client_proof(
    key: &Key,
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    key_id: &KeyId,
) -> Proof {
    transcript_mac(key, CLIENT_PROOF_LABEL, server_nonce, client_nonce, key_id)
        .finalize()
        .into_bytes()
        .into()
}

/// `server_proof = HMAC(K, "linkgate/1 server proof\0" || server_nonce || client_nonce || mode || n || key_id)`.
pub fn server_proof(
    key: &Key,
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    key_id: &KeyId,
) -> Proof {
    transcript_mac(key, SERVER_PROOF_LABEL, server_nonce, client_nonce, key_id)
        .finalize()
        .into_bytes()
        .into()
}

/// The client's RESPONSE to a CHALLENGE, presenting `key` under `key_id`.
pub fn respond(key: &Key, key_id: &KeyId, server_nonce: &Nonce, client_nonce: &Nonce) -> Response {
    Response {
        mode: MODE_PLAIN,
        key_id: key_id.clone(),
        client_nonce: *client_nonce,
        client_proof: client_proof(key, server_nonce, client_nonce, key_id),
    }
}

/// The server's judgement of a RESPONSE. Its `Debug` leaves out the server proof.
#[derive(Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The client proved the key registered for `key_id`; send `verdict` and pass the stream on.
    Admitted {
        /// The authenticated key id.
        key_id: KeyId,
        /// The VERDICT to send: `0x00 || server_proof`.
        verdict: [u8; ADMITTED_LEN],
    },
    /// No key under this id; the client is sent [`VERDICT_DENIED`].
    UnknownKeyId(KeyId),
    /// Wrong proof for a known id; the client is sent [`VERDICT_DENIED`].
    WrongProof(KeyId),
    /// Not a valid RESPONSE; the client is sent [`VERDICT_MALFORMED`].
    Malformed(Malformed),
}

impl std::fmt::Debug for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Judgement::Admitted { key_id, .. } => f
                .debug_struct("Admitted")
                .field("key_id", key_id)
                .finish_non_exhaustive(),
            Judgement::UnknownKeyId(id) => f.debug_tuple("UnknownKeyId").field(id).finish(),
            Judgement::WrongProof(id) => f.debug_tuple("WrongProof").field(id).finish(),
            Judgement::Malformed(m) => f.debug_tuple("Malformed").field(m).finish(),
        }
    }
}

impl Judgement {
    /// The VERDICT bytes to send to the client.
    pub fn verdict(&self) -> &[u8] {
        match self {
            Judgement::Admitted { verdict, .. } => verdict,
            Judgement::UnknownKeyId(_) | Judgement::WrongProof(_) => &[VERDICT_DENIED],
            Judgement::Malformed(_) => &[VERDICT_MALFORMED],
        }
    }
}

/// Judges a complete RESPONSE against the keyring.
///
/// An unknown id is checked against `dummy_key` so that it costs the same HMAC work as a wrong
/// proof: the two are indistinguishable to the client in bytes and in timing. The proof is
/// compared only through `hmac`'s constant-time `verify_slice`.
pub fn judge(
    response: &[u8],
    server_nonce: &Nonce,
    keyring: &Keyring,
    dummy_key: &Key,
) -> Judgement {
    let response = match Response::decode(response) {
        Ok(response) => response,
        Err(malformed) => return Judgement::Malformed(malformed),
    };
    let known = keyring.get(response.key_id.as_str());
    let key = known.unwrap_or(dummy_key);
    let proof_ok = transcript_mac(
        key,
        CLIENT_PROOF_LABEL,
        server_nonce,
        &response.client_nonce,
        &response.key_id,
    )
    .verify_slice(&response.client_proof)
    .is_ok();
    match (known, proof_ok) {
        (Some(key), true) => {
            let mut verdict = [VERDICT_ADMITTED; ADMITTED_LEN];
            verdict[1..].copy_from_slice(&server_proof(
                key,
                server_nonce,
                &response.client_nonce,
                &response.key_id,
            ));
            Judgement::Admitted {
                key_id: response.key_id,
                verdict,
            }
        }
        (Some(_), false) => Judgement::WrongProof(response.key_id),
        (None, _) => Judgement::UnknownKeyId(response.key_id),
    }
}

/// Checks the server's proof in constant time (`hmac`'s `verify_slice`).
pub fn verify_server_proof(
    key: &Key,
    key_id: &KeyId,
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    proof: &[u8],
) -> bool {
    transcript_mac(key, SERVER_PROOF_LABEL, server_nonce, client_nonce, key_id)
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(start: u8) -> [u8; 32] {
        std::array::from_fn(|i| start + i as u8)
    }

    fn vector_key() -> Key {
        Key::new(KeyId::new("alice").unwrap(), &seq(0x00)).unwrap()
    }

    /// The test vector published in PROTOCOL.md.
    #[test]
    fn protocol_md_test_vector() {
        let key = vector_key();
        let id = key.id().clone();
        let (sn, cn) = (seq(0xa0), seq(0xc0));
        assert_eq!(
            hex::encode(client_proof(&key, &sn, &cn, &id)),
            "bed3e3ecfa58491b058867989079da57f9746b3f285205156a73b27541d531fb"
        );
        assert_eq!(
            hex::encode(server_proof(&key, &sn, &cn, &id)),
            "14cdae2966d718ebc280da829f85883ea98aaf6e9f0c06df11065f399d99a830"
        );
        let response = respond(&key, &id, &sn, &cn).encode();
        assert_eq!(&response[..7], b"\x00\x05alice");
        assert_eq!(response.len(), 2 + 5 + 32 + 32);
    }

    /// The proofs are plain HMAC-SHA-256 over the documented transcript, computed here from
    /// scratch with `hmac` so the labels and field order are checked independently.
    #[test]
    fn proofs_match_the_documented_transcript() {
        let key = vector_key();
        let id = key.id().clone();
        let (sn, cn) = (seq(0xa0), seq(0xc0));
        let mut transcript = b"linkgate/1 client proof\0".to_vec();
        transcript.extend_from_slice(&sn);
        transcript.extend_from_slice(&cn);
        transcript.extend_from_slice(b"\x00\x05alice");
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&seq(0)).unwrap();
        mac.update(&transcript);
        assert_eq!(
            mac.finalize().into_bytes()[..],
            client_proof(&key, &sn, &cn, &id)
        );
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
        assert_eq!(response_remaining_len([0, 0]), Err(Malformed::IdLength(0)));
        assert_eq!(
            response_remaining_len([0, 65]),
            Err(Malformed::IdLength(65))
        );
        assert_eq!(response_remaining_len([1, 5]), Err(Malformed::Mode(1)));
        assert_eq!(
            response_remaining_len([0xff, 5]),
            Err(Malformed::Mode(0xff))
        );
    }

    fn ring_with(key: &Key) -> Keyring {
        let mut ring = Keyring::new();
        ring.insert(key.clone());
        ring
    }

    #[test]
    fn judge_admits_denies_and_refuses() {
        let key = vector_key();
        let ring = ring_with(&key);
        let dummy = Key::generate(KeyId::new("dummy").unwrap()).unwrap();
        let (sn, cn) = (seq(0xa0), seq(0xc0));
        let id = key.id().clone();

        let good = respond(&key, &id, &sn, &cn);
        let judged = judge(&good.encode(), &sn, &ring, &dummy);
        let Judgement::Admitted { key_id, verdict } = &judged else {
            panic!("expected admission, got {judged:?}");
        };
        assert_eq!(key_id, &id);
        assert_eq!(verdict[0], VERDICT_ADMITTED);
        assert!(verify_server_proof(&key, &id, &sn, &cn, &verdict[1..]));

        // The same response against another server nonce (a replay) is a wrong proof.
        let replayed = judge(&good.encode(), &seq(0x10), &ring, &dummy);
        assert_eq!(replayed, Judgement::WrongProof(id.clone()));
        assert_eq!(replayed.verdict(), &[VERDICT_DENIED]);

        let mut flipped = good.encode();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            judge(&flipped, &sn, &ring, &dummy),
            Judgement::WrongProof(id.clone())
        );

        let bob = KeyId::new("bob").unwrap();
        let unknown = respond(&key, &bob, &sn, &cn).encode();
        let judged = judge(&unknown, &sn, &ring, &dummy);
        assert_eq!(judged, Judgement::UnknownKeyId(bob));
        assert_eq!(judged.verdict(), &[VERDICT_DENIED]);

        let mut bad_chars = good.encode();
        bad_chars[3] = b'/';
        let judged = judge(&bad_chars, &sn, &ring, &dummy);
        assert_eq!(judged, Judgement::Malformed(Malformed::IdCharacters));
        assert_eq!(judged.verdict(), &[VERDICT_MALFORMED]);

        let short = &good.encode()[..50];
        assert_eq!(
            judge(short, &sn, &ring, &dummy),
            Judgement::Malformed(Malformed::Length)
        );
    }

    #[test]
    fn seed_answer_is_plain_hmac_of_the_nonce() {
        // What the recipe computes: hmac.new(b"secret", nonce, "sha256").digest()
        let key = Key::new_short(KeyId::new("recipe").unwrap(), b"secret").unwrap();
        let nonce = seq(0xa0);
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(b"secret").unwrap();
        mac.update(&nonce);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(seed::answer(&key, &nonce), expected);

        let mut ring = Keyring::new();
        ring.insert(key.clone());
        ring.insert(Key::generate(KeyId::new("other").unwrap()).unwrap());
        assert_eq!(
            seed::judge(&expected, &nonce, &ring),
            Some(key.id().clone())
        );
        assert_eq!(
            seed::judge(&expected, &seq(0x10), &ring),
            None,
            "another nonce"
        );
        assert_eq!(
            seed::judge(&expected[..31], &nonce, &ring),
            None,
            "short answer"
        );
    }

    #[test]
    fn debug_hides_proofs() {
        let key = vector_key();
        let (sn, cn) = (seq(0xa0), seq(0xc0));
        let response = respond(&key, key.id(), &sn, &cn);
        let shown = format!("{response:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("client_proof"));

        let mut ring = Keyring::new();
        ring.insert(key.clone());
        let dummy = Key::generate(KeyId::new("dummy").unwrap()).unwrap();
        let judged = judge(&response.encode(), &sn, &ring, &dummy);
        let shown = format!("{judged:?}");
        assert!(
            shown.starts_with("Admitted") && shown.contains("alice"),
            "{shown}"
        );
        // Neither the field nor the proof's bytes, in any of Debug's usual spellings.
        let proof = server_proof(&key, &sn, &cn, key.id());
        let as_list = format!("{:?}", &proof[..4]);
        let as_list = as_list.trim_end_matches(']');
        assert!(
            !shown.contains("verdict") && !shown.contains(as_list),
            "{shown}"
        );
        assert!(!shown.contains(&hex::encode(proof)), "{shown}");
    }

    #[test]
    fn hex_line_is_the_key_and_a_newline() {
        assert_eq!(
            vector_key().to_hex_line().as_str(),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
        );
    }
}
