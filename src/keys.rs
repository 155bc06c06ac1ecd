//! Keys, key ids, key files and the keyring.
//!
//! A key file holds one line of hex (16 to 64 bytes once decoded); its id is the file's stem, so
//! `keys/alice.key` is the key of `alice`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit};
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, KeyFileProblem, Result};

/// HMAC-SHA-256, the only MAC linkgate/1 uses.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Length of a key made by [`Key::generate`].
pub const GENERATED_KEY_LEN: usize = 32;
/// A key file larger than this is refused before it is read (a 64-byte key is 128 hex digits).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// A validated key id: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
///
/// Its `Display` is the id itself; being validated, it is safe to print in logs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Checks `id` against the key id rules.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if is_valid_key_id(id.as_bytes()) {
            Ok(KeyId(id))
        } else {
            Err(Error::InvalidKeyId(id))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's length and bytes, as they go on the wire.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// True if `id` is 1..=64 bytes of ASCII letters, digits, `.`, `_` or `-`.
pub(crate) fn is_valid_key_id(id: &[u8]) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        KeyId::new(s)
    }
}

/// How strictly key files are checked when loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyFileOptions {
    allow_open_permissions: bool,
    allow_short_keys: bool,
}

impl KeyFileOptions {
    /// The default: on Unix, refuse a key file that group or others can access (as ssh does).
    pub fn new() -> Self {
        Self::default()
    }

    /// Opt out of the permission check, e.g. for keys mounted read-only by an orchestrator with
    /// wider modes. Prefer fixing the file's mode: anyone who can read the key can get in.
    pub fn allow_open_permissions(mut self, allow: bool) -> Self {
        self.allow_open_permissions = allow;
        self
    }

    /// Accept keys shorter than 16 bytes (down to 1 byte). Only the `seed` protocol, kept for
    /// existing deployments of the original recipe with short text keys, can use them: a
    /// [`crate::Gate`] or client in linkgate/1 mode refuses such a key.
    pub fn allow_short_keys(mut self, allow: bool) -> Self {
        self.allow_short_keys = allow;
        self
    }
}

/// A shared secret key with its id.
///
/// The key bytes live only in zeroized-on-drop memory; `Debug` shows the id and nothing else.
#[derive(Clone)]
pub struct Key {
    id: KeyId,
    secret: Zeroizing<Vec<u8>>,
    /// HMAC state already keyed with `secret`; cloned per handshake so the key's two padding
    /// blocks are hashed once, not on every connection. Zeroized on drop (hmac's `zeroize`).
    keyed_mac: HmacSha256,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from bytes given in code; 16 to 64 bytes.
    pub fn new(id: KeyId, secret: &[u8]) -> Result<Self> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&secret.len()) {
            return Err(Error::KeyLength(secret.len()));
        }
        Ok(Self::from_checked(id, Zeroizing::new(secret.to_vec())))
    }

    /// A key for the `seed` protocol only: 1 to 64 bytes, so short text keys of existing
    /// recipe deployments (`b"secret"`) work. linkgate/1 refuses keys under 16 bytes.
    pub fn new_short(id: KeyId, secret: &[u8]) -> Result<Self> {
        if !(1..=MAX_KEY_LEN).contains(&secret.len()) {
            return Err(Error::KeyLength(secret.len()));
        }
        Ok(Self::from_checked(id, Zeroizing::new(secret.to_vec())))
    }

    /// The key's length in bytes.
    pub fn byte_len(&self) -> usize {
        self.secret.len()
    }

    /// True for keys shorter than linkgate/1 accepts (possible only through the seed options).
    pub fn is_short(&self) -> bool {
        self.secret.len() < MIN_KEY_LEN
    }

    /// Refuses a short key where linkgate/1 is spoken.
    pub(crate) fn check_linkgate1_length(&self) -> Result<()> {
        if self.is_short() {
            Err(Error::KeyLength(self.secret.len()))
        } else {
            Ok(())
        }
    }

    fn from_checked(id: KeyId, secret: Zeroizing<Vec<u8>>) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed_mac = HmacSha256::new_from_slice(&secret).unwrap_or_else(|_| unreachable!());
        Key {
            id,
            secret,
            keyed_mac,
        }
    }

    /// A new 32-byte key from the operating system's CSPRNG.
    pub fn generate(id: KeyId) -> Result<Self> {
        let mut secret = Zeroizing::new(vec![0u8; GENERATED_KEY_LEN]);
        fill_random(&mut secret)?;
        Ok(Self::from_checked(id, secret))
    }

    /// Loads a key file with the default, strict checks; the id is the file's stem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file_with(path, KeyFileOptions::default())
    }

    /// Loads a key file with the given checks; the id is the file's stem.
    pub fn from_file_with(path: impl AsRef<Path>, options: KeyFileOptions) -> Result<Self> {
        let path = path.as_ref();
        let id = id_from_path(path)?;
        let secret = read_key_file(path, options)?;
        let min = if options.allow_short_keys {
            1
        } else {
            MIN_KEY_LEN
        };
        if !(min..=MAX_KEY_LEN).contains(&secret.len()) {
            return Err(key_file_error(path, KeyFileProblem::Length(secret.len())));
        }
        Ok(Self::from_checked(id, secret))
    }

    /// This key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The same key under another id (a client may present a key under a name other than its
    /// file's stem).
    pub fn with_id(mut self, id: KeyId) -> Self {
        self.id = id;
        self
    }

    /// Writes the key as one line of hex to a new file created with mode 0600; refuses to
    /// replace an existing file.
    pub fn write_new_file(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_file(path.as_ref(), false)
    }

    /// Writes the key as one line of hex, replacing any existing file; the file ends with mode
    /// 0600 whatever it had before.
    pub fn write_file_replacing(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_file(path.as_ref(), true)
    }

    fn write_file(&self, path: &Path, replace: bool) -> Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true);
        if replace {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|err| {
            let problem = if err.kind() == io::ErrorKind::AlreadyExists {
                KeyFileProblem::AlreadyExists
            } else {
                KeyFileProblem::Unwritable(err)
            };
            key_file_error(path, problem)
        })?;
        let unwritable = |err| key_file_error(path, KeyFileProblem::Unwritable(err));
        // `mode` only applies to files it creates; a replaced file keeps its old mode otherwise.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(unwritable)?;
        }
        file.write_all(self.to_hex_line().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(unwritable)
    }

    /// The key as one line of lowercase hex with a trailing newline, as in a key file.
    ///
    /// This is the secret itself: print it only where the user asked for it.
    pub fn to_hex_line(&self) -> Zeroizing<String> {
        // Sized once and filled in place: no reallocation leaves a copy of the key behind.
        let hex_len = self.secret.len() * 2;
        let mut line = Zeroizing::new(vec![b'\n'; hex_len + 1]);
        // The buffer is exactly twice the key's length, so encoding cannot fail.
        let _ = hex::encode_to_slice(&*self.secret, &mut line[..hex_len]);
        let text = String::from_utf8(std::mem::take(&mut *line)).unwrap_or_default();
        Zeroizing::new(text)
    }

    /// A fresh HMAC instance keyed with this key.
    pub(crate) fn mac(&self) -> HmacSha256 {
        self.keyed_mac.clone()
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    SysRng
        .try_fill_bytes(buf)
        .map_err(|err| Error::Random(err.to_string()))
}

fn key_file_error(path: &Path, problem: KeyFileProblem) -> Error {
    Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    }
}

fn id_from_path(path: &Path) -> Result<KeyId> {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| KeyId::new(stem).ok())
        .ok_or_else(|| key_file_error(path, KeyFileProblem::BadStem))
}

/// Reads and decodes a key file, without judging the key's length.
pub(crate) fn read_key_file(path: &Path, options: KeyFileOptions) -> Result<Zeroizing<Vec<u8>>> {
    let unreadable = |err| key_file_error(path, KeyFileProblem::Unreadable(err));
    let file = fs::File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(unreadable(io::Error::other("not a regular file")));
    }
    #[cfg(unix)]
    if !options.allow_open_permissions {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(key_file_error(path, KeyFileProblem::Permissions(mode)));
        }
    }
    #[cfg(not(unix))]
    let _ = options;

    // Room for the largest accepted file up front, so reading never reallocates and leaves
    // copies of the key in freed memory.
    let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE_LEN as usize + 64));
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|err| {
            if err.kind() == io::ErrorKind::InvalidData {
                key_file_error(path, KeyFileProblem::NotHex)
            } else {
                unreadable(err)
            }
        })?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(key_file_error(path, KeyFileProblem::TooLarge));
    }
    let hex_digits = text.trim();
    if hex_digits.is_empty() || hex_digits.contains(char::is_whitespace) {
        return Err(key_file_error(path, KeyFileProblem::NotHex));
    }
    let mut secret = Zeroizing::new(vec![0u8; hex_digits.len() / 2]);
    hex::decode_to_slice(hex_digits, &mut secret)
        .map_err(|_| key_file_error(path, KeyFileProblem::NotHex))?;
    Ok(secret)
}

/// The keys a server accepts, by id.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: HashMap<KeyId, Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.ids()).finish()
    }
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key under its id, returning the key it replaces, if any.
    pub fn insert(&mut self, key: Key) -> Option<Key> {
        self.keys.insert(key.id.clone(), key)
    }

    /// The key registered for `id`.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.get(id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }

    /// The ids, sorted.
    pub fn ids(&self) -> Vec<&KeyId> {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        ids
    }

    /// A keyring holding one key file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file_with(path, KeyFileOptions::default())
    }

    /// A keyring holding one key file, checked with `options`.
    pub fn from_file_with(path: impl AsRef<Path>, options: KeyFileOptions) -> Result<Self> {
        let mut ring = Keyring::new();
        ring.insert(Key::from_file_with(path, options)?);
        Ok(ring)
    }

    /// Every `*.key` file in a directory (not recursive; other files are ignored). Fails on the
    /// first bad key file, naming it, and if the directory holds no key at all.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_dir_with(dir, KeyFileOptions::default())
    }

    /// Every `*.key` file in a directory, checked with `options`.
    pub fn from_dir_with(dir: impl AsRef<Path>, options: KeyFileOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let mut ring = Keyring::new();
        for path in key_files_in(dir)? {
            ring.insert(Key::from_file_with(&path, options)?);
        }
        if ring.is_empty() {
            return Err(Error::NoKeys(dir.to_path_buf()));
        }
        Ok(ring)
    }

    /// A key file or a directory of `*.key` files, whichever `path` is.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, KeyFileOptions::default())
    }

    /// A key file or a directory of `*.key` files, checked with `options`.
    pub fn load_with(path: impl AsRef<Path>, options: KeyFileOptions) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_dir_with(path, options)
        } else {
            Self::from_file_with(path, options)
        }
    }
}

/// The `*.key` files directly inside `dir`, sorted so loading order (and errors) are stable.
pub fn key_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let unreadable = |err| key_file_error(dir, KeyFileProblem::Unreadable(err));
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().is_some_and(|ext| ext == "key") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_rules() {
        for good in ["a", "alice", "A-b_c.9", &"x".repeat(64)] {
            assert!(KeyId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "al ice", "al/ice", "é", "a\0", &"x".repeat(65)] {
            assert!(
                matches!(KeyId::new(bad), Err(Error::InvalidKeyId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_length_bounds() {
        let id = KeyId::new("k").unwrap();
        assert!(matches!(
            Key::new(id.clone(), &[0; 15]),
            Err(Error::KeyLength(15))
        ));
        assert!(Key::new(id.clone(), &[0; 16]).is_ok());
        assert!(Key::new(id.clone(), &[0; 64]).is_ok());
        assert!(matches!(Key::new(id, &[0; 65]), Err(Error::KeyLength(65))));
    }

    #[test]
    fn generated_keys_differ() {
        let id = KeyId::new("k").unwrap();
        let a = Key::generate(id.clone()).unwrap();
        let b = Key::generate(id).unwrap();
        assert_eq!(a.secret.len(), GENERATED_KEY_LEN);
        assert_ne!(*a.secret, *b.secret);
    }
}
