//! `linkgate serve`: the gate in front of an unmodified server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use linkgate::record::RecordLimits;
use linkgate::{
    Gate, GateConfig, GatedListener, Key, KeyId, Keyring, ListenerConfig, Protocol, ServeOptions,
};
use tokio::net::TcpListener;

use crate::addr::ListenAddr;
use crate::args::{ServeArgs, ServiceArgs};
use crate::keys;
use crate::proxy::{self, ServeContext};
use crate::signals::Shutdown;
use crate::upstream::Upstream;

const DEFAULT_KEYS_DIR: &str = "keys";
/// How long `serve` waits for the upstream to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: ServeArgs) -> Result<()> {
    let shutdown = Shutdown::install()?;
    if args.allow_plain && args.require_forward_secrecy {
        bail!("--allow-plain and --require-forward-secrecy contradict each other: choose one");
    }
    let (keys_path, created) = match (&args.keys, &args.upstream) {
        (Some(path), _) => (path.clone(), None),
        (None, None) => default_keys(Path::new(DEFAULT_KEYS_DIR))?,
        (None, Some(_)) => bail!(
            "--upstream needs --keys: the gate would otherwise guard your server with a key nobody chose. Make one with `linkgate keygen --out keys/alice.key`, then add --keys keys/"
        ),
    };
    let keyring = Keyring::load_with(&keys_path, &keys::options(&args.key_files, args.protocol))?;
    for key in keyring.keys().filter(|key| key.is_short()) {
        keys::warn_short_key(key);
    }
    keys::warn_if_seed(args.protocol);
    let ids = keyring
        .ids()
        .iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let gate = Gate::with_config(keyring, gate_config(&args))?;
    let listener = bind(&args.listen).await?;
    let local = listener.local_addr()?;
    if let Some(key_path) = created {
        print_client_commands(&key_path, &local.to_string());
    }
    let listener_config = ListenerConfig::new()
        .with_max_handshakes(args.max_handshakes)
        .with_max_handshakes_per_source(args.max_handshakes_per_source)
        .with_proxy_protocol_from(args.balancer.accept_proxy_from.iter().copied());
    let listener = GatedListener::with_config(listener, gate, listener_config);
    let upstream = args.upstream.unwrap_or(Upstream::Echo);
    tracing::info!(
        listen = %local,
        upstream = %upstream,
        keys = %ids,
        modes = %modes_text(&args.protocol, args.allow_plain, args.require_forward_secrecy),
        "linkgate serve: listening"
    );
    let send_proxy = args
        .balancer
        .send_proxy
        .map(|version| (version, args.balancer.send_proxy_key_id_as.is_some()));
    let context = Arc::new(ServeContext {
        upstream,
        connect_timeout: UPSTREAM_CONNECT_TIMEOUT,
        send_proxy,
    });
    let drained = linkgate::serve_until(
        listener,
        serve_options(&args.service),
        shutdown.requested(),
        shutdown.forced(),
        move |admitted| proxy::serve_one(admitted, Arc::clone(&context)),
    )
    .await;
    tracing::info!(closed_at_drain = drained.aborted, "linkgate serve: stopped");
    Ok(())
}

fn gate_config(args: &ServeArgs) -> GateConfig {
    let mut config = GateConfig::new()
        .with_protocol(args.protocol)
        .with_handshake_timeout(args.handshake_timeout)
        .with_plain_allowed(args.allow_plain)
        .with_forward_secrecy_required(args.require_forward_secrecy);
    if let Some(records) = args.testing.key_update_after_records {
        config = config.with_record_limits(RecordLimits::new().with_key_update_interval(records));
    }
    config
}

/// The modes the gate admits, for the start-up line.
fn modes_text(protocol: &Protocol, plain: bool, fs_only: bool) -> &'static str {
    match (protocol, plain, fs_only) {
        (Protocol::Seed, _, _) => "seed (plain)",
        (_, true, _) => "sealed-fs,sealed,plain",
        (_, false, true) => "sealed-fs",
        _ => "sealed-fs,sealed",
    }
}

pub(crate) fn serve_options(args: &ServiceArgs) -> ServeOptions {
    ServeOptions::new()
        .with_max_connections(args.max_connections)
        .with_drain_timeout(args.drain_timeout)
}

pub(crate) async fn bind(addr: &ListenAddr) -> Result<TcpListener> {
    match addr {
        ListenAddr::Tcp(addr) => TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}")),
    }
}

/// With neither `--keys` nor `--upstream` (the demo case), use `keys/`; if it holds no key yet,
/// create `keys/default.key`. Returns the directory and, if one was created, the new key's path.
fn default_keys(dir: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let options = linkgate::KeyFileOptions::new();
    if dir.is_dir() && !linkgate::key_files_in(dir, &options)?.is_empty() {
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
