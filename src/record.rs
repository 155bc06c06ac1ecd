//! The sealed record layer, with no I/O: TLS 1.3 records (RFC 8446 §5.2) under AES-256-GCM.
//!
//! ```text
//! record = 17 03 03 || be16(L) || AES-256-GCM(key, nonce = iv XOR be96(seq), aad = the 5 header bytes,
//!                                             plaintext = data || type)
//! type   = 0x17 application data (1..=16384 bytes)
//!          0x15 alert: close_notify (01 00) only
//!          0x16 handshake: KeyUpdate (18 00 00 01 00) only
//! ```
//!
//! One [`Sealer`] and one [`Opener`] per direction; each keeps only its traffic secret, the
//! derived key and IV, and a sequence number. The AEAD key object (about half a kilobyte inside
//! aws-lc) is built when first needed and can be dropped while a connection is idle
//! ([`Sealer::release_key`], [`Opener::release_key`]).
//!
//! ```
//! use linkgate::record::{Opened, Opener, Sealer, TrafficSecret};
//!
//! let secret = TrafficSecret::from_bytes_for_tests([7; 32]);
//! let (mut sealer, mut opener) = (Sealer::new(&secret), Opener::new(&secret));
//! let mut wire = Vec::new();
//! sealer.seal(b"hello", &mut wire)?;
//! sealer.seal_close_notify(&mut wire)?;
//!
//! let len = Opener::record_len(&wire)?.expect("a whole header");
//! let (first, rest) = wire.split_at_mut(len);
//! let Opened::Data(range) = opener.open_in_place(first)? else { panic!() };
//! assert_eq!(&first[range], b"hello");
//! assert_eq!(opener.open_in_place(rest)?, Opened::CloseNotify);
//! # Ok::<_, linkgate::RecordError>(())
//! ```

use std::fmt;
use std::ops::Range;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::RecordError;

/// Length of a record header.
pub const HEADER_LEN: usize = 5;
/// Length of an AES-256-GCM tag.
pub const TAG_LEN: usize = 16;
/// Most application bytes in one record.
pub const MAX_DATA_LEN: usize = 16384;
/// Largest `L` a header may state: data, type byte and tag.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_DATA_LEN + 1 + TAG_LEN;
/// Largest record on the wire.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_CIPHERTEXT_LEN;
/// What a record adds around its data: header, type byte and tag.
pub const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// A sender updates its key after at most this many records under one key (the KeyUpdate
/// included).
pub const KEY_UPDATE_INTERVAL: u64 = 1 << 20;
/// A receiver accepts at most this many records under one key (the 2^24th is refused).
pub const MAX_RECORDS_PER_KEY: u64 = (1 << 24) - 1;

const HEADER_PREFIX: [u8; 3] = [0x17, 0x03, 0x03];
const TYPE_APPLICATION_DATA: u8 = 0x17;
const TYPE_ALERT: u8 = 0x15;
const TYPE_HANDSHAKE: u8 = 0x16;
const CLOSE_NOTIFY: [u8; 2] = [0x01, 0x00];
const KEY_UPDATE: [u8; 5] = [0x18, 0x00, 0x00, 0x01, 0x00];
/// Smallest `L`: an empty body still carries its type byte and tag.
const MIN_CIPHERTEXT_LEN: usize = 1 + TAG_LEN;

/// A 32-byte traffic secret of one direction. Zeroized on drop; `Debug` shows no bytes.
#[derive(Clone)]
pub struct TrafficSecret(Zeroizing<[u8; 32]>);

impl fmt::Debug for TrafficSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrafficSecret(..)")
    }
}

impl TrafficSecret {
    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    /// A secret from given bytes: for tests, examples and fuzzing only; real secrets come from
    /// the handshake's key schedule.
    pub fn from_bytes_for_tests(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret after a key update: `Expand-Label(secret, "traffic upd", "", 32)`.
    pub fn next(&self) -> Self {
        let mut next = Zeroizing::new([0u8; 32]);
        expand_label(&self.0, b"traffic upd", &mut next[..]);
        Self(next)
    }

    /// The AES-256-GCM key and IV: `Expand-Label(secret, "key", "", 32)` and
    /// `Expand-Label(secret, "iv", "", 12)`.
    pub(crate) fn key_and_iv(&self) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; NONCE_LEN]>) {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut iv = Zeroizing::new([0u8; NONCE_LEN]);
        expand_label(&self.0, b"key", &mut key[..]);
        expand_label(&self.0, b"iv", &mut iv[..]);
        (key, iv)
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// TLS 1.3's HKDF-Expand-Label with an empty context (RFC 8446 §7.1):
/// `info = be16(len) || u8(6 + |label|) || "tls13 " || label || u8(0)`.
fn expand_label(secret: &[u8; 32], label: &[u8], out: &mut [u8]) {
    // Labels here are short constants and outputs at most 32 bytes: the casts and expand
    // cannot fail, and a 32-byte PRK is always valid.
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [6 + label.len() as u8];
    if let Ok(hkdf) = Hkdf::<Sha256>::from_prk(secret) {
        let _ = hkdf.expand_multi_info(&[&length, &label_len, b"tls13 ", label, &[0]], out);
    }
}

/// Test-only limits on records per key, to exercise key updates without sending 2^20 records.
/// Values are clamped to the protocol's: a sender never updates later than every
/// [`KEY_UPDATE_INTERVAL`] records, and a receiver never accepts more than
/// [`MAX_RECORDS_PER_KEY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    key_update_interval: u64,
    max_records_per_key: u64,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            key_update_interval: KEY_UPDATE_INTERVAL,
            max_records_per_key: MAX_RECORDS_PER_KEY,
        }
    }
}

impl RecordLimits {
    /// The protocol's limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Send a KeyUpdate after at most `records` records under one key (at least 2: one record
    /// and the KeyUpdate).
    pub fn with_key_update_interval(mut self, records: u64) -> Self {
        self.key_update_interval = records.clamp(2, KEY_UPDATE_INTERVAL);
        self
    }

    /// Refuse a record once `records` have been opened under one key.
    pub fn with_max_records_per_key(mut self, records: u64) -> Self {
        self.max_records_per_key = records.clamp(1, MAX_RECORDS_PER_KEY);
        self
    }

    /// The sender's key update interval.
    pub fn key_update_interval(&self) -> u64 {
        self.key_update_interval
    }

    /// The receiver's limit.
    pub fn max_records_per_key(&self) -> u64 {
        self.max_records_per_key
    }
}

/// One direction's keys and sequence number.
struct Direction {
    secret: TrafficSecret,
    key: Zeroizing<[u8; 32]>,
    iv: Zeroizing<[u8; NONCE_LEN]>,
    seq: u64,
    /// Built on first use; dropped by `release_key` while idle.
    aead: Option<LessSafeKey>,
}

impl Direction {
    fn new(secret: &TrafficSecret) -> Self {
        let (key, iv) = secret.key_and_iv();
        Self {
            secret: secret.clone(),
            key,
            iv,
            seq: 0,
            aead: None,
        }
    }

    fn nonce(&self) -> Nonce {
        let mut nonce = *self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    fn aead(&mut self) -> Result<&LessSafeKey, RecordError> {
        if self.aead.is_none() {
            let key =
                UnboundKey::new(&AES_256_GCM, &self.key[..]).map_err(|_| RecordError::Crypto)?;
            self.aead = Some(LessSafeKey::new(key));
        }
        self.aead.as_ref().ok_or(RecordError::Crypto)
    }

    /// Switches to the next traffic secret.
    fn update(&mut self) {
        self.secret = self.secret.next();
        (self.key, self.iv) = self.secret.key_and_iv();
        self.seq = 0;
        self.aead = None;
    }
}

/// The sending half of one direction: seals application data, KeyUpdate and close_notify.
pub struct Sealer {
    dir: Direction,
    key_update_interval: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("seq", &self.dir.seq)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer starting at sequence number 0 under `secret`.
    pub fn new(secret: &TrafficSecret) -> Self {
        Self::with_limits(secret, RecordLimits::default())
    }

    /// A sealer with test limits.
    pub fn with_limits(secret: &TrafficSecret, limits: RecordLimits) -> Self {
        Self {
            dir: Direction::new(secret),
            key_update_interval: limits.key_update_interval,
        }
    }

    /// True when the next record must be a KeyUpdate ([`Sealer::seal_key_update`]);
    /// [`Sealer::seal`] does this by itself, [`Sealer::seal_in_place`] leaves it to the caller.
    pub fn needs_key_update(&self) -> bool {
        self.dir.seq + 1 >= self.key_update_interval
    }

    /// Seals the `len` application bytes already at `slot[HEADER_LEN..HEADER_LEN + len]` into
    /// a record filling `slot[..len + OVERHEAD]`; returns the record's length. `len` must be
    /// 1..=16384 and `slot` at least `len + OVERHEAD` bytes. Does not insert key updates: check
    /// [`Sealer::needs_key_update`] before each record.
    pub fn seal_in_place(&mut self, slot: &mut [u8], len: usize) -> Result<usize, RecordError> {
        if len == 0 || len > MAX_DATA_LEN {
            return Err(RecordError::BadLength(len));
        }
        self.seal_record(slot, len, TYPE_APPLICATION_DATA)
    }

    fn seal_record(
        &mut self,
        slot: &mut [u8],
        len: usize,
        content_type: u8,
    ) -> Result<usize, RecordError> {
        let record_len = len + OVERHEAD;
        let slot = slot
            .get_mut(..record_len)
            .ok_or(RecordError::BadLength(len))?;
        let inner_len = len + 1;
        let ciphertext_len = (inner_len + TAG_LEN) as u16;
        let [hi, lo] = ciphertext_len.to_be_bytes();
        let header = [HEADER_PREFIX[0], HEADER_PREFIX[1], HEADER_PREFIX[2], hi, lo];
        slot[..HEADER_LEN].copy_from_slice(&header);
        slot[HEADER_LEN + len] = content_type;
        let nonce = self.dir.nonce();
        let (body, tag_out) = slot[HEADER_LEN..].split_at_mut(inner_len);
        let tag = self
            .dir
            .aead()?
            .seal_in_place_separate_tag(nonce, Aad::from(header), body)
            .map_err(|_| RecordError::Crypto)?;
        tag_out.copy_from_slice(tag.as_ref());
        self.dir.seq += 1;
        Ok(record_len)
    }

    /// Appends `data` to `out` as application-data records of at most 16384 bytes, with a
    /// KeyUpdate wherever one is due.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        for chunk in data.chunks(MAX_DATA_LEN) {
            if self.needs_key_update() {
                self.seal_key_update(out)?;
            }
            self.append(chunk, TYPE_APPLICATION_DATA, out)?;
        }
        Ok(())
    }

    /// As [`Sealer::seal`] for the bytes of `pieces` in order, up to `limit` of them: records
    /// are filled across the pieces' boundaries and each byte is copied once, straight into its
    /// record. Returns how many bytes were sealed.
    pub fn seal_gathered<P: std::ops::Deref<Target = [u8]>>(
        &mut self,
        pieces: &[P],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, RecordError> {
        let total = pieces.iter().map(|p| p.len()).sum::<usize>().min(limit);
        let (mut piece, mut offset, mut taken) = (0, 0, 0);
        while taken < total {
            if self.needs_key_update() {
                self.seal_key_update(out)?;
            }
            let len = (total - taken).min(MAX_DATA_LEN);
            let start = out.len();
            out.resize(start + len + OVERHEAD, 0);
            let body = &mut out[start + HEADER_LEN..start + HEADER_LEN + len];
            let mut filled = 0;
            while filled < len {
                let Some(source) = pieces.get(piece) else {
                    break;
                };
                let rest = source.get(offset..).unwrap_or_default();
                let n = rest.len().min(len - filled);
                body[filled..filled + n].copy_from_slice(&rest[..n]);
                filled += n;
                offset += n;
                if offset >= source.len() {
                    (piece, offset) = (piece + 1, 0);
                }
            }
            self.seal_record(&mut out[start..], len, TYPE_APPLICATION_DATA)
                .inspect_err(|_| out.truncate(start))?;
            taken += len;
        }
        Ok(taken)
    }

    fn append(
        &mut self,
        data: &[u8],
        content_type: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let start = out.len();
        out.resize(start + data.len() + OVERHEAD, 0);
        out[start + HEADER_LEN..start + HEADER_LEN + data.len()].copy_from_slice(data);
        self.seal_record(&mut out[start..], data.len(), content_type)
            .inspect_err(|_| out.truncate(start))?;
        Ok(())
    }

    /// Appends a KeyUpdate under the current key, then switches to the next secret.
    pub fn seal_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.append(&KEY_UPDATE, TYPE_HANDSHAKE, out)?;
        self.dir.update();
        Ok(())
    }

    /// Appends close_notify: the last record of this direction.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.needs_key_update() {
            self.seal_key_update(out)?;
        }
        self.append(&CLOSE_NOTIFY, TYPE_ALERT, out)
    }

    /// Drops the AEAD key object (it is rebuilt from the stored key on the next record), so an
    /// idle connection holds only the secret, key, IV and sequence number.
    pub fn release_key(&mut self) {
        self.dir.aead = None;
    }
}

/// What one opened record was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Application data, at this range of the record buffer.
    Data(Range<usize>),
    /// close_notify: this direction has ended cleanly; any further record is an error.
    CloseNotify,
    /// KeyUpdate: the opener has switched to the next secret.
    KeyUpdate,
}

/// The receiving half of one direction: opens records in order and enforces the rules.
pub struct Opener {
    dir: Direction,
    max_records_per_key: u64,
    closed: bool,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("seq", &self.dir.seq)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener starting at sequence number 0 under `secret`.
    pub fn new(secret: &TrafficSecret) -> Self {
        Self::with_limits(secret, RecordLimits::default())
    }

    /// An opener with test limits.
    pub fn with_limits(secret: &TrafficSecret, limits: RecordLimits) -> Self {
        Self {
            dir: Direction::new(secret),
            max_records_per_key: limits.max_records_per_key,
            closed: false,
        }
    }

    /// The length of the record that starts `buffered`, once its 5-byte header is there
    /// (`None` before). A header that is not `17 03 03` or states a length out of range is
    /// refused here, before its body is read.
    pub fn record_len(buffered: &[u8]) -> Result<Option<usize>, RecordError> {
        let Some(header) = buffered.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        if header[..3] != HEADER_PREFIX {
            return Err(RecordError::BadHeader);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if !(MIN_CIPHERTEXT_LEN..=MAX_CIPHERTEXT_LEN).contains(&len) {
            return Err(RecordError::BadLength(len));
        }
        Ok(Some(HEADER_LEN + len))
    }

    /// Opens one whole record (header included) in place. Application data is returned as a
    /// range of `record`; nothing of a record that fails is usable.
    pub fn open_in_place(&mut self, record: &mut [u8]) -> Result<Opened, RecordError> {
        if self.closed {
            return Err(RecordError::DataAfterClose);
        }
        let len = Self::record_len(record)?.ok_or(RecordError::BadHeader)?;
        if record.len() != len {
            return Err(RecordError::BadLength(record.len()));
        }
        if self.dir.seq >= self.max_records_per_key {
            return Err(RecordError::TooManyRecords);
        }
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let header: [u8; HEADER_LEN] = header.try_into().map_err(|_| RecordError::BadHeader)?;
        let nonce = self.dir.nonce();
        let inner = self
            .dir
            .aead()?
            .open_in_place(nonce, Aad::from(header), body)
            .map_err(|_| RecordError::BadTag)?;
        self.dir.seq += 1;
        let Some((&content_type, data)) = inner.split_last() else {
            return Err(RecordError::UnexpectedMessage);
        };
        match (content_type, data) {
            (TYPE_APPLICATION_DATA, data) if !data.is_empty() => {
                Ok(Opened::Data(HEADER_LEN..HEADER_LEN + data.len()))
            }
            (TYPE_ALERT, data) if data == CLOSE_NOTIFY => {
                self.closed = true;
                Ok(Opened::CloseNotify)
            }
            (TYPE_HANDSHAKE, data) if data == KEY_UPDATE => {
                self.dir.update();
                Ok(Opened::KeyUpdate)
            }
            _ => Err(RecordError::UnexpectedMessage),
        }
    }

    /// True once close_notify has been opened.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Drops the AEAD key object while idle (rebuilt on the next record).
    pub fn release_key(&mut self) {
        self.dir.aead = None;
    }
}

#[cfg(test)]
mod tests;
