//! Key files: formats, permission checks, loading without ever blocking, and writing.
//!
//! Formats, tried in this order (the first that fits wins, so no file means two things):
//! 1. one line of hex (what `linkgate keygen` writes);
//! 2. one line of standard base64 (with or without padding);
//! 3. 32 to 64 raw bytes that are not text (spiped's format, e.g. `dd if=/dev/urandom bs=32
//!    count=1`): raw keys are taken only when at least one byte is not printable ASCII, so
//!    text (a password) can never be read as a raw key.
//!
//! A line that is nearly hex (a digit lost, one or two characters of base64 in place of digits) is
//! refused, never read as base64.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{Error, KeyError, KeyFileProblem, Result};
use crate::keys::{Key, KeyId, MAX_KEY_LEN, MIN_KEY_LEN};

/// A key file larger than this is refused before it is read (a 64-byte key is 128 hex digits).
const MAX_KEY_FILE_LEN: u64 = 4096;
/// Shortest raw binary key accepted (spiped's keys are usually 32 bytes).
const MIN_RAW_KEY_LEN: usize = 32;

/// How strictly key files are checked when loaded.
///
/// ```
/// let relaxed = linkgate::KeyFileOptions::new().with_group_readable_allowed(true);
/// assert!(relaxed.group_readable_allowed() && !relaxed.open_permissions_allowed());
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct KeyFileOptions {
    open_permissions_allowed: bool,
    group_readable_allowed: bool,
    short_keys_allowed: bool,
}

impl KeyFileOptions {
    /// The default: on Unix, refuse a key file that group or others can access (as ssh does), and
    /// a key directory that group or others can write to.
    pub fn new() -> Self {
        Self::default()
    }

    /// Skip the permission checks on key files and key directories, e.g. for keys mounted by an
    /// orchestrator with wider modes. Prefer fixing the modes: anyone who can read a key can get
    /// in, and anyone who can write to the directory can add one.
    pub fn with_open_permissions_allowed(mut self, allowed: bool) -> Self {
        self.open_permissions_allowed = allowed;
        self
    }

    /// Whether the permission checks are skipped.
    pub fn open_permissions_allowed(&self) -> bool {
        self.open_permissions_allowed
    }

    /// Accept a key file that its group may read (mode 0640 or 0440), as when a service reads its
    /// key through a shared service group under systemd. Only read access for the group, none
    /// for others, and only when the file's group is not some user's private group (judged from
    /// `/etc/group` and `/etc/passwd`).
    pub fn with_group_readable_allowed(mut self, allowed: bool) -> Self {
        self.group_readable_allowed = allowed;
        self
    }

    /// Whether group-readable key files are accepted.
    pub fn group_readable_allowed(&self) -> bool {
        self.group_readable_allowed
    }

    /// Accept keys shorter than 16 bytes (down to 1 byte). Only the `seed` protocol, kept for
    /// existing deployments of the original recipe with short text keys, can use them: a
    /// [`crate::Gate`] or client speaking linkgate/1 refuses such a key.
    pub fn with_short_keys_allowed(mut self, allowed: bool) -> Self {
        self.short_keys_allowed = allowed;
        self
    }

    /// Whether short keys are accepted.
    pub fn short_keys_allowed(&self) -> bool {
        self.short_keys_allowed
    }
}

fn file_error(path: &Path, problem: KeyFileProblem) -> Error {
    KeyError::File {
        path: path.to_path_buf(),
        problem,
    }
    .into()
}

/// The key id a key file's name gives: its stem, which must be a key id and must not start with
/// a dot (hidden files are skipped in directories, so such a key would silently never load).
pub(crate) fn id_from_path(path: &Path) -> Result<KeyId> {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| !stem.starts_with('.'))
        .and_then(|stem| KeyId::new(stem).ok())
        .ok_or_else(|| file_error(path, KeyFileProblem::BadStem))
}

/// Loads one key file; its stem is the key id.
pub(crate) fn load(path: &Path, options: &KeyFileOptions) -> Result<Key> {
    load_as(id_from_path(path)?, path, options)
}

/// Loads one key file under `id`, whatever the file is called.
pub(crate) fn load_as(id: KeyId, path: &Path, options: &KeyFileOptions) -> Result<Key> {
    let contents = read(path, options)?;
    let secret = decode(&contents).map_err(|problem| file_error(path, problem))?;
    if options.short_keys_allowed && !(1..=MAX_KEY_LEN).contains(&secret.len()) {
        return Err(file_error(path, KeyFileProblem::SeedLength(secret.len())));
    }
    if !options.short_keys_allowed && !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&secret.len()) {
        return Err(file_error(path, KeyFileProblem::Length(secret.len())));
    }
    Ok(Key::from_checked(id, secret))
}

/// Decodes a key file's contents (hex, base64 or raw; see the module's documentation). The
/// length is not judged here.
pub(crate) fn decode(contents: &[u8]) -> std::result::Result<Zeroizing<Vec<u8>>, KeyFileProblem> {
    let is_text = contents
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if !is_text {
        return if (MIN_RAW_KEY_LEN..=MAX_KEY_LEN).contains(&contents.len()) {
            Ok(Zeroizing::new(contents.to_vec()))
        } else {
            Err(KeyFileProblem::NotAKey)
        };
    }
    let text = contents.trim_ascii();
    if text.is_empty() || text.iter().any(u8::is_ascii_whitespace) {
        return Err(KeyFileProblem::NotAKey);
    }
    if text.len().is_multiple_of(2) && text.iter().all(u8::is_ascii_hexdigit) {
        let mut secret = Zeroizing::new(vec![0u8; text.len() / 2]);
        hex::decode_to_slice(text, &mut secret).map_err(|_| KeyFileProblem::NotAKey)?;
        return Ok(secret);
    }
    if let Some(typo) = hex_typo(text) {
        return Err(KeyFileProblem::MistypedHex(typo));
    }
    // Sized up front so decoding never reallocates and leaves a copy of the key behind.
    let mut secret = Zeroizing::new(Vec::with_capacity(text.len()));
    let engine = &base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode_vec(text, &mut secret)
        .map_err(|_| KeyFileProblem::NotAKey)?;
    Ok(secret)
}

/// A line that is nearly a hex key (as keygen writes) would otherwise be read as base64: a
/// digit lost or a letter mistyped, and the gate would hold a key nobody else has. A random
/// base64 key is this close to hex about once in 10^17.
fn hex_typo(text: &[u8]) -> Option<String> {
    if text.len() < 2 * crate::keys::MIN_KEY_LEN - 1 {
        return None;
    }
    let mut not_hex = text
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.is_ascii_hexdigit());
    match (not_hex.next(), not_hex.next(), not_hex.next()) {
        (None, _, _) => Some(format!(
            "{} hex digits, an odd number: one is missing or extra",
            text.len()
        )),
        // Positions only: a message never shows any of the key's characters.
        (Some((at, &b)), None, _) if is_base64_symbol(b) => Some(format!(
            "character {} is not a hex digit (0-9, a-f)",
            at + 1
        )),
        (Some((at, &b)), Some((other, &c)), None) if is_base64_symbol(b) && is_base64_symbol(c) => {
            Some(format!(
                "characters {} and {} are not hex digits (0-9, a-f)",
                at + 1,
                other + 1
            ))
        }
        _ => None,
    }
}

/// A character of the standard base64 alphabet other than padding: a hex line with one or two
/// of these in place of digits would be read as base64.
fn is_base64_symbol(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Reads a key file's bytes: only a regular file, never blocking (a FIFO or device is refused
/// before it is opened, and opened non-blocking in case it was swapped in meanwhile), with the
/// permission checks, and at most [`MAX_KEY_FILE_LEN`] bytes.
fn read(path: &Path, options: &KeyFileOptions) -> Result<Zeroizing<Vec<u8>>> {
    let unreadable = |err| file_error(path, KeyFileProblem::Unreadable(err));
    check_regular(path, &fs::metadata(path).map_err(unreadable)?)?;
    let mut open = fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, libc::O_NONBLOCK);
    let file = open.open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    check_regular(path, &metadata)?;
    #[cfg(unix)]
    check_file_permissions(path, &metadata, options)?;
    #[cfg(not(unix))]
    let _ = options;

    // Room for the largest accepted file up front, so reading never reallocates and leaves
    // copies of the key in freed memory.
    let mut contents = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut contents)
        .map_err(unreadable)?;
    if contents.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(file_error(path, KeyFileProblem::TooLarge));
    }
    Ok(contents)
}

fn check_regular(path: &Path, metadata: &fs::Metadata) -> Result<()> {
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let name = if kind.is_dir() {
        "a directory"
    } else {
        special_file_kind(&kind)
    };
    Err(file_error(path, KeyFileProblem::NotRegular(name)))
}

#[cfg(unix)]
fn special_file_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a plain file"
    }
}

#[cfg(not(unix))]
fn special_file_kind(_: &fs::FileType) -> &'static str {
    "not a plain file"
}

#[cfg(unix)]
fn check_file_permissions(
    path: &Path,
    metadata: &fs::Metadata,
    options: &KeyFileOptions,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if options.open_permissions_allowed {
        return Ok(());
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if !options.group_readable_allowed {
        return Err(file_error(path, KeyFileProblem::Permissions(mode)));
    }
    let why = if mode & 0o007 != 0 {
        Some("others have access")
    } else if mode & 0o030 != 0 {
        Some("the group may write or execute it")
    } else if groups::is_private_group(metadata.gid()) {
        Some("its group is a user's private group")
    } else {
        None
    };
    match why {
        Some(why) => Err(file_error(path, KeyFileProblem::GroupAccess { mode, why })),
        None => Ok(()),
    }
}

#[cfg(unix)]
mod groups {
    //! Whether a group is some user's private group (the Debian "user private group" scheme: a
    //! group named like a user, that user's primary group, with no other members).

    use std::fs;

    pub(super) fn is_private_group(gid: u32) -> bool {
        let (Ok(group), Ok(passwd)) = (
            fs::read_to_string("/etc/group"),
            fs::read_to_string("/etc/passwd"),
        ) else {
            // Unknown: do not loosen the check.
            return true;
        };
        is_private_in(gid, &group, &passwd)
    }

    /// The check on the files' contents, so it can be tested without touching /etc.
    pub(super) fn is_private_in(gid: u32, group: &str, passwd: &str) -> bool {
        let gid_text = gid.to_string();
        let Some((name, members)) = group.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 4 && fields[2] == gid_text).then(|| (fields[0], fields[3]))
        }) else {
            return true;
        };
        let owner_is_user = passwd.lines().any(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            fields.len() >= 4 && fields[0] == name && fields[3] == gid_text
        });
        // The root group is never a service group.
        gid == 0 || (owner_is_user && members.trim().is_empty())
    }

    #[cfg(test)]
    mod tests {
        use super::is_private_in;

        const GROUP: &str = "root:x:0:\nalice:x:1000:\nredis:x:110:\nlinkgate:x:990:alice\n";
        const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nredis:x:110:110::/var/lib/redis:/usr/sbin/nologin\n";

        #[test]
        fn private_and_service_groups() {
            assert!(is_private_in(1000, GROUP, PASSWD), "alice's own group");
            assert!(is_private_in(110, GROUP, PASSWD), "redis's own group");
            assert!(!is_private_in(990, GROUP, PASSWD), "a shared service group");
            assert!(is_private_in(0, GROUP, PASSWD), "root");
            assert!(
                is_private_in(4242, GROUP, PASSWD),
                "unknown groups stay strict"
            );
        }
    }
}

/// The `*.key` files directly inside `dir`, sorted so loading order (and errors) are stable.
///
/// On Unix the directory is refused if group or others can write to it (unless open permissions
/// are allowed). Hidden files (`.name.key`) are skipped with a warning: editors and tools leave
/// such files behind (lock files, backups), and a key named after one would never be wanted.
pub fn key_files_in(dir: &Path, options: &KeyFileOptions) -> Result<Vec<PathBuf>> {
    let unreadable = |err| -> Error {
        KeyError::Directory {
            path: dir.to_path_buf(),
            problem: KeyFileProblem::Unreadable(err),
        }
        .into()
    };
    #[cfg(unix)]
    if !options.open_permissions_allowed {
        use std::os::unix::fs::MetadataExt;
        let mode = fs::metadata(dir).map_err(unreadable)?.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(KeyError::Directory {
                path: dir.to_path_buf(),
                problem: KeyFileProblem::DirectoryWritable(mode),
            }
            .into());
        }
    }
    #[cfg(not(unix))]
    let _ = options;
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().is_none_or(|ext| ext != "key") {
            continue;
        }
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if hidden {
            tracing::warn!(file = %path.display(), "skipping a hidden *.key file (not loaded)");
            continue;
        }
        paths.push(path);
    }
    paths.sort();
    Ok(paths)
}

/// Writes the key as one line of hex, mode 0600.
pub(crate) fn write(key: &Key, path: &Path, replace: bool) -> Result<()> {
    if !replace {
        return write_new(key, path);
    }
    // Replaced in place, so the file keeps its owner and group (a key made by root for the
    // service's user stays readable by it). Never through a symlink: that would send the key,
    // and a chmod, to whatever the link points at.
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    }
    let mut file = options.open(path).map_err(|err| {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let problem = match err.raw_os_error() {
            #[cfg(unix)]
            Some(libc::ELOOP) => KeyFileProblem::Symlink,
            _ if err.kind() == io::ErrorKind::NotFound && parent.is_some_and(|p| !p.exists()) => {
                KeyFileProblem::NoDirectory(parent.unwrap_or(path).to_path_buf())
            }
            _ => KeyFileProblem::Unwritable(err),
        };
        file_error(path, problem)
    })?;
    let unwritable = |err| file_error(path, KeyFileProblem::Unwritable(err));
    // `mode` only applies to a file it creates; a replaced one is set to 0600 here.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(unwritable)?;
    }
    file.write_all(key.to_hex_line().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(unwritable)
}

/// Creates `path` (mode 0600 on Unix) and writes the key to it. A write that fails removes the
/// new file, so no half-written key is left.
fn write_new(key: &Key, path: &Path) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|err| {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let problem = match err.kind() {
            io::ErrorKind::AlreadyExists => KeyFileProblem::AlreadyExists,
            io::ErrorKind::NotFound if parent.is_some_and(|p| !p.exists()) => {
                KeyFileProblem::NoDirectory(parent.unwrap_or(path).to_path_buf())
            }
            _ => KeyFileProblem::Unwritable(err),
        };
        file_error(path, problem)
    })?;
    let written = file
        .write_all(key.to_hex_line().as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(err) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(file_error(path, KeyFileProblem::Unwritable(err)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX32: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn hex_base64_and_raw_keys_decode_to_the_same_bytes() {
        let expected: Vec<u8> = (0..32).collect();
        assert_eq!(
            *decode(format!("  {HEX32}\r\n").as_bytes()).unwrap(),
            expected
        );
        assert_eq!(*decode(HEX32.to_uppercase().as_bytes()).unwrap(), expected);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&expected);
        assert_eq!(*decode(format!("{b64}\n").as_bytes()).unwrap(), expected);
        assert_eq!(
            *decode(b64.trim_end_matches('=').as_bytes()).unwrap(),
            expected
        );
        // Raw: 32 bytes with non-text bytes in them.
        assert_eq!(*decode(&expected).unwrap(), expected);
    }

    #[test]
    fn text_that_is_no_key_is_refused_never_taken_raw() {
        for text in [
            "this is not hex at all, just a password!",
            "correct horse battery staple correct horse",
            &format!("{} {}", &HEX32[..32], &HEX32[32..]),
            "\n",
            "",
            "zz",
        ] {
            assert!(
                matches!(decode(text.as_bytes()), Err(KeyFileProblem::NotAKey)),
                "{text:?}"
            );
        }
        // Binary, but too short to be a raw key.
        assert!(matches!(
            decode(&[0xff, 0, 0x80]),
            Err(KeyFileProblem::NotAKey)
        ));
        assert!(matches!(decode(&[0xff; 65]), Err(KeyFileProblem::NotAKey)));
    }

    #[test]
    fn nearly_hex_is_a_typo_never_base64() {
        // A digit lost: 63 hex digits.
        let lost = &HEX32[1..];
        let Err(KeyFileProblem::MistypedHex(why)) = decode(lost.as_bytes()) else {
            panic!("63 hex digits were taken");
        };
        assert_eq!(why, "63 hex digits, an odd number: one is missing or extra");
        // A letter mistyped: valid base64 (48 bytes), but meant as hex.
        let mistyped = format!("{}g{}", &HEX32[..10], &HEX32[11..]);
        assert!(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(&mistyped)
                .is_ok()
        );
        let Err(problem @ KeyFileProblem::MistypedHex(_)) = decode(mistyped.as_bytes()) else {
            panic!("{mistyped} was taken");
        };
        assert_eq!(
            problem.to_string(),
            "looks like a hex key with a typo: character 11 is not a hex digit (0-9, a-f)"
        );
        let two = format!("{}xy{}", &HEX32[..10], &HEX32[12..]);
        let Err(KeyFileProblem::MistypedHex(why)) = decode(two.as_bytes()) else {
            panic!("{two} was taken");
        };
        // Where, never what: no character of the key is shown.
        assert_eq!(why, "characters 11 and 12 are not hex digits (0-9, a-f)");
        // base64's other two symbols in place of a digit are typos too, not a 48-byte key.
        for typo in ["+", "/", "+/"] {
            let line = format!("{}{typo}{}", &HEX32[..10], &HEX32[10 + typo.len()..]);
            assert!(
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(&line)
                    .is_ok()
            );
            assert!(
                matches!(decode(line.as_bytes()), Err(KeyFileProblem::MistypedHex(_))),
                "{line} was taken"
            );
        }
        // Real base64 keys are nowhere near hex, and still load.
        for len in [16, 32, 48, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert_eq!(*decode(b64.as_bytes()).unwrap(), bytes, "{b64}");
        }
    }

    #[test]
    fn hidden_and_bad_stems_are_refused_as_ids() {
        assert!(id_from_path(Path::new("keys/.hidden.key")).is_err());
        assert!(id_from_path(Path::new("keys/.key")).is_err());
        assert!(id_from_path(Path::new("keys/my key.key")).is_err());
        assert_eq!(
            id_from_path(Path::new("keys/alice.key")).unwrap().as_str(),
            "alice"
        );
    }
}
