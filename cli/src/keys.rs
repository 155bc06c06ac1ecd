//! Loading keys the way every subcommand does.

use anyhow::Result;
use linkgate::{Credentials, Key, KeyFileOptions, KeyId, Protocol};

use crate::args::{ClientArgs, KeyFileArgs};

/// The key file checks the flags ask for.
pub(crate) fn options(args: &KeyFileArgs, protocol: Protocol) -> KeyFileOptions {
    KeyFileOptions::new()
        .with_open_permissions_allowed(args.allow_open_key_permissions)
        .with_group_readable_allowed(args.allow_group_readable_keys)
        .with_short_keys_allowed(protocol == Protocol::Seed)
}

/// The client's credentials from `--key`, `--id`, `--mode`, `--protocol`, `--timeout`.
pub(crate) fn credentials(args: &ClientArgs) -> Result<Credentials> {
    let mut key = Key::from_file_with(&args.key, &options(&args.key_files, args.protocol))?;
    if key.is_short() {
        warn_short_key(&key);
    }
    if let Some(id) = &args.id {
        key = key.with_id(KeyId::new(id.as_str())?);
    }
    Ok(Credentials::new(key)
        .with_timeout(args.timeout)
        .with_protocol(args.protocol)
        .with_mode(args.mode))
}

pub(crate) fn warn_short_key(key: &Key) {
    tracing::warn!(
        key_id = %key.id(),
        bytes = key.byte_len(),
        "short key accepted only because of --protocol seed; use 32 random bytes (linkgate keygen)"
    );
}

pub(crate) fn warn_if_seed(protocol: Protocol) {
    if protocol == Protocol::Seed {
        tracing::warn!(
            "--protocol seed: no key ids, no server authentication (any server can pose as the real one) and no sealing; for compatibility with the original recipe only"
        );
    }
}
