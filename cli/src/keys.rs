//! Where keys come from (key files and directories, standard input, an environment variable),
//! and loading them the way every subcommand does.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use linkgate::{Credentials, Key, KeyFileOptions, KeyId, Keyring, Protocol};

use crate::args::{ClientArgs, KeyFileArgs};

/// The largest key accepted from standard input or the environment, in bytes (as a key file).
const MAX_KEY_INPUT: u64 = 4096;

/// Where a gate's keys come from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// A key file or a directory of `*.key` files: reloadable.
    Path(PathBuf),
    /// One key given at start (standard input, an environment variable): kept as read.
    Given { keyring: Keyring, from: String },
}

impl KeySource {
    /// The source for `--keys PATH|-` or `--key-env NAME`, with `--key-id` for the given ones.
    pub(crate) fn new(
        keys: Option<&Path>,
        key_env: Option<&str>,
        key_id: Option<&str>,
        options: &KeyFileOptions,
    ) -> Result<Option<Self>> {
        let given = |from: &str, read: &dyn Fn() -> Result<Key>| -> Result<Option<Self>> {
            let mut keyring = Keyring::new();
            keyring.insert(read()?);
            Ok(Some(Self::Given {
                keyring,
                from: from.to_owned(),
            }))
        };
        match (keys, key_env) {
            (Some(_), Some(_)) => {
                bail!("give the keys either with --keys or with --key-env, not both")
            }
            (Some(path), None) if path == Path::new("-") => {
                let id = required_id(key_id, "--keys -", "--key-id")?;
                given("standard input", &|| read_stdin(&id, options))
            }
            (Some(path), None) => {
                if key_id.is_some() {
                    bail!(
                        "--key-id names a key read from standard input (--keys -) or --key-env; the key files in {} are named by their file names",
                        path.display()
                    );
                }
                Ok(Some(Self::Path(path.to_path_buf())))
            }
            (None, None) if key_id.is_some() => {
                bail!("--key-id names a key read with --keys - or --key-env: give one of them")
            }
            (None, Some(var)) => {
                let id = required_id(key_id, "--key-env", "--key-id")?;
                given(&format!("${var}"), &|| read_env(var, &id, options))
            }
            (None, None) => Ok(None),
        }
    }

    /// Loads the keyring (again, for a reload).
    pub(crate) fn load(&self, options: &KeyFileOptions) -> Result<Keyring> {
        match self {
            Self::Path(path) => Ok(Keyring::load_with(path, options)?),
            Self::Given { keyring, .. } => Ok(keyring.clone()),
        }
    }

    /// The path to watch for changes, if any.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Self::Path(path) => Some(path),
            Self::Given { .. } => None,
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Given { from, .. } => f.write_str(from),
        }
    }
}

fn required_id(id: Option<&str>, source: &str, flag: &str) -> Result<KeyId> {
    let Some(id) = id else {
        bail!("a key from {source} has no file name to take its id from: add {flag} NAME");
    };
    Ok(KeyId::new(id)?)
}

fn read_stdin(id: &KeyId, options: &KeyFileOptions) -> Result<Key> {
    let mut contents = zeroize::Zeroizing::new(Vec::with_capacity(MAX_KEY_INPUT as usize + 1));
    // Through a duplicate of fd 0, not std's stdin: that one copies what it reads into a
    // process-wide buffer that is never wiped, and the key would stay there.
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot read the key from standard input")?;
    std::fs::File::from(stdin)
        .take(MAX_KEY_INPUT + 1)
        .read_to_end(&mut contents)
        .context("cannot read the key from standard input")?;
    if contents.len() as u64 > MAX_KEY_INPUT {
        bail!("standard input holds more than a key (over {MAX_KEY_INPUT} bytes)");
    }
    Key::decode(id.clone(), &contents, options.short_keys_allowed())
        .context("the key on standard input")
}

fn read_env(var: &str, id: &KeyId, options: &KeyFileOptions) -> Result<Key> {
    let Some(value) = std::env::var_os(var) else {
        bail!("--key-env {var}: the environment variable is not set");
    };
    let contents = zeroize::Zeroizing::new(value.into_encoded_bytes());
    if contents.len() as u64 > MAX_KEY_INPUT {
        bail!("--key-env {var}: the value is longer than a key");
    }
    // The value itself never appears in a message.
    Key::decode(id.clone(), &contents, options.short_keys_allowed())
        .with_context(|| format!("the key in ${var}"))
}

/// The key file checks the flags ask for.
pub(crate) fn options(args: &KeyFileArgs, protocol: Protocol) -> KeyFileOptions {
    KeyFileOptions::new()
        .with_open_permissions_allowed(args.allow_open_key_permissions)
        .with_group_readable_allowed(args.allow_group_readable_keys)
        .with_short_keys_allowed(protocol.is_seed())
}

/// The client's key from `--key PATH|-` or `--key-env NAME` (with `--id`).
pub(crate) fn client_key(args: &ClientArgs) -> Result<Key> {
    let options = options(&args.key_files, args.protocol);
    let key = match (&args.key, &args.key_env) {
        (Some(_), Some(_)) => bail!("give the key either with --key or with --key-env, not both"),
        (Some(path), None) if path == Path::new("-") => read_stdin(
            &required_id(args.id.as_deref(), "--key -", "--id")?,
            &options,
        )?,
        (None, Some(var)) => read_env(
            var,
            &required_id(args.id.as_deref(), "--key-env", "--id")?,
            &options,
        )?,
        (path, None) => {
            let path = path
                .clone()
                .unwrap_or_else(|| PathBuf::from("keys/default.key"));
            let loaded = match &args.id {
                Some(id) => Key::from_file_as(KeyId::new(id.as_str())?, &path, &options),
                None => Key::from_file_with(&path, &options),
            };
            loaded.map_err(|err| {
                // A FIFO or device (--key /dev/stdin), not a directory: say how to read a key
                // from standard input instead.
                let special = matches!(
                    &err,
                    linkgate::Error::Key(linkgate::KeyError::File {
                        problem: linkgate::KeyFileProblem::NotRegular(kind),
                        ..
                    }) if *kind != "a directory"
                );
                let err = anyhow::Error::new(err);
                if special {
                    err.context("to read a key from standard input, use --key - with --id NAME")
                } else {
                    err
                }
            })?
        }
    };
    if key.is_short() {
        warn_short_key(&key);
    }
    Ok(key)
}

/// The client's credentials: the key, `--mode`, `--protocol`, `--timeout`.
pub(crate) fn credentials(args: &ClientArgs) -> Result<Credentials> {
    Ok(Credentials::new(client_key(args)?)
        .with_timeout(args.timeout)
        .with_protocol(args.protocol)
        .with_mode(client_mode(args)?))
}

/// `--mode`, which the seed protocols do not have.
fn client_mode(args: &ClientArgs) -> Result<linkgate::Mode> {
    match args.mode {
        Some(mode) if args.protocol.is_seed() => bail!(
            "--mode {mode} does not apply to --protocol {}: it has no modes (plain only)",
            args.protocol.name()
        ),
        Some(mode) => Ok(mode),
        None => Ok(linkgate::Mode::default()),
    }
}

pub(crate) fn warn_short_key(key: &Key) {
    tracing::warn!(
        key_id = %key.id(),
        bytes = key.byte_len(),
        "short key accepted only because of a seed --protocol; use 32 random bytes (linkgate keygen)"
    );
}

pub(crate) fn warn_if_seed(protocol: Protocol) {
    if protocol.is_seed() {
        tracing::warn!(
            "--protocol {}: no key ids, no server authentication (any server can pose as the real one) and no sealing; for compatibility with the original recipe only",
            protocol.name()
        );
    }
}
