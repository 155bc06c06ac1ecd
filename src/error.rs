//! The one error type of the crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::KeyId;

/// Everything that can go wrong in linkgate, on either side of a handshake or while loading keys.
///
/// Messages never contain key bytes or proofs. On the server side the variants say *why* a
/// connection was refused, for the operator's log; the peer itself only ever sees one of three
/// verdict bytes, so `UnknownKeyId` and `WrongProof` look the same to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key file could not be used.
    #[error("key file {}: {problem}", path.display())]
    KeyFile {
        /// The file that was refused.
        path: PathBuf,
        /// Why it was refused.
        problem: KeyFileProblem,
    },
    /// A directory of keys holds no `*.key` file.
    #[error("no *.key files in {}", .0.display())]
    NoKeys(PathBuf),
    /// A key given in code has the wrong length.
    #[error("a key must be 16 to 64 bytes long, this one has {0}")]
    KeyLength(usize),
    /// A key id that is empty, longer than 64 bytes, or has characters other than ASCII letters,
    /// digits, `.`, `_` and `-`.
    #[error("invalid key id {0:?}: use 1 to 64 ASCII letters, digits, '.', '_' or '-'")]
    InvalidKeyId(String),
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// A network or stream error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before the handshake finished.
    #[error("peer closed the connection during the handshake")]
    ClosedEarly,

    // Server side: why a client was refused.
    /// Server side: the client named a key id that is not in the keyring (the client saw `denied`).
    #[error("denied: unknown key id {0}")]
    UnknownKeyId(KeyId),
    /// Server side: the client's proof is wrong for its key id (the client saw `denied`).
    #[error("denied: wrong proof for key id {0}")]
    WrongProof(KeyId),
    /// Server side, seed protocol: the client's HMAC of the nonce matches no key.
    #[error("denied: the answer matches no key (seed protocol)")]
    SeedMismatch,
    /// Server side: the client's RESPONSE broke the wire format (the client saw `malformed`).
    #[error("malformed response: {0}")]
    MalformedResponse(Malformed),

    // Client side: what the server did.
    /// Client side: the server denied us (wrong key, or a key id it does not know).
    #[error("denied by server")]
    Denied,
    /// Client side: the server says our RESPONSE was malformed.
    #[error("server refused our response as malformed")]
    RefusedAsMalformed,
    /// Client side: the server's greeting is not `LGATE/1\n`.
    #[error("not a linkgate/1 server: it sent {0}")]
    NotLinkgate(String),
    /// Client side: the server's verdict byte is none of the defined ones.
    #[error("server sent a malformed verdict (byte 0x{0:02x})")]
    MalformedVerdict(u8),
    /// Client side: the server admitted us but could not prove it holds the key.
    #[error("server failed to prove the key: possible impostor")]
    ImpostorServer,
}

impl Error {
    /// True for the server-side reasons that the client sees as `denied`.
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            Error::UnknownKeyId(_) | Error::WrongProof(_) | Error::SeedMismatch | Error::Denied
        )
    }
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The file is missing or cannot be read.
    #[error("cannot read: {0}")]
    Unreadable(io::Error),
    /// The file cannot be created or written.
    #[error("cannot write: {0}")]
    Unwritable(io::Error),
    /// The file already exists and overwriting was not asked for.
    #[error("already exists (refusing to overwrite)")]
    AlreadyExists,
    /// The contents are not one line of hex.
    #[error("not a hex key (expected one line of hex digits)")]
    NotHex,
    /// The key is shorter than 16 or longer than 64 bytes.
    #[error("key is {0} bytes long; it must be 16 to 64 bytes")]
    Length(usize),
    /// The file is far too large to hold a key.
    #[error("file is too large to be a key file")]
    TooLarge,
    /// On Unix: the file can be read or written by group or others.
    #[error(
        "permissions {0:04o} are too open: it is accessible by group or others (run: chmod 600 on it)"
    )]
    Permissions(u32),
    /// The file's stem is not a valid key id.
    #[error(
        "the file name's stem is not a valid key id (use ASCII letters, digits, '.', '_', '-')"
    )]
    BadStem,
}

/// How a RESPONSE broke the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The mode byte is reserved.
    #[error("reserved mode 0x{0:02x}")]
    Mode(u8),
    /// The key id length is outside 1..=64.
    #[error("key id length {0} is outside 1..=64")]
    IdLength(u8),
    /// The key id has a byte that is not an ASCII letter, digit, `.`, `_` or `-`.
    #[error("key id has a forbidden character")]
    IdCharacters,
    /// The RESPONSE is shorter or longer than its header says.
    #[error("response has the wrong length")]
    Length,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
