//! `linkgate serve` (one service from flags, or several from a config file) and
//! `linkgate check-config`.

use crate::output::say;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use linkgate::{Key, KeyId, ServeOptions};

use crate::args::{CheckConfigArgs, ServeArgs, ServiceArgs};
use crate::config::ConfigFile;
use crate::listen::SystemdSockets;
use crate::metrics::{self, Metrics};
use crate::reload::{self, Reloader};
use crate::service::{Service, ServiceOptions};
use crate::signals::Signals;
use crate::systemd;
use crate::threads::{self, Threads};

const DEFAULT_KEYS_DIR: &str = "keys";

/// Options for the whole process.
struct Operations {
    metrics: Option<String>,
    watch_keys: bool,
    drop_revoked: bool,
    tunnel_threads: Option<usize>,
}

pub(crate) async fn run(args: ServeArgs, systemd_sockets: SystemdSockets) -> Result<()> {
    let signals = Signals::install()?;
    // The file as started from: a reload tells when it has changed since (keys reload, the
    // rest of the file does not).
    let mut config_as_started = None;
    let (services, operations, from_flags) = match &args.config {
        Some(path) => {
            let config = ConfigFile::load(path)?;
            config_as_started = std::fs::read(path).ok().map(|text| (path.clone(), text));
            let operations = Operations {
                metrics: args.operations.metrics.clone().or(config.metrics),
                watch_keys: args.operations.watch_keys || config.watch_keys,
                drop_revoked: args.operations.drop_revoked || config.drop_revoked,
                tunnel_threads: args.operations.tunnel_threads.or(config.tunnel_threads),
            };
            (config.services, operations, false)
        }
        None => {
            let operations = Operations {
                metrics: args.operations.metrics.clone(),
                watch_keys: args.operations.watch_keys,
                drop_revoked: args.operations.drop_revoked,
                tunnel_threads: args.operations.tunnel_threads,
            };
            (vec![args.service], operations, true)
        }
    };
    // Each handshake holds one descriptor, each forwarded connection two, each stream of a
    // tunnel one (its upstream; streams have a bound of their own, the same size). Checked once
    // every service is ready, so a command that fails to start prints only its error.
    let needed: u64 = services
        .iter()
        .map(|s| {
            let per_connection = if s.no_mux { 2 } else { 3 };
            (s.max_handshakes as u64)
                .saturating_add((s.max_connections as u64).saturating_mul(per_connection))
                .saturating_add(16)
        })
        .fold(64, u64::saturating_add);
    let metrics = operations.metrics.as_ref().map(|_| Metrics::new());
    let mut prepared = Vec::with_capacity(services.len());
    for options in services {
        let service = Service::prepare(
            options,
            from_flags,
            operations.drop_revoked,
            &systemd_sockets,
            metrics.as_ref(),
        )
        .await?;
        if let Some(key_path) = &service.created_key {
            print_client_commands(key_path, &service.local());
        }
        prepared.push(service);
    }
    systemd::raise_open_files_limit(needed);
    let tunnel_threads = Arc::new(Threads::start(
        operations
            .tunnel_threads
            .unwrap_or_else(threads::default_count),
    )?);
    tokio::spawn(report_dropped_log_lines(metrics.clone()));
    if let (Some(addr), Some(metrics)) = (&operations.metrics, &metrics) {
        let (listener, local) = metrics::bind(addr).await?;
        tracing::info!(metrics = %local, "serving metrics at /metrics");
        tokio::spawn(metrics::serve(listener, Arc::clone(metrics)));
    }
    let status = format!(
        "serving {} service{}",
        prepared.len(),
        if prepared.len() == 1 { "" } else { "s" }
    );
    let reloader = Arc::new(Reloader {
        services: prepared.iter().map(Service::keys).collect(),
        metrics: metrics.clone(),
        status: status.clone(),
        config: config_as_started,
    });
    tokio::spawn(reload::run(
        reloader,
        signals.reloads(),
        operations.watch_keys,
    ));
    systemd::ready(&status);
    let stopping = {
        let signals = signals.clone();
        async move {
            signals.requested().await;
            systemd::stopping();
        }
    };
    tokio::spawn(stopping);
    // Spawn every service first, then wait for them all.
    let running: Vec<_> = prepared
        .into_iter()
        .map(|service| tokio::spawn(service.run(signals.clone(), Arc::clone(&tunnel_threads))))
        .collect();
    for service in running {
        service.await.context("a service task failed")?;
    }
    // Tunnels cut off at the drain deadline end there, with their close lines.
    tunnel_threads.shutdown().await;
    Ok(())
}

/// Says (at most every 10 s) when log lines were dropped because stderr could not keep up, and
/// keeps the metric current.
async fn report_dropped_log_lines(metrics: Option<Arc<Metrics>>) {
    let mut reported = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let dropped = crate::logging::dropped_lines();
        if let Some(metrics) = &metrics {
            metrics.log_lines_dropped(dropped);
        }
        if dropped > reported {
            tracing::warn!(
                dropped = dropped - reported,
                total = dropped,
                "log lines dropped: stderr could not keep up (the gate kept serving)"
            );
            reported = dropped;
        }
    }
}

/// `linkgate check-config FILE`: everything `serve --config` checks before it binds.
pub(crate) fn check_config(args: &CheckConfigArgs) -> Result<()> {
    let config = ConfigFile::load(&args.file)?;
    for options in &config.services {
        let (source, _) = options.key_source(false)?;
        let keyring = source
            .load(&key_file_options(options))
            .with_context(|| format!("service {}", options.name))?;
        linkgate::Gate::new(keyring.clone())
            .with_context(|| format!("service {}", options.name))?;
        say!(
            "service {}: listen {} -> {}, {} key{}",
            options.name,
            options.listen,
            options
                .upstream
                .as_ref()
                .map_or_else(|| "built-in echo".to_owned(), ToString::to_string),
            keyring.len(),
            if keyring.len() == 1 { "" } else { "s" }
        )?;
    }
    if let Some(addr) = &config.metrics {
        say!("metrics at {addr}/metrics")?;
    }
    say!("{}: ok", args.file.display())?;
    Ok(())
}

fn key_file_options(options: &ServiceOptions) -> linkgate::KeyFileOptions {
    crate::keys::options(
        &crate::args::KeyFileArgs {
            allow_open_key_permissions: options.allow_open_key_permissions,
            allow_group_readable_keys: options.allow_group_readable_keys,
        },
        options.protocol,
    )
}

pub(crate) fn serve_options(args: &ServiceArgs) -> ServeOptions {
    ServeOptions::new()
        .with_max_connections(args.max_connections)
        .with_drain_timeout(args.drain_timeout)
}

/// The demo's keys: `keys/`; if it holds no key yet, `keys/default.key` is created. Returns the
/// directory and, if one was created, the new key's path.
pub(crate) fn default_keys() -> Result<(PathBuf, Option<PathBuf>)> {
    let dir = Path::new(DEFAULT_KEYS_DIR);
    let options = linkgate::KeyFileOptions::new();
    if dir.is_dir() && !linkgate::key_files_in(dir, &options)?.is_empty() {
        return Ok((dir.to_path_buf(), None));
    }
    create_private_dir(dir)?;
    let path = dir.join("default.key");
    Key::generate(KeyId::new("default")?)?.write_new_file(&path)?;
    Ok((dir.to_path_buf(), Some(path)))
}

/// Tells whoever started the gate how clients can use the key just created. Writing is best
/// effort: a gate whose standard output is closed serves all the same.
fn print_client_commands(key_path: &Path, server: &str) {
    let _ = tell_client_commands(key_path, server);
}

fn tell_client_commands(key_path: &Path, server: &str) -> Result<()> {
    let key = key_path.display();
    say!("created a new key: {key} (mode 0600); clients with a copy of it can run:")?;
    say!("  linkgate check --server {server} --key {key}")?;
    say!("  linkgate connect --listen 127.0.0.1:7701 --server {server} --key {key}")
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory, so the demo's key cannot go there: name your keys with --keys PATH",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}
