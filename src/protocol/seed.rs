//! The `seed` protocol: the original recipe's challenge-response, without I/O.

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;

use super::{NONCE_LEN, Nonce};
use crate::keys::{Key, KeyId, Keyring};

/// Length of the server's random challenge.
pub const CHALLENGE_LEN: usize = NONCE_LEN;
/// Length of the longest answer (HMAC-SHA-256's).
pub const MAX_ANSWER_LEN: usize = 32;

/// The hash under the recipe's HMAC. The recipe as published calls `hmac.new(key, msg)`, which
/// meant HMAC-MD5 until Python 3.8 made the digest a required argument; deployments updated since
/// name one, usually SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeedDigest {
    /// HMAC-SHA-256: `hmac.new(key, msg, 'sha256')`; a 32-byte answer.
    Sha256,
    /// HMAC-MD5: the published recipe's default; a 16-byte answer.
    Md5,
}

impl SeedDigest {
    /// The answer's length in bytes.
    pub const fn answer_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Md5 => 16,
        }
    }
}

/// A client's answer: the HMAC of the nonce, [`SeedDigest::answer_len`] bytes. No `==`: a
/// server compares answers in constant time ([`judge`]).
#[derive(Clone)]
pub struct SeedAnswer {
    bytes: [u8; MAX_ANSWER_LEN],
    len: usize,
}

impl AsRef<[u8]> for SeedAnswer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for SeedAnswer {
    /// An answer is a proof of the key for one nonce: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeedAnswer({} bytes)", self.len)
    }
}

/// The client's answer: `HMAC(K, nonce)` with `digest`.
pub fn answer(digest: SeedDigest, key: &Key, nonce: &Nonce) -> SeedAnswer {
    let mut bytes = [0u8; MAX_ANSWER_LEN];
    let len = digest.answer_len();
    match digest {
        SeedDigest::Sha256 => {
            let mut mac = key.mac();
            mac.update(nonce);
            bytes.copy_from_slice(&mac.finalize().into_bytes());
        }
        SeedDigest::Md5 => {
            let mut mac = md5_mac(key);
            mac.update(nonce);
            bytes[..len].copy_from_slice(&mac.finalize().into_bytes());
        }
    }
    SeedAnswer { bytes, len }
}

/// The key whose answer this is, checked against every key in constant time each (the same
/// work whichever key matches, or none). Seed has no key id, so this is how the server still
/// learns which key connected.
pub fn judge(digest: SeedDigest, answer: &[u8], nonce: &Nonce, keyring: &Keyring) -> Option<KeyId> {
    let mut admitted = None;
    for key in keyring.keys() {
        let matches = match digest {
            SeedDigest::Sha256 => {
                let mut mac = key.mac();
                mac.update(nonce);
                mac.verify_slice(answer).is_ok()
            }
            SeedDigest::Md5 => {
                let mut mac = md5_mac(key);
                mac.update(nonce);
                mac.verify_slice(answer).is_ok()
            }
        };
        if matches {
            admitted = Some(key.id().clone());
        }
    }
    admitted
}

fn md5_mac(key: &Key) -> Hmac<Md5> {
    // HMAC takes a key of any length (a longer one is hashed first), so this cannot fail.
    <Hmac<Md5> as KeyInit>::new_from_slice(key.secret())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}
