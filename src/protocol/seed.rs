//! The `seed` protocol: the original recipe's challenge-response, without I/O.

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
