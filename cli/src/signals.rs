//! Signals, handled from the first moment: SIGINT and SIGTERM (the first starts a graceful
//! drain, the second cuts it short) and SIGHUP (reload; it never stops the process).

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Counts termination and reload signals from the moment it is installed, so none is lost
/// however early it arrives.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    terminate: watch::Receiver<u32>,
    reload: watch::Receiver<u64>,
}

impl Signals {
    /// Starts listening for SIGINT, SIGTERM and SIGHUP (call first thing, inside the runtime).
    pub(crate) fn install() -> Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let (stop_tx, stop_rx) = watch::channel(0u32);
        let (reload_tx, reload_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = interrupt.recv() => "SIGINT",
                    Some(()) = terminate.recv() => "SIGTERM",
                    Some(()) = hangup.recv() => {
                        reload_tx.send_modify(|n| *n += 1);
                        continue;
                    }
                    else => return,
                };
                let n = *stop_tx.borrow() + 1;
                if n == 1 {
                    tracing::info!(
                        "received {name}: no longer accepting; letting open connections finish"
                    );
                } else {
                    tracing::warn!("received {name} again: closing open connections now");
                }
                if stop_tx.send(n).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            terminate: stop_rx,
            reload: reload_rx,
        })
    }

    /// Completes once `n` termination signals have arrived.
    async fn after(&self, n: u32) {
        let mut count = self.terminate.clone();
        // An error means the watcher is gone: no more signals can come.
        if count.wait_for(|seen| *seen >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The first SIGINT/SIGTERM: stop accepting and drain.
    pub(crate) async fn requested(&self) {
        self.after(1).await;
    }

    /// The second: stop draining.
    pub(crate) async fn forced(&self) {
        self.after(2).await;
    }

    /// A receiver that changes on every SIGHUP.
    pub(crate) fn reloads(&self) -> watch::Receiver<u64> {
        self.reload.clone()
    }
}
