//! X25519 for mode `0x02`, from aws-lc-rs. One fresh secret per connection and side.

use std::fmt;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use zeroize::Zeroizing;

use crate::error::Error;

/// Length of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// An X25519 public key as it travels in the RESPONSE (`e_C`) and the VERDICT (`e_S`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }
}

impl From<[u8; PUBLIC_KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

/// An X25519 secret for one handshake. `Debug` shows nothing of it; aws-lc frees it on drop.
pub struct EphemeralSecret(PrivateKey);

impl fmt::Debug for EphemeralSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EphemeralSecret(..)")
    }
}

impl EphemeralSecret {
    /// A fresh secret: 32 bytes from the operating system's CSPRNG (as the nonces are), which
    /// aws-lc clamps. Not aws-lc's own generator: before its first use on each thread it seeds
    /// itself from CPU jitter, which cost the first handshake on every new thread about 40 ms.
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        crate::keys::fill_random(bytes.as_mut())?;
        PrivateKey::from_private_key(&X25519, bytes.as_ref())
            .map(Self)
            .map_err(|_| Error::Io(std::io::Error::other("X25519 key generation failed")))
    }

    /// A secret from given bytes: for test vectors only, never for real connections.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        PrivateKey::from_private_key(&X25519, bytes)
            .map(Self)
            .map_err(|_| Error::Io(std::io::Error::other("not an X25519 private key")))
    }

    /// This secret's public key.
    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        if let Ok(public) = self.0.compute_public_key() {
            let raw = public.as_ref();
            if raw.len() == PUBLIC_KEY_LEN {
                bytes.copy_from_slice(raw);
            }
        }
        // An all-zero public key (only if aws-lc failed above) makes the peer's agreement fail,
        // which aborts the handshake: never a silent weak session.
        PublicKey(bytes)
    }

    /// The shared secret with `peer`, refusing an all-zero result (a low-order or invalid peer
    /// key), as PROTOCOL.md requires.
    pub(crate) fn agree(&self, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>, ()> {
        let shared = agreement::agree(
            &self.0,
            UnparsedPublicKey::new(&X25519, peer.as_bytes()),
            (),
            |shared| {
                let mut out = Zeroizing::new([0u8; 32]);
                if shared.len() != out.len() {
                    return Err(());
                }
                out.copy_from_slice(shared);
                Ok(out)
            },
        )?;
        // Constant-time in effect: the result is secret only when it is not all zero.
        if shared.iter().fold(0u8, |acc, b| acc | b) == 0 {
            return Err(());
        }
        Ok(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_low_order_points_are_refused() {
        let a = EphemeralSecret::generate().unwrap();
        let b = EphemeralSecret::generate().unwrap();
        assert_ne!(a.public_key(), b.public_key(), "two draws gave one secret");
        let ab = a.agree(&b.public_key()).unwrap();
        let ba = b.agree(&a.public_key()).unwrap();
        assert_eq!(*ab, *ba);
        // The all-zero point and the point of order 1 give an all-zero shared secret.
        assert!(a.agree(&PublicKey([0; 32])).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(a.agree(&PublicKey(one)).is_err());
        assert_eq!(format!("{a:?}"), "EphemeralSecret(..)");
    }
}
