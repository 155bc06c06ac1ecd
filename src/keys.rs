//! Keys, key ids and the keyring. Reading and writing key files is in `key_file`.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit};
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, KeyError, Result};
use crate::key_file::{self, KeyFileOptions};

/// HMAC-SHA-256, the only MAC linkgate/1 uses.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Length of a key made by [`Key::generate`].
pub(crate) const GENERATED_KEY_LEN: usize = 32;

/// A validated key id: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
///
/// Its `Display` is the id itself; being validated, it is safe to print in logs. It is still
/// chosen by whoever holds the key (or claims to): never use it as a metrics label before the
/// client has proved it.
///
/// ```
/// use linkgate::KeyId;
/// let id: KeyId = "alice".parse()?;
/// assert_eq!(id.as_str(), "alice");
/// assert!(KeyId::new("al/ice").is_err());
/// # Ok::<_, linkgate::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Checks `id` against the key id rules.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if is_valid_key_id(id.as_bytes()) {
            Ok(Self(id))
        } else {
            Err(KeyError::InvalidId(id).into())
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's bytes, as they go on the wire.
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
        Self::new(s)
    }
}

/// A shared secret key with its id.
///
/// The key bytes live only in zeroized-on-drop memory; `Debug` shows the id and nothing else.
///
/// ```
/// use linkgate::{Key, KeyId};
/// let key = Key::generate(KeyId::new("alice")?)?;
/// assert_eq!(format!("{key:?}"), r#"Key { id: "alice", .. }"#);
/// # Ok::<_, linkgate::Error>(())
/// ```
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
            return Err(KeyError::Length(secret.len()).into());
        }
        Ok(Self::from_checked(id, Zeroizing::new(secret.to_vec())))
    }

    /// A key for the `seed` protocol only: 1 to 64 bytes, so short text keys of existing
    /// recipe deployments (`b"secret"`) work. linkgate/1 refuses keys under 16 bytes.
    pub fn new_short(id: KeyId, secret: &[u8]) -> Result<Self> {
        if !(1..=MAX_KEY_LEN).contains(&secret.len()) {
            return Err(KeyError::SeedLength(secret.len()).into());
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
            Err(KeyError::Length(self.secret.len()).into())
        } else {
            Ok(())
        }
    }

    pub(crate) fn from_checked(id: KeyId, secret: Zeroizing<Vec<u8>>) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed_mac = HmacSha256::new_from_slice(&secret).unwrap_or_else(|_| unreachable!());
        Self {
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
    ///
    /// A key file holds one line of hex (what `linkgate keygen` writes), one line of base64, or
    /// 32 to 64 raw bytes that are not text (spiped's format); see `keys/README.md`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file_with(path, &KeyFileOptions::default())
    }

    /// Loads a key file with the given checks; the id is the file's stem.
    pub fn from_file_with(path: impl AsRef<Path>, options: &KeyFileOptions) -> Result<Self> {
        key_file::load(path.as_ref(), options)
    }

    /// Loads a key file with the given checks under `id`, whatever the file is called (a
    /// client presenting its key under another id than the file's stem).
    pub fn from_file_as(
        id: KeyId,
        path: impl AsRef<Path>,
        options: &KeyFileOptions,
    ) -> Result<Self> {
        key_file::load_as(id, path.as_ref(), options)
    }

    /// A key from the contents of a key file that came from elsewhere (standard input, an
    /// environment variable, a secret store), under `id`. Same formats and length rules as
    /// [`Key::from_file`]; `allow_short` admits 1..16-byte keys for the seed protocol.
    ///
    /// ```
    /// use linkgate::{Key, KeyId};
    /// let key = Key::decode(KeyId::new("alice")?, b"000102030405060708090a0b0c0d0e0f\n", false)?;
    /// assert_eq!(key.byte_len(), 16);
    /// # Ok::<_, linkgate::Error>(())
    /// ```
    pub fn decode(id: KeyId, contents: &[u8], allow_short: bool) -> Result<Self> {
        let secret =
            key_file::decode(contents).map_err(|problem| KeyError::Contents { problem })?;
        if allow_short && !(1..=MAX_KEY_LEN).contains(&secret.len()) {
            return Err(KeyError::SeedLength(secret.len()).into());
        }
        if !allow_short && !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&secret.len()) {
            return Err(KeyError::Length(secret.len()).into());
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
        key_file::write(self, path.as_ref(), false)
    }

    /// Writes the key as one line of hex, replacing any existing file in place: it keeps its
    /// owner and group and ends with mode 0600 whatever it had before. A symbolic link is
    /// refused, never written through.
    pub fn write_file_replacing(&self, path: impl AsRef<Path>) -> Result<()> {
        key_file::write(self, path.as_ref(), true)
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

    /// The key bytes, for the key schedule.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    SysRng.try_fill_bytes(buf).map_err(Error::Random)
}

/// The keys a server accepts, by id.
///
/// ```
/// use linkgate::{Key, KeyId, Keyring};
/// let mut keyring = Keyring::new();
/// keyring.insert(Key::generate(KeyId::new("alice")?)?);
/// keyring.insert(Key::generate(KeyId::new("bob")?)?);
/// assert_eq!(format!("{keyring:?}"), r#"{"alice", "bob"}"#);
/// # Ok::<_, linkgate::Error>(())
/// ```
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

    /// Removes the key of `id`, returning it.
    pub fn remove(&mut self, id: &str) -> Option<Key> {
        self.keys.remove(id)
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

    /// What changes from `self` to `next`: ids added, ids removed, ids whose key changed.
    pub fn diff(&self, next: &Self) -> KeyringDiff {
        let before: BTreeSet<&KeyId> = self.keys.keys().collect();
        let after: BTreeSet<&KeyId> = next.keys.keys().collect();
        let changed = before
            .intersection(&after)
            .filter(|id| {
                let (old, new) = (&self.keys[id.as_str()], &next.keys[id.as_str()]);
                // Compared only to report a rotation; not a secret-dependent branch an attacker
                // can observe.
                old.secret != new.secret
            })
            .map(|id| (*id).clone())
            .collect();
        KeyringDiff {
            added: after.difference(&before).map(|id| (*id).clone()).collect(),
            removed: before.difference(&after).map(|id| (*id).clone()).collect(),
            changed,
        }
    }

    /// A keyring holding one key file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file_with(path, &KeyFileOptions::default())
    }

    /// A keyring holding one key file, checked with `options`.
    pub fn from_file_with(path: impl AsRef<Path>, options: &KeyFileOptions) -> Result<Self> {
        let mut ring = Self::new();
        ring.insert(Key::from_file_with(path, options)?);
        Ok(ring)
    }

    /// Every `*.key` file in a directory (not recursive; other files are ignored, and so are
    /// hidden files, with a warning). Every bad key file is reported at once, each named; a
    /// directory with no key at all is refused too.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_dir_with(dir, &KeyFileOptions::default())
    }

    /// Every `*.key` file in a directory, checked with `options`.
    pub fn from_dir_with(dir: impl AsRef<Path>, options: &KeyFileOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let mut ring = Self::new();
        let mut problems = Vec::new();
        for path in key_file::key_files_in(dir, options)? {
            match Key::from_file_with(&path, options) {
                Ok(key) => {
                    ring.insert(key);
                }
                Err(Error::Key(problem)) => problems.push(problem),
                Err(other) => return Err(other),
            }
        }
        match problems.len() {
            0 if ring.is_empty() => Err(KeyError::NoKeys(dir.to_path_buf()).into()),
            0 => Ok(ring),
            1 => Err(problems.remove(0).into()),
            _ => Err(KeyError::Files {
                dir: dir.to_path_buf(),
                problems,
            }
            .into()),
        }
    }

    /// A key file or a directory of `*.key` files, whichever `path` is.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, &KeyFileOptions::default())
    }

    /// A key file or a directory of `*.key` files, checked with `options`.
    pub fn load_with(path: impl AsRef<Path>, options: &KeyFileOptions) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_dir_with(path, options)
        } else {
            Self::from_file_with(path, options)
        }
    }
}

/// What changed between two keyrings (see [`Keyring::diff`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyringDiff {
    /// Ids only in the new keyring.
    pub added: Vec<KeyId>,
    /// Ids only in the old keyring.
    pub removed: Vec<KeyId>,
    /// Ids in both, with a different key.
    pub changed: Vec<KeyId>,
}

impl KeyringDiff {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
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
                matches!(KeyId::new(bad), Err(Error::Key(KeyError::InvalidId(_)))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_length_bounds() {
        let id = KeyId::new("k").unwrap();
        assert!(matches!(
            Key::new(id.clone(), &[0; 15]),
            Err(Error::Key(KeyError::Length(15)))
        ));
        assert!(Key::new(id.clone(), &[0; 16]).is_ok());
        assert!(Key::new(id.clone(), &[0; 64]).is_ok());
        assert!(matches!(
            Key::new(id.clone(), &[0; 65]),
            Err(Error::Key(KeyError::Length(65)))
        ));
        // Seed keys: 1 to 64 bytes, and the error says so.
        assert!(Key::new_short(id.clone(), &[0; 1]).is_ok());
        let err = Key::new_short(id.clone(), &[0; 65]).unwrap_err();
        assert!(matches!(err, Error::Key(KeyError::SeedLength(65))));
        assert!(err.to_string().contains("1 to 64 bytes"), "{err}");
        assert!(matches!(
            Key::decode(id, &[b'a'; 130], true),
            Err(Error::Key(KeyError::SeedLength(65)))
        ));
    }

    #[test]
    fn generated_keys_differ() {
        let id = KeyId::new("k").unwrap();
        let a = Key::generate(id.clone()).unwrap();
        let b = Key::generate(id).unwrap();
        assert_eq!(a.secret.len(), GENERATED_KEY_LEN);
        assert_ne!(*a.secret, *b.secret);
    }

    #[test]
    fn diff_names_added_removed_and_rotated_ids() {
        let key = |id: &str, byte: u8| Key::new(KeyId::new(id).unwrap(), &[byte; 32]).unwrap();
        let mut old = Keyring::new();
        old.insert(key("alice", 1));
        old.insert(key("bob", 2));
        let mut new = Keyring::new();
        new.insert(key("bob", 3));
        new.insert(key("carol", 4));
        let diff = old.diff(&new);
        fn names(ids: &[KeyId]) -> Vec<&str> {
            ids.iter().map(KeyId::as_str).collect()
        }
        assert_eq!(names(&diff.added), ["carol"]);
        assert_eq!(names(&diff.removed), ["alice"]);
        assert_eq!(names(&diff.changed), ["bob"]);
        assert!(old.diff(&old.clone()).is_empty());
    }
}
