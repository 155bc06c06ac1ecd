//! The subcommands, each a few calls into the library.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use linkgate::proxy::{self, Upstream};
use linkgate::{
    Config, Credentials, Gate, GatedListener, Key, KeyFileOptions, KeyId, Keyring, Protocol,
    ServeOptions,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{
    CheckArgs, ClientArgs, ConnectArgs, KeyFileArgs, KeygenArgs, ServeArgs, ServiceArgs,
};

const DEFAULT_KEYS_DIR: &str = "keys";

pub async fn serve(args: ServeArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let (keys_path, created) = match args.keys {
        Some(path) => (path, None),
        None => default_keys(Path::new(DEFAULT_KEYS_DIR))?,
    };
    let keyring = Keyring::load_with(&keys_path, key_file_options(&args.key_files, args.protocol))?;
    for key in keyring.keys().filter(|key| key.is_short()) {
        warn_short_key(key);
    }
    warn_if_seed(args.protocol);
    let config = Config::new()
        .protocol(args.protocol)
        .handshake_timeout(args.handshake_timeout)
        .max_handshakes(args.max_handshakes)
        .max_handshakes_per_ip(args.max_handshakes_per_ip);
    let ids = keyring
        .ids()
        .iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let gate = Gate::with_config(keyring, config)?;
    let listener = bind(&args.listen).await?;
    if let Some(key_path) = created {
        print_client_commands(&key_path, &listener.local_addr()?.to_string());
    }
    let upstream = args.upstream.unwrap_or(Upstream::Echo);
    tracing::info!(
        listen = %listener.local_addr()?,
        upstream = %match &upstream { Upstream::Tcp(addr) => addr.as_str(), Upstream::Echo => "built-in echo" },
        keys = %ids,
        "linkgate serve: listening"
    );
    let drained = proxy::serve(
        GatedListener::new(listener, gate),
        upstream,
        serve_options(&args.service),
        shutdown,
    )
    .await;
    tracing::info!(
        closed_at_drain_timeout = drained.aborted,
        "linkgate serve: stopped"
    );
    Ok(())
}

pub async fn connect(args: ConnectArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let credentials = credentials(&args.client)?;
    warn_if_seed(args.client.protocol);
    let listener = bind(&args.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        server = %args.client.server,
        key_id = %credentials.key_id(),
        "linkgate connect: listening"
    );
    let drained = proxy::connect(
        listener,
        args.client.server,
        credentials,
        serve_options(&args.service),
        shutdown,
    )
    .await;
    tracing::info!(
        closed_at_drain_timeout = drained.aborted,
        "linkgate connect: stopped"
    );
    Ok(())
}

pub async fn check(args: CheckArgs) -> Result<()> {
    let credentials = credentials(&args.client)?;
    let server = &args.client.server;
    let stream = match linkgate::connect(server.as_str(), &credentials).await {
        Ok(stream) => stream,
        Err(err) => bail!("not admitted by {server}: {err}"),
    };
    if credentials.protocol() == Protocol::Seed {
        return check_seed_outcome(stream, server).await;
    }
    println!("admitted as {}", credentials.key_id());
    Ok(())
}

/// The seed protocol has no verdict: a server that refuses just closes. So wait a moment after
/// answering; still open means admitted (as far as seed can tell).
async fn check_seed_outcome(mut stream: tokio::net::TcpStream, server: &str) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(SEED_VERDICT_WAIT, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {
            bail!(
                "not admitted by {server}: it closed the connection after our answer (wrong key?)"
            )
        }
        Ok(Ok(_)) | Err(_) => {
            println!(
                "admitted (seed protocol: the server kept the connection open; it cannot prove it holds the key)"
            );
            Ok(())
        }
    }
}

/// How long `check --protocol seed` waits for a refusing server to close.
const SEED_VERDICT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

pub fn keygen(args: KeygenArgs) -> Result<()> {
    if args.out == Path::new("-") {
        let key = Key::generate(KeyId::new("stdout")?)?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(key.to_hex_line().as_bytes())?;
        return Ok(stdout.flush()?);
    }
    let stem = args
        .out
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default();
    let id = KeyId::new(stem).with_context(|| {
        format!(
            "cannot name a key after {}: the file's stem is its id",
            args.out.display()
        )
    })?;
    let key = Key::generate(id)?;
    if args.force {
        key.write_file_replacing(&args.out)?;
    } else {
        key.write_new_file(&args.out)
            .map_err(|err| anyhow::anyhow!("{err} (use --force to replace it)"))?;
    }
    println!(
        "wrote key {} to {} (mode 0600)",
        key.id(),
        args.out.display()
    );
    Ok(())
}

fn key_file_options(args: &KeyFileArgs, protocol: Protocol) -> KeyFileOptions {
    KeyFileOptions::new()
        .allow_open_permissions(args.allow_open_key_permissions)
        .allow_short_keys(protocol == Protocol::Seed)
}

fn credentials(args: &ClientArgs) -> Result<Credentials> {
    let mut key = Key::from_file_with(&args.key, key_file_options(&args.key_files, args.protocol))?;
    if key.is_short() {
        warn_short_key(&key);
    }
    if let Some(id) = &args.id {
        key = key.with_id(KeyId::new(id.as_str())?);
    }
    Ok(Credentials::new(key)
        .with_timeout(args.timeout)
        .with_protocol(args.protocol))
}

fn warn_short_key(key: &Key) {
    tracing::warn!(
        key_id = %key.id(),
        bytes = key.byte_len(),
        "short key accepted only because of --protocol seed; use 32 random bytes (linkgate keygen)"
    );
}

fn warn_if_seed(protocol: Protocol) {
    if protocol == Protocol::Seed {
        tracing::warn!(
            "--protocol seed: no key ids and no server authentication (any server can pose as the real one); for compatibility with the original recipe only"
        );
    }
}

fn serve_options(args: &ServiceArgs) -> ServeOptions {
    ServeOptions::new()
        .max_connections(args.max_connections)
        .drain_timeout(args.drain_timeout)
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// With no `--keys`, use `keys/`; if it holds no key yet, create `keys/default.key`.
/// Returns the directory and, if one was created, the new key's path.
fn default_keys(dir: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if dir.is_dir() && !linkgate::key_files_in(dir)?.is_empty() {
        return Ok((dir.to_path_buf(), None));
    }
    create_private_dir(dir)?;
    let path = dir.join("default.key");
    Key::generate(KeyId::new("default")?)?.write_new_file(&path)?;
    Ok((dir.to_path_buf(), Some(path)))
}

fn print_client_commands(key_path: &Path, server: &str) {
    let key = key_path.display();
    println!("created a new key: {key} (mode 0600); clients with a copy of it can run:");
    println!("  linkgate check --server {server} --key {key}");
    println!("  linkgate connect --listen 127.0.0.1:7701 --server {server} --key {key}");
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Completes on the first SIGINT or SIGTERM. Registered now, before the listener is bound, so a
/// signal that arrives as soon as the process is up is not lost.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!("received {name}: no longer accepting; letting open connections finish");
    })
}
