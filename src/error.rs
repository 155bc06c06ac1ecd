//! The one error type of the crate, with a typed part for each kind of failure.
//!
//! [`Error`] groups server-side refusals ([`Refusal`]), client-side rejections ([`Rejection`]),
//! key problems ([`KeyError`]), sealed-record failures ([`RecordError`]), timeouts and I/O. Each
//! message is printed once: wrapping variants are transparent, so an error reporter that walks
//! `source()` never repeats a cause. [`Error::reason`] is a short, stable string for logs and
//! metrics labels; it never contains a key id or anything else a peer chose.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::KeyId;
use crate::mode::Mode;

/// Everything that can go wrong in linkgate, on either side of a handshake, in a sealed stream or
/// while loading keys.
///
/// Messages never contain key bytes, proofs or traffic secrets. The peer itself never learns the
/// server-side reason: it sees one of three verdict bytes, so an unknown key id and a wrong proof
/// look the same to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Server side: why the gate refused a client.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Client side: the server did not admit us, or cannot be trusted.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A key, key id or key file cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A sealed record could not be opened, or the sealed stream broke its rules.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The handshake did not finish in time.
    #[error(transparent)]
    Timeout(#[from] Timeout),
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the handshake")]
    ClosedEarly,
    /// A network or stream error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random(#[source] rand::rngs::SysError),
}

impl Error {
    /// A short, stable name for the kind of failure, for logs and metrics labels (e.g.
    /// `wrong_proof`, `timeout`, `impostor_server`). Never contains a key id or other peer input.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused(refusal) => refusal.reason(),
            Self::Rejected(rejection) => rejection.reason(),
            Self::Key(_) => "key",
            Self::Record(record) => record.reason(),
            Self::Timeout(_) => "timeout",
            Self::ClosedEarly => "closed_early",
            Self::Io(_) => "io",
            Self::Random(_) => "random",
        }
    }

    /// True when the client was denied (server side: unknown id, wrong proof or no matching seed
    /// key; client side: the server said `denied`).
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            Self::Refused(
                Refusal::UnknownKeyId(_) | Refusal::WrongProof(_) | Refusal::SeedMismatch
            ) | Self::Rejected(Rejection::Denied)
        )
    }
}

/// Lets `?` turn an [`Error`] into an `io::Error` inside `AsyncRead`/`AsyncWrite` code and other
/// I/O-shaped APIs. I/O errors come back as they were; the rest keep the [`Error`] as their inner
/// error, with a fitting kind.
impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Io(io) => io.kind(),
            Error::Timeout(_) => io::ErrorKind::TimedOut,
            Error::ClosedEarly => io::ErrorKind::UnexpectedEof,
            Error::Record(RecordError::Truncated) => io::ErrorKind::UnexpectedEof,
            Error::Record(_) => io::ErrorKind::InvalidData,
            Error::Refused(_) | Error::Rejected(_) => io::ErrorKind::PermissionDenied,
            Error::Key(_) => io::ErrorKind::InvalidInput,
            Error::Random(_) => io::ErrorKind::Other,
        };
        match err {
            Error::Io(io) => io,
            other => Self::new(kind, other),
        }
    }
}

/// Server side: why a client was refused. The client saw `denied`, `malformed`, or nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The client named a key id that is not in the keyring (the client saw `denied`).
    #[error("denied: unknown key id {0}")]
    UnknownKeyId(KeyId),
    /// The client's proof is wrong for its key id (the client saw `denied`).
    #[error("denied: wrong proof for key id {0}")]
    WrongProof(KeyId),
    /// Seed protocol: the client's HMAC of the nonce matches no key (the client was closed).
    #[error("denied: the answer matches no key (seed protocol)")]
    SeedMismatch,
    /// The RESPONSE broke the wire format (the client saw `malformed`).
    #[error("malformed response: {0}")]
    Malformed(Malformed),
    /// The client asked for a mode this gate does not allow (the client saw `malformed`).
    #[error("mode {mode} refused by policy: {policy}")]
    ModeNotAllowed {
        /// The mode the client asked for.
        mode: Mode,
        /// Which setting refused it.
        policy: &'static str,
    },
    /// Sealed with forward secrecy: the client's X25519 public key gave no usable shared secret.
    #[error("key exchange failed: the client's public key is invalid")]
    KeyExchange,
    /// A connection from a trusted load balancer had no valid PROXY protocol header, or one came
    /// from a source that is not trusted to send it.
    #[error("PROXY protocol header: {0}")]
    ProxyHeader(String),
}

impl Refusal {
    /// A short, stable name for the refusal (never the key id).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownKeyId(_) => "unknown_key_id",
            Self::WrongProof(_) => "wrong_proof",
            Self::SeedMismatch => "seed_mismatch",
            Self::Malformed(_) => "malformed",
            Self::ModeNotAllowed { .. } => "mode_not_allowed",
            Self::KeyExchange => "key_exchange",
            Self::ProxyHeader(_) => "proxy_header",
        }
    }
}

/// Client side: what the server did instead of admitting us.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The server denied us: a wrong key, or a key id it does not know.
    #[error("denied by the server")]
    Denied,
    /// The server refused our RESPONSE as malformed. Between two linkgate/1 implementations this
    /// means the server does not allow the mode we asked for.
    #[error("the server refused our response as malformed (it may not allow mode {0})")]
    RefusedAsMalformed(Mode),
    /// The server's greeting is not `LGATE/1\n`.
    #[error("not a linkgate/1 server: it sent {0}")]
    NotLinkgate(String),
    /// The server's verdict byte is none of the defined ones.
    #[error("the server sent a malformed verdict (byte 0x{0:02x})")]
    MalformedVerdict(u8),
    /// The server admitted us but could not prove it holds the key.
    #[error("the server failed to prove the key: possible impostor")]
    ImpostorServer,
    /// Sealed with forward secrecy: the server's X25519 public key gave no usable shared secret.
    #[error("key exchange failed: the server's public key is invalid")]
    KeyExchange,
    /// Asked for a seed protocol, the server greeted with `LGATE/1\n`: it speaks linkgate/1, and
    /// would refuse the seed answer.
    #[error("the server speaks linkgate/1, not the seed protocol")]
    SpeaksLinkgate1,
}

impl Rejection {
    /// A short, stable name for the rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::RefusedAsMalformed(_) => "refused_as_malformed",
            Self::NotLinkgate(_) => "not_linkgate",
            Self::MalformedVerdict(_) => "malformed_verdict",
            Self::ImpostorServer => "impostor_server",
            Self::KeyExchange => "key_exchange",
            Self::SpeaksLinkgate1 => "speaks_linkgate1",
        }
    }
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

/// What the handshake was waiting for when its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Waiting {
    /// Client side: the TCP connection.
    Connect,
    /// Client side: the server's CHALLENGE (a server that sends nothing may not be a gate).
    Challenge,
    /// Client side: the server's VERDICT.
    Verdict,
    /// Server side: a PROXY protocol header from a trusted load balancer.
    ProxyHeader,
    /// Server side: the client's RESPONSE.
    Response,
}

/// A handshake that did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Timeout {
    after: Duration,
    waiting: Waiting,
}

impl Timeout {
    pub(crate) fn new(after: Duration, waiting: Waiting) -> Self {
        Self { after, waiting }
    }

    /// The timeout that ran out (the setting, not the time left).
    pub fn after(&self) -> Duration {
        self.after
    }

    /// What the handshake was waiting for.
    pub fn waiting(&self) -> Waiting {
        self.waiting
    }

    fn describe(&self) -> String {
        let after = DurationText(self.after);
        match self.waiting {
            Waiting::Connect => format!("timed out after {after} connecting"),
            Waiting::Challenge => format!(
                "timed out after {after}: the server sent nothing (is it a linkgate gate? a server that waits for the client to speak first, such as HTTP or Redis, is not)"
            ),
            Waiting::Verdict => {
                format!("handshake timed out after {after} waiting for the server's verdict")
            }
            Waiting::ProxyHeader => {
                format!("timed out after {after} waiting for a PROXY protocol header")
            }
            Waiting::Response => {
                format!("handshake timed out after {after} waiting for the client's response")
            }
        }
    }
}

/// A duration as an operator would write it: `5s`, `300ms`, `1m30s`.
pub(crate) struct DurationText(pub(crate) Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let (secs, millis) = (d.as_secs(), d.subsec_millis());
        match (secs, millis) {
            (0, 0) => write!(f, "{}µs", d.subsec_micros()),
            (0, ms) => write!(f, "{ms}ms"),
            (s, 0) if s >= 60 && s % 60 == 0 => write!(f, "{}m", s / 60),
            (s, 0) if s >= 60 => write!(f, "{}m{}s", s / 60, s % 60),
            (s, 0) => write!(f, "{s}s"),
            (s, ms) => write!(f, "{s}.{ms:03}s"),
        }
    }
}

/// A key, key id or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key file was refused.
    #[error("key file {}: {problem}", path.display())]
    File {
        /// The file that was refused.
        path: PathBuf,
        /// Why it was refused.
        problem: KeyFileProblem,
    },
    /// Key contents that came from elsewhere than a file ([`crate::Key::decode`]: standard
    /// input, an environment variable) were refused.
    #[error("{problem}")]
    Contents {
        /// Why they were refused.
        problem: KeyFileProblem,
    },
    /// Several key files in one directory were refused; every one is listed.
    #[error("{} key files in {} cannot be used: {}", problems.len(), dir.display(), list(problems))]
    Files {
        /// The directory.
        dir: PathBuf,
        /// Each refused file (each a [`KeyError::File`]).
        problems: Vec<Self>,
    },
    /// A key directory itself is unsafe or unreadable.
    #[error("key directory {}: {problem}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why it was refused.
        problem: KeyFileProblem,
    },
    /// A directory of keys holds no key file.
    #[error("no *.key files in {} (create one with: linkgate keygen --out {}/NAME.key)", .0.display(), .0.display())]
    NoKeys(PathBuf),
    /// A key given in code has the wrong length.
    #[error("a key must be 16 to 64 bytes long, this one has {0}")]
    Length(usize),
    /// A key for the seed protocols (short keys allowed) is empty or longer than 64 bytes.
    #[error("a seed-protocol key must be 1 to 64 bytes long, this one has {0}")]
    SeedLength(usize),
    /// A key id that is empty, longer than 64 bytes, or has characters other than ASCII letters,
    /// digits, `.`, `_` and `-`.
    #[error("invalid key id {0:?}: use 1 to 64 ASCII letters, digits, '.', '_' or '-'")]
    InvalidId(String),
}

fn list(problems: &[KeyError]) -> String {
    problems
        .iter()
        .map(|problem| match problem {
            KeyError::File { path, problem } => format!(
                "{}: {problem}",
                path.file_name()
                    .unwrap_or(path.as_os_str())
                    .to_string_lossy()
            ),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a key file (or key directory) was refused.
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
    #[error("already exists (refusing to overwrite it)")]
    AlreadyExists,
    /// The directory the file should be written to does not exist.
    #[error("its directory does not exist (create it first: mkdir -m 700 {})", .0.display())]
    NoDirectory(PathBuf),
    /// Not a FIFO, device or socket: only regular files are read, so loading never blocks.
    #[error("not a regular file ({0}); a key file must be a plain file")]
    NotRegular(&'static str),
    /// The contents are neither hex, base64 nor a raw binary key.
    #[error(
        "not a key: expected one line of hex (linkgate keygen), one line of base64, or 32 to 64 raw bytes (spiped's format)"
    )]
    NotAKey,
    /// Replacing a key: the path is a symbolic link, which is never written through.
    #[error("is a symbolic link: a key is replaced only in a regular file (remove the link first)")]
    Symlink,
    /// Nearly a line of hex, as keygen writes: a digit lost, or a letter mistyped.
    #[error("looks like a hex key with a typo: {0}")]
    MistypedHex(String),
    /// The key is shorter than 16 or longer than 64 bytes.
    #[error("the key is {0} bytes long; it must be 16 to 64 bytes")]
    Length(usize),
    /// Loaded for the seed protocols (short keys allowed): empty or longer than 64 bytes.
    #[error("the key is {0} bytes long; a seed-protocol key must be 1 to 64 bytes")]
    SeedLength(usize),
    /// The file is far too large to hold a key.
    #[error("the file is too large to be a key file")]
    TooLarge,
    /// On Unix: the file can be read or written by group or others.
    #[error(
        "permissions {0:04o} are too open: it is accessible by group or others (run: chmod 600 on it)"
    )]
    Permissions(u32),
    /// On Unix: the file is group-readable, and group-readable keys were allowed, but its group
    /// is a user's private group or it is writable by the group.
    #[error(
        "permissions {mode:04o}: group access is allowed only for a read-only key in a shared service group, and {why}"
    )]
    GroupAccess {
        /// The file's mode.
        mode: u32,
        /// What is wrong with the group access.
        why: &'static str,
    },
    /// On Unix: the directory can be written by group or others, so another user could add a key.
    #[error(
        "permissions {0:04o}: group or others can write to it, so another user could add a key (run: chmod go-w on it)"
    )]
    DirectoryWritable(u32),
    /// The file's stem is not a valid key id.
    #[error(
        "the file name's stem is not a valid key id (use 1 to 64 ASCII letters, digits, '.', '_', '-', not starting with '.')"
    )]
    BadStem,
}

/// Why a sealed record or sealed stream failed. Nothing of a failed record is ever returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record's authentication tag does not verify: tampered, reordered, replayed or dropped.
    #[error("a record failed authentication (tampered, reordered or dropped)")]
    BadTag,
    /// The 5-byte record header is not `17 03 03 || length`.
    #[error("a record header is invalid")]
    BadHeader,
    /// The record's length field is out of range.
    #[error("a record length of {0} bytes is out of range")]
    BadLength(usize),
    /// The inner content type, alert or handshake message is not one the protocol allows.
    #[error("a record carries a message the protocol does not allow")]
    UnexpectedMessage,
    /// The stream ended without `close_notify`: the data may have been cut short.
    #[error("the stream was cut off without close_notify (truncated)")]
    Truncated,
    /// Bytes arrived after `close_notify`.
    #[error("bytes arrived after close_notify")]
    DataAfterClose,
    /// Too many records under one key without a key update.
    #[error("too many records under one key without a key update")]
    TooManyRecords,
    /// The stream had already failed; it cannot be used any more.
    #[error("the sealed stream had already failed")]
    Poisoned,
    /// The AEAD library refused an operation that cannot fail on valid lengths.
    #[error("the AEAD library failed")]
    Crypto,
}

impl RecordError {
    /// A short, stable name for the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadTag => "record_bad_tag",
            Self::BadHeader => "record_bad_header",
            Self::BadLength(_) => "record_bad_length",
            Self::UnexpectedMessage => "record_unexpected_message",
            Self::Truncated => "record_truncated",
            Self::DataAfterClose => "record_data_after_close",
            Self::TooManyRecords => "record_too_many",
            Self::Poisoned => "record_poisoned",
            Self::Crypto => "record_crypto",
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_print_once() {
        let err = Error::from(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(err.to_string(), "refused");
        // transparent: the source chain is the io::Error's own (none here), not the io::Error
        // again.
        assert!(std::error::Error::source(&err).is_none());
        let back: io::Error = err.into();
        assert_eq!(back.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn reasons_are_stable_and_never_carry_the_id() {
        let id = KeyId::new("mallory").unwrap();
        let err = Error::from(Refusal::UnknownKeyId(id));
        assert_eq!(err.reason(), "unknown_key_id");
        assert_eq!(err.to_string(), "denied: unknown key id mallory");
        assert!(err.is_denied());
        assert_eq!(Error::from(Rejection::Denied).reason(), "denied");
        assert_eq!(Error::from(RecordError::BadTag).reason(), "record_bad_tag");
    }

    #[test]
    fn timeouts_show_the_setting() {
        let t = Timeout::new(Duration::from_secs(5), Waiting::Challenge);
        assert!(
            t.to_string()
                .starts_with("timed out after 5s: the server sent nothing")
        );
        let t = Timeout::new(Duration::from_millis(300), Waiting::Response);
        assert_eq!(
            t.to_string(),
            "handshake timed out after 300ms waiting for the client's response"
        );
        assert_eq!(DurationText(Duration::from_secs(90)).to_string(), "1m30s");
        assert_eq!(
            DurationText(Duration::from_millis(1500)).to_string(),
            "1.500s"
        );
    }

    #[test]
    fn several_bad_key_files_are_listed_together() {
        let err = KeyError::Files {
            dir: "keys".into(),
            problems: vec![
                KeyError::File {
                    path: "keys/a.key".into(),
                    problem: KeyFileProblem::NotAKey,
                },
                KeyError::File {
                    path: "keys/b.key".into(),
                    problem: KeyFileProblem::Permissions(0o644),
                },
            ],
        };
        let text = err.to_string();
        assert!(
            text.starts_with("2 key files in keys cannot be used: a.key: not a key"),
            "{text}"
        );
        assert!(text.contains("b.key: permissions 0644"), "{text}");
    }
}
