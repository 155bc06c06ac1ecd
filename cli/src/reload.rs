//! Reloading keys without a restart: on SIGHUP, and with --watch-keys when a key directory
//! changes (debounced; Kubernetes Secret volumes swap a `..data` symlink, which is a change in
//! the directory). All or nothing per service: a keyring that fails any start-up check is
//! refused and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::service::{ServiceKeys, ids_text};
use crate::systemd;

/// A service's keys as they are now. On SIGHUP, a key directory left with no key file gives an
/// empty keyring (every client denied): the operator removed the last key and said so. A
/// watcher's reload keeps refusing it, as the start does: a directory is empty for a moment
/// when its files are replaced one by one, and denying every client then would cut every
/// tunnel and send every client host into penalties.
fn load_allowing_none(service: &ServiceKeys, why: Why) -> anyhow::Result<linkgate::Keyring> {
    match service.source.load(&service.options) {
        Err(err)
            if why == Why::Signal
                && matches!(
                    err.downcast_ref::<linkgate::Error>(),
                    Some(linkgate::Error::Key(linkgate::KeyError::NoKeys(_)))
                ) =>
        {
            Ok(linkgate::Keyring::new())
        }
        loaded => loaded,
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// SIGHUP (or systemd's ExecReload): the operator.
    Signal,
    /// `--watch-keys` saw the key files change.
    FilesChanged,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Signal => "SIGHUP",
            Self::FilesChanged => "key files changed",
        })
    }
}

/// How long the key directory must stay quiet before a reload: one swap is several events.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Every service's keys, reloaded together.
pub(crate) struct Reloader {
    pub(crate) services: Vec<ServiceKeys>,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) status: String,
    /// The config file and its contents at start, if serving from one.
    pub(crate) config: Option<(PathBuf, Vec<u8>)>,
}

impl Reloader {
    /// Reloads every service's keys; `false` if any kept its old keys.
    pub(crate) fn reload(&self, why: Why) -> bool {
        systemd::reloading();
        // Before the keys' lines, so that a reload's last line ends what it has to say.
        self.warn_if_config_changed();
        let mut all_ok = true;
        for service in &self.services {
            let name = &service.name;
            let loaded = load_allowing_none(service, why).and_then(|keyring| {
                let count = keyring.len();
                let ids = ids_text(&keyring);
                let diff = service.gate.replace_keyring(keyring)?;
                // Read after the swap: reloads run one at a time, so this is the new keyring's.
                let generation = service.gate.keyring_generation();
                Ok((diff, count, ids, generation))
            });
            match loaded {
                Ok((diff, count, ids, generation)) => {
                    let list = |ids: &[linkgate::KeyId]| {
                        ids.iter()
                            .map(|id| id.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    if count == 0 {
                        // Not refused as at start: removing the last key file is how its
                        // client is withdrawn when it is the only one.
                        tracing::warn!(service = %name, %why, removed = %list(&diff.removed),
                            "keys reloaded: no key is left, every client is denied until one is added");
                    } else if diff.is_empty() {
                        tracing::info!(service = %name, %why, keys = %ids, "keys reloaded: no change");
                    } else {
                        tracing::info!(service = %name, %why, added = %list(&diff.added),
                            removed = %list(&diff.removed), changed = %list(&diff.changed),
                            keys = %ids, "keys reloaded");
                    }
                    if let Some(metrics) = &service.metrics {
                        metrics.keys_loaded(count);
                    }
                    let gone = diff.removed.into_iter().chain(diff.changed).collect();
                    service.revoked.announce(gone, generation);
                }
                Err(err) => {
                    all_ok = false;
                    tracing::warn!(service = %name, %why, error = %format!("{err:#}"),
                        "key reload failed: the previous keys stay in force");
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.reload(all_ok);
        }
        systemd::ready(&self.status);
        all_ok
    }

    /// A reload applies keys only: say so when the config file no longer says what is running.
    fn warn_if_config_changed(&self) {
        let Some((path, started)) = &self.config else {
            return;
        };
        if std::fs::read(path).is_ok_and(|now| now != *started) {
            tracing::warn!(config = %path.display(),
                "the config file changed since linkgate started: a reload applies keys only; restart to apply the rest");
        }
    }
}

/// Runs reloads for SIGHUP (and for key directory changes with `watch_keys`) until the process
/// ends.
pub(crate) async fn run(reloader: Arc<Reloader>, mut hups: watch::Receiver<u64>, watch_keys: bool) {
    let (changed_tx, mut changed) = mpsc::unbounded_channel::<()>();
    let _watcher = if watch_keys {
        let paths: Vec<PathBuf> = reloader
            .services
            .iter()
            .filter_map(|service| service.source.path().map(watched))
            .collect();
        match start_watcher(&paths, changed_tx) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the key directories; reload with SIGHUP");
                None
            }
        }
    } else {
        None
    };
    loop {
        tokio::select! {
            changed_hup = hups.changed() => {
                if changed_hup.is_err() {
                    return;
                }
                reloader.reload(Why::Signal);
            }
            Some(()) = changed.recv() => {
                // Debounce: wait until the directory has been quiet for a moment.
                loop {
                    match tokio::time::timeout(DEBOUNCE, changed.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                reloader.reload(Why::FilesChanged);
            }
        }
    }
}

/// The directory to watch for a key path: itself if a directory, else its parent (a replaced or
/// re-linked file is an event in its directory).
fn watched(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

fn start_watcher(
    paths: &[PathBuf],
    changed: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| !event.kind.is_access()) {
            let _ = changed.send(());
        }
    })?;
    for path in paths {
        watcher.watch(path, RecursiveMode::NonRecursive)?;
        tracing::info!(path = %path.display(), "watching for key changes");
    }
    Ok(watcher)
}
