//! SIGINT and SIGTERM: the first starts a graceful drain, the second cuts it short.

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Counts termination signals from the moment it is installed, so none is lost however early
/// it arrives.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    count: watch::Receiver<u32>,
}

impl Shutdown {
    /// Starts listening for SIGINT and SIGTERM (call first thing, inside the runtime).
    pub(crate) fn install() -> Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let (tx, count) = watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = interrupt.recv() => "SIGINT",
                    Some(()) = terminate.recv() => "SIGTERM",
                    else => return,
                };
                let n = *tx.borrow() + 1;
                if n == 1 {
                    tracing::info!(
                        "received {name}: no longer accepting; letting open connections finish"
                    );
                } else {
                    tracing::warn!("received {name} again: closing open connections now");
                }
                if tx.send(n).is_err() {
                    return;
                }
            }
        });
        Ok(Self { count })
    }

    /// Completes once `n` signals have arrived.
    async fn after(&self, n: u32) {
        let mut count = self.count.clone();
        // An error means the watcher is gone: no more signals can come.
        if count.wait_for(|seen| *seen >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The first signal: stop accepting and drain.
    pub(crate) async fn requested(&self) {
        self.after(1).await;
    }

    /// The second signal: stop draining.
    pub(crate) async fn forced(&self) {
        self.after(2).await;
    }
}
