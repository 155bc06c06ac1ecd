//! The key schedule of the sealed modes (PROTOCOL.md, "Key schedule"):
//!
//! ```text
//! PRK        = HKDF-Extract(salt = server_nonce || client_nonce, IKM = K [|| X25519(e, E_peer)])
//! ctx        = mode || n || key_id [|| e_C || e_S]
//! c2s_secret = HKDF-Expand(PRK, "linkgate/1 c2s\0" || ctx, 32)
//! s2c_secret = HKDF-Expand(PRK, "linkgate/1 s2c\0" || ctx, 32)
//! ```

use std::fmt;

use hkdf::{Hkdf, HkdfExtract};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{NONCE_LEN, PublicKey, Transcript};
use crate::keys::Key;
use crate::record::TrafficSecret;

const C2S_LABEL: &[u8] = b"linkgate/1 c2s\0";
const S2C_LABEL: &[u8] = b"linkgate/1 s2c\0";

/// The two traffic secrets of a sealed session, one per direction. `Debug` shows no bytes.
pub struct SessionSecrets {
    /// Client to server.
    pub(crate) c2s: TrafficSecret,
    /// Server to client.
    pub(crate) s2c: TrafficSecret,
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecrets(..)")
    }
}

impl SessionSecrets {
    /// Runs the key schedule. `exchange` is the X25519 output and both public keys, in mode
    /// `0x02` only.
    pub(crate) fn derive(
        key: &Key,
        transcript: &Transcript<'_>,
        exchange: Option<(&[u8; 32], &PublicKey, &PublicKey)>,
    ) -> Self {
        let prk = Prk::extract(key, transcript, exchange.map(|(shared, _, _)| shared));
        let mut ctx = Vec::with_capacity(2 + 64 + 64);
        let id = transcript.key_id.as_bytes();
        ctx.push(transcript.mode.wire_byte());
        ctx.push(id.len() as u8);
        ctx.extend_from_slice(id);
        if let Some((_, client, server)) = exchange {
            ctx.extend_from_slice(client.as_bytes());
            ctx.extend_from_slice(server.as_bytes());
        }
        Self {
            c2s: prk.expand(C2S_LABEL, &ctx),
            s2c: prk.expand(S2C_LABEL, &ctx),
        }
    }

    /// Client to server: what the client seals and the server opens.
    pub fn client_to_server(&self) -> &TrafficSecret {
        &self.c2s
    }

    /// Server to client: what the server seals and the client opens.
    pub fn server_to_client(&self) -> &TrafficSecret {
        &self.s2c
    }
}

/// The pseudorandom key of one session, held inside `hkdf` as a keyed HMAC state (wiped on drop
/// by hmac's and sha2's `zeroize` features), which lives only while the two secrets are
/// expanded. Wiping is best-effort here as everywhere: hkdf and hmac leave short-lived copies on
/// the stack that no caller can reach.
pub(crate) struct Prk {
    hkdf: Hkdf<Sha256>,
}

impl Prk {
    pub(crate) fn extract(
        key: &Key,
        transcript: &Transcript<'_>,
        shared: Option<&[u8; 32]>,
    ) -> Self {
        let mut salt = [0u8; 2 * NONCE_LEN];
        salt[..NONCE_LEN].copy_from_slice(transcript.server_nonce);
        salt[NONCE_LEN..].copy_from_slice(transcript.client_nonce);
        let mut extract = HkdfExtract::<Sha256>::new(Some(&salt));
        extract.input_ikm(key.secret());
        if let Some(shared) = shared {
            extract.input_ikm(shared);
        }
        // The PRK comes back as a copy too (the hkdf state keeps its own, zeroized with it).
        let (mut prk, hkdf) = extract.finalize();
        zeroize::Zeroize::zeroize(prk.as_mut_slice());
        Self { hkdf }
    }

    fn expand(&self, label: &[u8], ctx: &[u8]) -> TrafficSecret {
        let mut secret = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's limit of 8160, so this cannot fail.
        let _ = self.hkdf.expand_multi_info(&[label, ctx], &mut secret[..]);
        TrafficSecret::from_bytes(secret)
    }
}
