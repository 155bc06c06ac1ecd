//! The linkgate/1 wire format, proofs and key schedule, with no I/O.
//!
//! Everything here works on byte slices, so unit tests, property tests and fuzzers can drive both
//! halves of the handshake directly; [`crate::Gate`] and [`crate::authenticate`] only move these
//! bytes over a stream. See PROTOCOL.md for the specification.
//!
//! ```text
//! CHALLENGE  server → client   "LGATE/1\n" || server_nonce(32)                              40 bytes
//! RESPONSE   client → server   mode(1) || n(1) || key_id(n) || client_nonce(32) [|| e_C(32)] || client_proof(32)
//! VERDICT    server → client   0x00 [|| e_S(32)] || server_proof(32)   admitted
//!                              0x01                                    denied (wrong proof or unknown key id)
//!                              0x02                                    malformed (or a mode the gate refuses)
//! ```
//!
//! The bracketed X25519 public keys appear in mode `0x02` (sealed with forward secrecy) only.
//!
//! ```
//! use linkgate::protocol::{self, ClientHello, Judgement, ModePolicy};
//! use linkgate::{Key, KeyId, Keyring, Mode};
//!
//! let key = Key::generate(KeyId::new("alice")?)?;
//! let mut keyring = Keyring::new();
//! keyring.insert(key.clone());
//! let dummy = Key::generate(KeyId::new("dummy")?)?;
//! let (server_nonce, client_nonce) = ([1u8; 32], [2u8; 32]);
//!
//! let hello = ClientHello::new(&key, key.id(), Mode::Sealed, &server_nonce, client_nonce, None)?;
//! let judged = protocol::judge(&hello.response().encode(), &server_nonce, &keyring, &dummy,
//!     &ModePolicy::default(), protocol::EphemeralSecret::generate)?;
//! let Judgement::Admitted(admitted) = judged else { panic!("{judged:?}") };
//! let client_session = hello.finish(admitted.verdict())?;
//! assert_eq!(admitted.key_id().as_str(), "alice");
//! assert!(client_session.secrets().is_some());
//! # Ok::<_, linkgate::Error>(())
//! ```

pub mod seed;

mod exchange;
mod schedule;

use hmac::Mac;
use zeroize::Zeroizing;

pub use exchange::{EphemeralSecret, PUBLIC_KEY_LEN, PublicKey};
pub use schedule::SessionSecrets;

use crate::error::{Error, Malformed, Refusal, Rejection};
use crate::keys::{HmacSha256, Key, KeyId, Keyring, MAX_KEY_ID_LEN, is_valid_key_id};
use crate::mode::Mode;

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
/// Longest RESPONSE tail after the head: a 64-byte key id, the nonce, a public key and the proof.
pub const MAX_RESPONSE_TAIL_LEN: usize = MAX_KEY_ID_LEN + NONCE_LEN + PUBLIC_KEY_LEN + PROOF_LEN;
/// Length of the admitted VERDICT in modes `0x00` and `0x01`.
pub const ADMITTED_LEN: usize = 1 + PROOF_LEN;
/// Length of the admitted VERDICT in mode `0x02` (it carries the server's public key).
pub const ADMITTED_FS_LEN: usize = 1 + PUBLIC_KEY_LEN + PROOF_LEN;
/// VERDICT byte: admitted, followed by the server's proof.
pub const VERDICT_ADMITTED: u8 = 0x00;
/// VERDICT byte: denied.
pub const VERDICT_DENIED: u8 = 0x01;
/// VERDICT byte: malformed RESPONSE, or a mode the gate refuses.
pub const VERDICT_MALFORMED: u8 = 0x02;

const CLIENT_PROOF_LABEL: &[u8] = b"linkgate/1 client proof\0";
const SERVER_PROOF_LABEL: &[u8] = b"linkgate/1 server proof\0";

/// A 32-byte nonce.
pub type Nonce = [u8; NONCE_LEN];
/// A 32-byte proof.
pub type Proof = [u8; PROOF_LEN];

/// Which handshake a [`crate::Gate`] or a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// linkgate/1: key ids, mutual authentication, verdicts, sealed modes. The default.
    #[default]
    Linkgate1,
    /// The original Python recipe's scheme, for compatibility only: the server sends 32 random
    /// bytes, the client answers `HMAC-SHA-256(K, nonce)`. No key id, no server authentication,
    /// no verdict (a refused client is just closed), and plain mode only. See PROTOCOL.md.
    Seed,
    /// [`Protocol::Seed`] with HMAC-MD5 (a 16-byte answer): the recipe exactly as published,
    /// whose `hmac.new(key, msg)` defaulted to MD5 until Python 3.8.
    SeedMd5,
}

impl Protocol {
    /// The recipe's HMAC for the seed protocols; `None` for linkgate/1.
    pub fn seed_digest(self) -> Option<seed::SeedDigest> {
        match self {
            Self::Linkgate1 => None,
            Self::Seed => Some(seed::SeedDigest::Sha256),
            Self::SeedMd5 => Some(seed::SeedDigest::Md5),
        }
    }

    /// True for the seed protocols (the original recipe's scheme, either digest).
    pub fn is_seed(self) -> bool {
        self.seed_digest().is_some()
    }

    /// The name `FromStr` takes: `linkgate1`, `seed` or `seed-md5`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linkgate1 => "linkgate1",
            Self::Seed => "seed",
            Self::SeedMd5 => "seed-md5",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "linkgate1" => Ok(Self::Linkgate1),
            "seed" => Ok(Self::Seed),
            "seed-md5" => Ok(Self::SeedMd5),
            other => Err(format!(
                "unknown protocol {other:?} (use linkgate1, seed or seed-md5)"
            )),
        }
    }
}

/// Which modes a gate admits (see [`crate::GateConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ModePolicy {
    /// Admit [`Mode::Plain`] (default: no).
    pub plain_allowed: bool,
    /// Refuse [`Mode::Sealed`] and [`Mode::SealedMux`], admitting only the modes with forward
    /// secrecy among the sealed ones (default: no).
    pub forward_secrecy_required: bool,
    /// Admit the multiplexed modes ([`Mode::SealedMux`], [`Mode::SealedFsMux`]) when the sealed
    /// mode underneath is admitted (default: no; only a server that runs [`crate::mux`] on the
    /// admitted stream should say yes).
    pub multiplexing_allowed: bool,
}

impl ModePolicy {
    /// A policy with the given settings.
    pub fn new(plain_allowed: bool, forward_secrecy_required: bool) -> Self {
        Self {
            plain_allowed,
            forward_secrecy_required,
            multiplexing_allowed: false,
        }
    }

    /// The same policy, with the multiplexed modes admitted or not.
    pub fn with_multiplexing_allowed(mut self, allowed: bool) -> Self {
        self.multiplexing_allowed = allowed;
        self
    }

    /// `Ok` if `mode` is admitted, else the name of the setting that refuses it.
    pub fn check(&self, mode: Mode) -> Result<(), &'static str> {
        match mode {
            Mode::Plain if !self.plain_allowed => {
                Err("plain mode is not allowed (the gate needs --allow-plain)")
            }
            _ if mode.is_sealed()
                && !mode.has_forward_secrecy()
                && self.forward_secrecy_required =>
            {
                Err("forward secrecy is required (--require-forward-secrecy)")
            }
            _ if mode.is_multiplexed() && !self.multiplexing_allowed => {
                Err("multiplexed tunnels are not allowed (the gate has --no-mux)")
            }
            _ => Ok(()),
        }
    }
}

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
    let (magic, nonce) = challenge.split_first_chunk::<8>()?;
    (magic == &MAGIC).then(|| nonce.try_into().ok()).flatten()
}

/// From the first two RESPONSE bytes, how many bytes remain to be read: `n + 64`, or `n + 96`
/// in mode `0x02`.
///
/// The server reads exactly this many more bytes, so application bytes a client sends right
/// after its RESPONSE are left in the stream.
pub fn response_remaining_len(head: [u8; RESPONSE_HEAD_LEN]) -> Result<usize, Malformed> {
    let [mode, n] = head;
    let mode = Mode::from_wire_byte(mode).ok_or(Malformed::Mode(mode))?;
    if n == 0 || usize::from(n) > MAX_KEY_ID_LEN {
        return Err(Malformed::IdLength(n));
    }
    let share = if mode.has_forward_secrecy() {
        PUBLIC_KEY_LEN
    } else {
        0
    };
    Ok(usize::from(n) + NONCE_LEN + share + PROOF_LEN)
}

/// A decoded RESPONSE.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The mode the client asks for.
    pub mode: Mode,
    /// The key id the client claims.
    pub key_id: KeyId,
    /// The client's nonce.
    pub client_nonce: Nonce,
    /// The client's X25519 public key (mode `0x02` only).
    pub client_share: Option<PublicKey>,
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
    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        let (head, rest) = bytes
            .split_first_chunk::<RESPONSE_HEAD_LEN>()
            .ok_or(Malformed::Length)?;
        if rest.len() != response_remaining_len(*head)? {
            return Err(Malformed::Length);
        }
        // response_remaining_len accepted the mode byte.
        let mode = Mode::from_wire_byte(head[0]).ok_or(Malformed::Mode(head[0]))?;
        let (id, rest) = rest.split_at(usize::from(head[1]));
        if !is_valid_key_id(id) {
            return Err(Malformed::IdCharacters);
        }
        let key_id =
            KeyId::new(String::from_utf8_lossy(id)).map_err(|_| Malformed::IdCharacters)?;
        let (client_nonce, rest) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(Malformed::Length)?;
        let (client_share, rest) = if mode.has_forward_secrecy() {
            let (share, rest) = rest
                .split_first_chunk::<PUBLIC_KEY_LEN>()
                .ok_or(Malformed::Length)?;
            (Some(PublicKey::from(*share)), rest)
        } else {
            (None, rest)
        };
        Ok(Self {
            mode,
            key_id,
            client_nonce: *client_nonce,
            client_share,
            client_proof: rest.try_into().map_err(|_| Malformed::Length)?,
        })
    }

    /// The RESPONSE's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.key_id.as_bytes();
        let mut out = Vec::with_capacity(RESPONSE_HEAD_LEN + MAX_RESPONSE_TAIL_LEN);
        out.push(self.mode.wire_byte());
        // A KeyId is at most 64 bytes, so its length fits in a byte.
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.client_nonce);
        if let Some(share) = &self.client_share {
            out.extend_from_slice(share.as_bytes());
        }
        out.extend_from_slice(&self.client_proof);
        out
    }
}

/// The handshake transcript both proofs and the key schedule cover:
/// `t = server_nonce || client_nonce || mode || n || key_id`, plus the public keys in mode `0x02`.
#[derive(Clone, Copy)]
pub(crate) struct Transcript<'a> {
    pub(crate) server_nonce: &'a Nonce,
    pub(crate) client_nonce: &'a Nonce,
    pub(crate) mode: Mode,
    pub(crate) key_id: &'a KeyId,
}

impl Transcript<'_> {
    /// `mode || n || key_id`: the part of `t` after the nonces.
    fn feed_context(&self, mac: &mut HmacSha256) {
        let id = self.key_id.as_bytes();
        mac.update(&[self.mode.wire_byte(), id.len() as u8]);
        mac.update(id);
    }

    fn mac(&self, key: &Key, label: &[u8]) -> HmacSha256 {
        let mut mac = key.mac();
        mac.update(label);
        mac.update(self.server_nonce);
        mac.update(self.client_nonce);
        self.feed_context(&mut mac);
        mac
    }

    /// `HMAC(K, "linkgate/1 client proof\0" || t [|| e_C])`.
    fn client_mac(&self, key: &Key, client_share: Option<&PublicKey>) -> HmacSha256 {
        let mut mac = self.mac(key, CLIENT_PROOF_LABEL);
        if let Some(share) = client_share {
            mac.update(share.as_bytes());
        }
        mac
    }

    /// `HMAC(K, "linkgate/1 server proof\0" || t [|| e_C || e_S])`.
    fn server_mac(&self, key: &Key, shares: Option<(&PublicKey, &PublicKey)>) -> HmacSha256 {
        let mut mac = self.mac(key, SERVER_PROOF_LABEL);
        if let Some((client, server)) = shares {
            mac.update(client.as_bytes());
            mac.update(server.as_bytes());
        }
        mac
    }
}

/// `client_proof` for the plain-mode transcript (mode `0x00`), as in PROTOCOL.md's first vector.
pub fn client_proof(
    key: &Key,
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    key_id: &KeyId,
) -> Proof {
    proof_of(
        Transcript {
            server_nonce,
            client_nonce,
            mode: Mode::Plain,
            key_id,
        }
        .client_mac(key, None),
    )
}

/// `server_proof` for the plain-mode transcript (mode `0x00`).
pub fn server_proof(
    key: &Key,
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    key_id: &KeyId,
) -> Proof {
    proof_of(
        Transcript {
            server_nonce,
            client_nonce,
            mode: Mode::Plain,
            key_id,
        }
        .server_mac(key, None),
    )
}

fn proof_of(mac: HmacSha256) -> Proof {
    mac.finalize().into_bytes().into()
}

/// The client's half of a handshake, between sending its RESPONSE and reading the VERDICT.
///
/// Its `Debug` shows the mode and id only.
pub struct ClientHello {
    key: Key,
    key_id: KeyId,
    mode: Mode,
    server_nonce: Nonce,
    response: Response,
    ephemeral: Option<EphemeralSecret>,
}

impl std::fmt::Debug for ClientHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHello")
            .field("mode", &self.mode)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ClientHello {
    /// Prepares the RESPONSE to a CHALLENGE, presenting `key` under `key_id` and asking for
    /// `mode`. In [`Mode::SealedFs`], `ephemeral` is the client's X25519 secret (a fresh one is
    /// generated when `None`; pass one only for test vectors).
    pub fn new(
        key: &Key,
        key_id: &KeyId,
        mode: Mode,
        server_nonce: &Nonce,
        client_nonce: Nonce,
        ephemeral: Option<EphemeralSecret>,
    ) -> Result<Self, Error> {
        let ephemeral = match (mode.has_forward_secrecy(), ephemeral) {
            (false, _) => None,
            (true, Some(secret)) => Some(secret),
            (true, None) => Some(EphemeralSecret::generate()?),
        };
        let client_share = ephemeral.as_ref().map(EphemeralSecret::public_key);
        let transcript = Transcript {
            server_nonce,
            client_nonce: &client_nonce,
            mode,
            key_id,
        };
        let client_proof = proof_of(transcript.client_mac(key, client_share.as_ref()));
        Ok(Self {
            key: key.clone(),
            key_id: key_id.clone(),
            mode,
            server_nonce: *server_nonce,
            response: Response {
                mode,
                key_id: key_id.clone(),
                client_nonce,
                client_share,
                client_proof,
            },
            ephemeral,
        })
    }

    /// The RESPONSE to send.
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// How many bytes an admitting VERDICT has in this mode.
    pub fn admitted_verdict_len(&self) -> usize {
        if self.mode.has_forward_secrecy() {
            ADMITTED_FS_LEN
        } else {
            ADMITTED_LEN
        }
    }

    /// Checks a complete VERDICT: a refusal becomes the matching [`Rejection`], an admission
    /// must carry a valid server proof (else [`Rejection::ImpostorServer`]). On success returns
    /// the session: its mode and, in the sealed modes, its traffic secrets.
    pub fn finish(self, verdict: &[u8]) -> Result<ClientSession, Error> {
        let Some((&first, rest)) = verdict.split_first() else {
            return Err(Error::ClosedEarly);
        };
        match first {
            VERDICT_ADMITTED => {}
            VERDICT_DENIED => return Err(Rejection::Denied.into()),
            VERDICT_MALFORMED => return Err(Rejection::RefusedAsMalformed(self.mode).into()),
            other => return Err(Rejection::MalformedVerdict(other).into()),
        }
        if verdict.len() != self.admitted_verdict_len() {
            // An admission cut short of its proof is no better than a wrong one.
            return Err(Rejection::ImpostorServer.into());
        }
        let transcript = Transcript {
            server_nonce: &self.server_nonce,
            client_nonce: &self.response.client_nonce,
            mode: self.mode,
            key_id: &self.key_id,
        };
        let (server_share, server_proof) = match self.mode {
            mode if mode.has_forward_secrecy() => {
                let (share, proof) = rest
                    .split_first_chunk::<PUBLIC_KEY_LEN>()
                    .ok_or(Rejection::ImpostorServer)?;
                (Some(PublicKey::from(*share)), proof)
            }
            _ => (None, rest),
        };
        let shares = self
            .response
            .client_share
            .as_ref()
            .zip(server_share.as_ref());
        if transcript
            .server_mac(&self.key, shares)
            .verify_slice(server_proof)
            .is_err()
        {
            return Err(Rejection::ImpostorServer.into());
        }
        // Keys only after the server's proof verifies.
        let secrets = match (self.mode, &self.ephemeral, shares) {
            (Mode::Plain, _, _) => None,
            (mode, Some(secret), Some((client, server))) if mode.has_forward_secrecy() => {
                let shared = secret.agree(server).map_err(|()| Rejection::KeyExchange)?;
                Some(SessionSecrets::derive(
                    &self.key,
                    &transcript,
                    Some((&shared, client, server)),
                ))
            }
            (mode, _, _) if mode.has_forward_secrecy() => {
                return Err(Rejection::KeyExchange.into());
            }
            _ => Some(SessionSecrets::derive(&self.key, &transcript, None)),
        };
        Ok(ClientSession {
            mode: self.mode,
            secrets,
        })
    }
}

/// An admitted client's session: the mode and, when sealed, the traffic secrets.
#[derive(Debug)]
pub struct ClientSession {
    mode: Mode,
    secrets: Option<SessionSecrets>,
}

impl ClientSession {
    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The traffic secrets of a sealed session.
    pub fn secrets(&self) -> Option<&SessionSecrets> {
        self.secrets.as_ref()
    }

    pub(crate) fn into_secrets(self) -> Option<SessionSecrets> {
        self.secrets
    }
}

/// The server's judgement of a RESPONSE. Its `Debug` leaves out proofs and secrets.
#[derive(Debug)]
#[non_exhaustive]
pub enum Judgement {
    /// The client proved the key registered for its key id and asked for an allowed mode.
    Admitted(Box<Admitted>),
    /// Refused; send [`Judgement::verdict`] and say why in the log.
    Refused(Refusal),
}

impl Judgement {
    /// The VERDICT bytes to send to the client.
    pub fn verdict(&self) -> &[u8] {
        match self {
            Self::Admitted(admitted) => admitted.verdict(),
            Self::Refused(
                Refusal::UnknownKeyId(_) | Refusal::WrongProof(_) | Refusal::SeedMismatch,
            ) => &[VERDICT_DENIED],
            Self::Refused(_) => &[VERDICT_MALFORMED],
        }
    }
}

/// An admitted RESPONSE: who, which mode, the VERDICT to send and the session's secrets.
pub struct Admitted {
    key_id: KeyId,
    mode: Mode,
    verdict: Zeroizing<Vec<u8>>,
    secrets: Option<SessionSecrets>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("key_id", &self.key_id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Admitted {
    /// The authenticated key id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The mode of the session.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The VERDICT to send: `0x00 [|| e_S] || server_proof`.
    pub fn verdict(&self) -> &[u8] {
        &self.verdict
    }

    /// The traffic secrets of a sealed session.
    pub fn secrets(&self) -> Option<&SessionSecrets> {
        self.secrets.as_ref()
    }

    pub(crate) fn into_parts(self) -> (KeyId, Mode, Option<SessionSecrets>) {
        (self.key_id, self.mode, self.secrets)
    }
}

/// Judges a complete RESPONSE against the keyring and the mode policy.
///
/// An unknown id is checked against `dummy_key` so that it costs the same HMAC work as a wrong
/// proof: the two are indistinguishable to the client in bytes and in timing. The proof is
/// compared only through `hmac`'s constant-time `verify_slice`. In mode `0x02`, `ephemeral` is
/// called for the server's X25519 secret only after the client's proof verifies.
///
/// Fails only if `ephemeral` fails (the system's randomness); every client input ends in a
/// [`Judgement`].
pub fn judge(
    response: &[u8],
    server_nonce: &Nonce,
    keyring: &Keyring,
    dummy_key: &Key,
    policy: &ModePolicy,
    ephemeral: impl FnOnce() -> Result<EphemeralSecret, Error>,
) -> Result<Judgement, Error> {
    let response = match Response::decode(response) {
        Ok(response) => response,
        Err(malformed) => return Ok(Judgement::Refused(Refusal::Malformed(malformed))),
    };
    if let Err(policy) = policy.check(response.mode) {
        return Ok(Judgement::Refused(Refusal::ModeNotAllowed {
            mode: response.mode,
            policy,
        }));
    }
    let known = keyring.get(response.key_id.as_str());
    let key = known.unwrap_or(dummy_key);
    let transcript = Transcript {
        server_nonce,
        client_nonce: &response.client_nonce,
        mode: response.mode,
        key_id: &response.key_id,
    };
    let proof_ok = transcript
        .client_mac(key, response.client_share.as_ref())
        .verify_slice(&response.client_proof)
        .is_ok();
    let key = match (known, proof_ok) {
        (Some(key), true) => key,
        (Some(_), false) => return Ok(Judgement::Refused(Refusal::WrongProof(response.key_id))),
        (None, _) => return Ok(Judgement::Refused(Refusal::UnknownKeyId(response.key_id))),
    };

    let mut verdict = Zeroizing::new(Vec::with_capacity(ADMITTED_FS_LEN));
    verdict.push(VERDICT_ADMITTED);
    let secrets = match (&response.mode, &response.client_share) {
        (Mode::Plain, _) => {
            verdict.extend_from_slice(&proof_of(transcript.server_mac(key, None)));
            None
        }
        (mode, Some(client_share)) if mode.has_forward_secrecy() => {
            let secret = ephemeral()?;
            let server_share = secret.public_key();
            let Ok(shared) = secret.agree(client_share) else {
                return Ok(Judgement::Refused(Refusal::KeyExchange));
            };
            let shares = (client_share, &server_share);
            verdict.extend_from_slice(server_share.as_bytes());
            verdict.extend_from_slice(&proof_of(transcript.server_mac(key, Some(shares))));
            Some(SessionSecrets::derive(
                key,
                &transcript,
                Some((&shared, client_share, &server_share)),
            ))
        }
        // Response::decode gives the forward-secret modes a share and no other mode one.
        (mode, None) if mode.has_forward_secrecy() => {
            return Ok(Judgement::Refused(Refusal::Malformed(Malformed::Length)));
        }
        _ => {
            verdict.extend_from_slice(&proof_of(transcript.server_mac(key, None)));
            Some(SessionSecrets::derive(key, &transcript, None))
        }
    };
    Ok(Judgement::Admitted(Box::new(Admitted {
        key_id: response.key_id,
        mode: response.mode,
        verdict,
        secrets,
    })))
}

/// Checks a plain-mode server proof in constant time (`hmac`'s `verify_slice`).
pub fn verify_server_proof(
    key: &Key,
    key_id: &KeyId,
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    proof: &[u8],
) -> bool {
    Transcript {
        server_nonce,
        client_nonce,
        mode: Mode::Plain,
        key_id,
    }
    .server_mac(key, None)
    .verify_slice(proof)
    .is_ok()
}

#[cfg(test)]
mod tests;
