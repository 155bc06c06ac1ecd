//! `linkgate keygen`: a new random key file.

use crate::output::say;
use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};
use linkgate::{Key, KeyId};

pub(crate) fn run(out: &Path, force: bool) -> Result<()> {
    if out == Path::new("-") {
        let key = Key::generate(KeyId::new("stdout")?)?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(key.to_hex_line().as_bytes())?;
        return Ok(stdout.flush()?);
    }
    let id = id_for(out)?;
    let key = Key::generate(id)?;
    if force {
        key.write_file_replacing(out)?;
    } else {
        key.write_new_file(out).map_err(|err| {
            let exists = matches!(
                &err,
                linkgate::Error::Key(linkgate::KeyError::File {
                    problem: linkgate::KeyFileProblem::AlreadyExists,
                    ..
                })
            );
            if exists {
                anyhow::anyhow!("{err}; add --force to replace it")
            } else {
                err.into()
            }
        })?;
    }
    say!("wrote key {} to {} (mode 0600)", key.id(), out.display())?;
    Ok(())
}

/// The id a key file gets: its stem. The name must be `ID.key`, so that `serve --keys DIR`
/// loads it (it skips other names, and hidden files).
fn id_for(out: &Path) -> Result<KeyId> {
    let named_key = out.extension().is_some_and(|ext| ext == "key");
    let stem = out
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default();
    if !named_key || stem.starts_with('.') {
        bail!(
            "cannot write a key to {}: name the file ID.key (e.g. keys/alice.key), since the file's stem is its key id and serve loads only *.key files",
            out.display()
        );
    }
    KeyId::new(stem).map_err(|_| {
        anyhow::anyhow!(
            "cannot name a key after {}: the file's stem is its id (use 1 to 64 ASCII letters, digits, '.', '_' or '-')",
            out.display()
        )
    })
}
