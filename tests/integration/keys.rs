//! Key files: every refusal names the file and the reason; secrets never show in Debug/Display.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use linkgate::{Error, Key, KeyError, KeyFileOptions, KeyFileProblem, KeyId, Keyring};
use tempfile::TempDir;

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `contents` to `dir/name` with mode 0600.
fn key_file(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, contents).unwrap();
    #[cfg(unix)]
    set_mode(&path, 0o600);
    path
}

const HEX32: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn refusal(path: &Path) -> (KeyFileProblem, String) {
    match Key::from_file(path) {
        Err(err @ Error::Key(KeyError::File { .. })) => {
            let message = err.to_string();
            assert!(
                message.contains(&path.display().to_string()),
                "the message names the file: {message}"
            );
            let Error::Key(KeyError::File {
                path: named,
                problem,
            }) = err
            else {
                unreachable!()
            };
            assert_eq!(named, path);
            (problem, message)
        }
        other => panic!(
            "expected a key file error for {}, got {other:?}",
            path.display()
        ),
    }
}

#[test]
fn a_good_key_file_loads_with_its_stem_as_id() {
    let dir = TempDir::new().unwrap();
    let path = key_file(&dir, "alice.key", &format!("  {HEX32}\n\n"));
    let key = Key::from_file(&path).unwrap();
    assert_eq!(key.id().as_str(), "alice");
    assert_eq!(key.to_hex_line().as_str(), format!("{HEX32}\n"));
    let upper = key_file(&dir, "bob.key", &HEX32.to_uppercase());
    assert_eq!(
        Key::from_file(&upper).unwrap().to_hex_line().as_str(),
        format!("{HEX32}\n")
    );
}

#[test]
fn missing_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let (problem, message) = refusal(&dir.path().join("nobody.key"));
    assert!(
        matches!(problem, KeyFileProblem::Unreadable(_)),
        "{message}"
    );
    assert!(message.contains("cannot read"), "{message}");
}

#[test]
fn a_directory_is_not_a_key_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("sub.key");
    fs::create_dir(&path).unwrap();
    let (problem, message) = refusal(&path);
    assert!(
        matches!(problem, KeyFileProblem::NotRegular("a directory")),
        "{message}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_at_once_never_read() {
    let dir = TempDir::new().unwrap();
    let fifo = dir.path().join("x.key");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let started = Instant::now();
    let (problem, message) = refusal(&fifo);
    assert!(
        matches!(problem, KeyFileProblem::NotRegular("a FIFO")),
        "{message}"
    );
    // And in a directory scan, without hanging either.
    let err = Keyring::from_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("a FIFO"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "never blocked on the FIFO"
    );
}

#[test]
fn hex_base64_and_spiped_raw_keys_load_to_the_same_key() {
    let dir = TempDir::new().unwrap();
    let raw: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x80).collect();
    let hex_path = key_file(&dir, "hex.key", &hex::encode(&raw));
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let b64_path = key_file(&dir, "b64.key", &format!("{b64}\n"));
    let raw_path = dir.path().join("raw.key");
    fs::write(&raw_path, &raw).unwrap();
    #[cfg(unix)]
    set_mode(&raw_path, 0o600);
    let from_hex = Key::from_file(&hex_path).unwrap().to_hex_line();
    assert_eq!(
        Key::from_file(&raw_path).unwrap().to_hex_line(),
        from_hex,
        "raw bytes (spiped)"
    );
    assert_eq!(
        Key::from_file(&b64_path).unwrap().to_hex_line(),
        from_hex,
        "base64"
    );
}

#[test]
fn nearly_hex_is_refused_as_a_typo() {
    let dir = TempDir::new().unwrap();
    let (problem, message) = refusal(&key_file(&dir, "odd.key", &HEX32[1..]));
    assert!(
        matches!(problem, KeyFileProblem::MistypedHex(_)),
        "{message}"
    );
    assert!(message.contains("odd.key: looks like a hex key with a typo: 63 hex digits"));
}

#[test]
fn non_hex_is_refused() {
    let dir = TempDir::new().unwrap();
    for (name, contents) in [
        ("text.key", "this is not hex at all, just a password"),
        ("two.key", &format!("{} {}", &HEX32[..32], &HEX32[32..])),
        ("empty.key", "\n"),
    ] {
        let (problem, message) = refusal(&key_file(&dir, name, contents));
        assert!(
            matches!(problem, KeyFileProblem::NotAKey),
            "{name}: {message}"
        );
        assert!(
            message.contains("hex") && message.contains("raw bytes"),
            "{message}"
        );
        assert!(
            !message.contains("password"),
            "contents never echoed: {message}"
        );
    }
    let binary = dir.path().join("binary.key");
    fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    #[cfg(unix)]
    set_mode(&binary, 0o600);
    assert!(
        matches!(refusal(&binary).0, KeyFileProblem::NotAKey),
        "4 raw bytes are no key"
    );
}

#[test]
fn too_short_and_too_long_keys_are_refused() {
    let dir = TempDir::new().unwrap();
    let (problem, message) = refusal(&key_file(&dir, "short.key", &"ab".repeat(15)));
    assert!(matches!(problem, KeyFileProblem::Length(15)), "{message}");
    assert!(message.contains("15 bytes"), "{message}");
    let (problem, _) = refusal(&key_file(&dir, "long.key", &"ab".repeat(65)));
    assert!(matches!(problem, KeyFileProblem::Length(65)));
    assert!(Key::from_file(key_file(&dir, "min.key", &"ab".repeat(16))).is_ok());
    assert!(Key::from_file(key_file(&dir, "max.key", &"ab".repeat(64))).is_ok());
    let (problem, _) = refusal(&key_file(&dir, "huge.key", &"ab".repeat(10_000)));
    assert!(matches!(problem, KeyFileProblem::TooLarge));

    // For the seed protocols short keys are allowed, and the message says so.
    let seed = KeyFileOptions::new().with_short_keys_allowed(true);
    assert!(Key::from_file_with(key_file(&dir, "one.key", "ab"), &seed).is_ok());
    let long = key_file(&dir, "long.key", &"ab".repeat(65));
    let Err(Error::Key(KeyError::File { problem, .. })) = Key::from_file_with(&long, &seed) else {
        panic!("a 65-byte key loaded for the seed protocols");
    };
    assert!(matches!(problem, KeyFileProblem::SeedLength(65)));
    assert_eq!(
        problem.to_string(),
        "the key is 65 bytes long; a seed-protocol key must be 1 to 64 bytes"
    );
}

#[test]
fn a_stem_that_is_not_a_key_id_is_refused() {
    let dir = TempDir::new().unwrap();
    let (problem, _) = refusal(&key_file(&dir, "my key.key", HEX32));
    assert!(matches!(problem, KeyFileProblem::BadStem));
}

#[cfg(unix)]
#[test]
fn group_or_other_access_is_refused_unless_opted_out() {
    let dir = TempDir::new().unwrap();
    for mode in [0o640, 0o604, 0o644, 0o660, 0o606] {
        let path = key_file(&dir, "open.key", HEX32);
        set_mode(&path, mode);
        let (problem, message) = refusal(&path);
        assert!(
            matches!(problem, KeyFileProblem::Permissions(m) if m == mode),
            "{message}"
        );
        assert!(message.contains("chmod 600"), "{message}");
        let relaxed = KeyFileOptions::new().with_open_permissions_allowed(true);
        assert!(
            Key::from_file_with(&path, &relaxed).is_ok(),
            "explicit opt-out works"
        );
    }
    let private = key_file(&dir, "private.key", HEX32);
    set_mode(&private, 0o400);
    assert!(Key::from_file(&private).is_ok());
}

/// The gid of the "users" group (Debian's shared group, 100), from /etc/group.
#[cfg(unix)]
fn users_gid() -> Option<u32> {
    let groups = fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == "users").then(|| fields[2].parse().ok())?
    })
}

#[cfg(unix)]
#[test]
fn group_readable_keys_only_with_the_flag_and_never_for_a_private_group() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new().unwrap();
    let path = key_file(&dir, "svc.key", HEX32);
    set_mode(&path, 0o640);
    assert!(
        matches!(refusal(&path).0, KeyFileProblem::Permissions(0o640)),
        "strict by default"
    );
    let group_ok = KeyFileOptions::new().with_group_readable_allowed(true);
    // Giving the file to another group takes root, as .ci/run is (a file's owner is whoever
    // made it); elsewhere only the refusals below are checked.
    if fs::metadata(&path).unwrap().uid() != 0 {
        println!("not root: the root-group and shared-group cases are not checked");
    } else if let Some(users) = users_gid() {
        // Root's group never counts as a service group.
        std::os::unix::fs::chown(&path, None, Some(0)).unwrap();
        let err = Key::from_file_with(&path, &group_ok)
            .unwrap_err()
            .to_string();
        assert!(err.contains("private group"), "{err}");
        // Debian's shared "users" group is nobody's private group: the flag admits it.
        std::os::unix::fs::chown(&path, None, Some(users)).unwrap();
        assert!(
            Key::from_file_with(&path, &group_ok).is_ok(),
            "a group-readable key of a shared group is loaded with the flag"
        );
        assert!(
            matches!(refusal(&path).0, KeyFileProblem::Permissions(0o640)),
            "and still refused without it"
        );
    } else {
        println!("no \"users\" group: the shared-group case is not checked");
    }
    // Group write, or any access for others, is refused even with the flag.
    for mode in [0o660, 0o644] {
        set_mode(&path, mode);
        let err = Key::from_file_with(&path, &group_ok)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{mode:04o}")), "{err}");
    }
}

#[cfg(unix)]
#[test]
fn a_key_directory_others_can_write_to_is_refused() {
    let dir = TempDir::new().unwrap();
    key_file(&dir, "alice.key", HEX32);
    set_mode(dir.path(), 0o777);
    let err = Keyring::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("another user could add a key") && err.contains("0777"),
        "{err}"
    );
    let relaxed = KeyFileOptions::new().with_open_permissions_allowed(true);
    assert_eq!(
        Keyring::from_dir_with(dir.path(), &relaxed).unwrap().len(),
        1
    );
    set_mode(dir.path(), 0o700);
}

#[test]
fn hidden_key_files_are_skipped_not_loaded() {
    let dir = TempDir::new().unwrap();
    key_file(&dir, "alice.key", HEX32);
    key_file(&dir, ".hidden.key", HEX32);
    key_file(&dir, ".#alice.key", HEX32);
    let ring = Keyring::from_dir(dir.path()).unwrap();
    let ids: Vec<&str> = ring.ids().into_iter().map(KeyId::as_str).collect();
    assert_eq!(ids, ["alice"]);
}

#[test]
fn every_bad_key_file_is_listed_at_once() {
    let dir = TempDir::new().unwrap();
    key_file(&dir, "alice.key", HEX32);
    key_file(&dir, "bad.key", "zz");
    key_file(&dir, "short.key", "abcd");
    let err = Keyring::from_dir(dir.path()).unwrap_err();
    let Error::Key(KeyError::Files { problems, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems.len(), 2);
    let message = err.to_string();
    assert!(message.starts_with("2 key files in"), "{message}");
    assert!(
        message.contains("bad.key: not a key") && message.contains("short.key: the key is 2 bytes"),
        "{message}"
    );
}

#[test]
fn keyring_loads_every_key_file_in_a_directory() {
    let dir = TempDir::new().unwrap();
    key_file(&dir, "alice.key", HEX32);
    key_file(&dir, "bob.key", &"cd".repeat(32));
    key_file(&dir, "README.md", "not a key");
    key_file(&dir, "notes.txt", "not a key");
    let ring = Keyring::from_dir(dir.path()).unwrap();
    let ids: Vec<&str> = ring.ids().into_iter().map(KeyId::as_str).collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert!(ring.get("alice").is_some() && ring.get("carol").is_none());
    assert_eq!(Keyring::load(dir.path()).unwrap().len(), 2);
    assert_eq!(
        Keyring::load(dir.path().join("bob.key")).unwrap().ids()[0].as_str(),
        "bob"
    );
}

#[test]
fn keyring_refuses_a_directory_with_a_bad_key_or_no_key() {
    let dir = TempDir::new().unwrap();
    let empty = Keyring::from_dir(dir.path()).unwrap_err();
    assert!(matches!(empty, Error::Key(KeyError::NoKeys(_))));
    assert!(
        empty.to_string().contains("linkgate keygen"),
        "says how to make one: {empty}"
    );
    key_file(&dir, "alice.key", HEX32);
    let bad = key_file(&dir, "bad.key", "zz");
    match Keyring::from_dir(dir.path()) {
        Err(Error::Key(KeyError::File {
            path,
            problem: KeyFileProblem::NotAKey,
        })) => assert_eq!(path, bad),
        other => panic!("{other:?}"),
    }
    let missing = dir.path().join("missing");
    assert!(matches!(
        Keyring::from_dir(&missing),
        Err(Error::Key(KeyError::Directory { .. }))
    ));
}

#[test]
fn keyring_insert_in_code() {
    let mut ring = Keyring::new();
    assert!(ring.is_empty());
    let key = Key::new(KeyId::new("svc-1").unwrap(), &[42; 24]).unwrap();
    assert!(ring.insert(key.clone()).is_none());
    assert!(ring.insert(key).is_some(), "same id replaces");
    assert_eq!(ring.len(), 1);
}

#[test]
fn written_key_files_are_private_and_not_overwritten() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("new.key");
    let key = Key::generate(KeyId::new("new").unwrap()).unwrap();
    key.write_new_file(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let loaded = Key::from_file(&path).unwrap();
    assert_eq!(loaded.to_hex_line(), key.to_hex_line());
    assert_eq!(
        loaded.to_hex_line().len(),
        65,
        "32 bytes as hex plus a newline"
    );

    let other = Key::generate(KeyId::new("new").unwrap()).unwrap();
    match other.write_new_file(&path) {
        Err(Error::Key(KeyError::File {
            problem: KeyFileProblem::AlreadyExists,
            ..
        })) => {}
        result => panic!("{result:?}"),
    }
    let nowhere = dir.path().join("newdir/alice.key");
    let err = key.write_new_file(&nowhere).unwrap_err().to_string();
    assert!(
        err.contains("does not exist") && err.contains("mkdir"),
        "{err}"
    );
    assert_eq!(
        Key::from_file(&path).unwrap().to_hex_line(),
        key.to_hex_line(),
        "untouched"
    );

    #[cfg(unix)]
    set_mode(&path, 0o644);
    other.write_file_replacing(&path).unwrap();
    assert_eq!(
        Key::from_file(&path).unwrap().to_hex_line(),
        other.to_hex_line()
    );

    // Replaced in place: the mode becomes 0600, the file stays the same file (its owner and
    // group with it).
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(mode_of(&path), 0o600);
        let inode = fs::metadata(&path).unwrap().ino();
        key.write_file_replacing(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    }

    // A symlink is refused, never written through.
    #[cfg(unix)]
    {
        let precious = dir.path().join("precious.txt");
        fs::write(&precious, "not a key\n").unwrap();
        set_mode(&precious, 0o644);
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let err = key.write_file_replacing(&link).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Key(KeyError::File {
                    problem: KeyFileProblem::Symlink,
                    ..
                })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&precious).unwrap(), "not a key\n");
        assert_eq!(mode_of(&precious), 0o644, "the target's mode is untouched");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn debug_and_display_never_show_key_bytes() {
    let dir = TempDir::new().unwrap();
    let path = key_file(&dir, "alice.key", HEX32);
    let key = Key::from_file(&path).unwrap();
    let mut ring = Keyring::new();
    ring.insert(key.clone());
    let credentials = linkgate::Credentials::new(key.clone());
    let gate = linkgate::Gate::new(ring.clone()).unwrap();

    let shown = [
        format!("{key:?}"),
        format!("{key:#?}"),
        format!("{ring:?}"),
        format!("{credentials:?}"),
        format!("{gate:?}"),
    ];
    for text in &shown {
        assert!(text.contains("alice"), "the id is shown: {text}");
        for needle in [HEX32, "0x00, 0x01", "[0, 1, 2", "0, 1, 2, 3"] {
            assert!(!text.contains(needle), "key bytes leaked: {text}");
        }
    }
    // Errors about a key file never contain its contents either.
    let short_secret = key_file(&dir, "short.key", "deadbeefdeadbeef");
    let err = Key::from_file(&short_secret).unwrap_err();
    assert!(!err.to_string().contains("deadbeef") && !format!("{err:?}").contains("deadbeef"));
}
