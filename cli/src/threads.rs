//! Tunnel threads: each multiplexed tunnel runs, with every stream it carries and the sockets
//! those streams forward to, on one thread with a single-threaded runtime of its own.
//!
//! Why: in the process-wide work-stealing runtime a tunnel's task and its streams' tasks wake
//! one another across threads, thousands of times a second, and each wake-up of an idle worker
//! is a futex call and a context switch. Kept on one thread they wake one another for the price
//! of a queue push. Measured on 2 cores (BENCHMARKS.md, "Multiplexed tunnels", runs H and I):
//! 10–20% more short connections a second through `connect --mux` → `serve`, with less CPU per
//! connection.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The threads' runtimes, and how many tasks each is running.
pub(crate) struct Threads {
    threads: Vec<Thread>,
    /// Tells every thread to shut its runtime down.
    stop: CancellationToken,
    joins: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Held while a task's thread is chosen and the task counted on it, so that two tunnels
    /// admitted at once do not both see the same thread as the least busy.
    choosing: Mutex<()>,
}

struct Thread {
    handle: Handle,
    running: Arc<AtomicUsize>,
}

/// How long a stopping thread gives its tasks' blocking work (a name lookup) to end.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(100);

/// The default thread count: the cores this process may use.
pub(crate) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Threads {
    /// Starts `count` threads (at least one), each running a single-threaded runtime until
    /// [`Threads::shutdown`].
    pub(crate) fn start(count: usize) -> Result<Self> {
        let mut threads = Self {
            threads: Vec::with_capacity(count.max(1)),
            stop: CancellationToken::new(),
            joins: Mutex::new(Vec::new()),
            choosing: Mutex::new(()),
        };
        for index in 0..count.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
            let stop = threads.stop.clone();
            // The runtime is built (and dropped) on its own thread: never inside the caller's.
            let join = std::thread::Builder::new()
                .name(format!("linkgate-tunnel-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = handle_tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(stop.cancelled());
                    // Drops every task still there, so their close lines are written.
                    runtime.shutdown_timeout(SHUTDOWN_WAIT);
                })
                .context("cannot start a tunnel thread")?;
            threads.joins_mut().push(join);
            let handle = handle_rx
                .recv()
                .map_err(|_| anyhow::anyhow!("a tunnel thread ended as it started"))?
                .context("cannot start a tunnel thread's runtime")?;
            threads.threads.push(Thread {
                handle,
                running: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(threads)
    }

    fn joins_mut(&self) -> std::sync::MutexGuard<'_, Vec<std::thread::JoinHandle<()>>> {
        self.joins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops every thread: the tasks still running there are dropped (a stream cut off at the
    /// drain deadline is logged as such), and the threads are waited for.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        let joins = std::mem::take(&mut *self.joins_mut());
        let _ = tokio::task::spawn_blocking(move || {
            for join in joins {
                let _ = join.join();
            }
        })
        .await;
    }

    pub(crate) fn len(&self) -> usize {
        self.threads.len()
    }

    /// Runs `task` on thread `index` (modulo the count), where it is counted as running until it
    /// ends.
    pub(crate) fn spawn_on<F>(&self, index: usize, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let index = index % self.threads.len();
        let running = Running::count(&self.threads[index].running);
        self.spawn_counted(index, running, task)
    }

    fn spawn_counted<F>(&self, index: usize, running: Running, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.threads[index].handle.spawn(async move {
            let _running = running;
            task.await
        })
    }

    /// Runs `task` on the thread running the fewest tasks, and waits for it. Dropping the
    /// returned future (a drain's deadline) aborts the task.
    pub(crate) async fn run_on_least_busy<F>(&self, task: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (index, running) = {
            let _choosing = self
                .choosing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let index = (0..self.threads.len())
                .min_by_key(|&index| self.threads[index].running.load(Ordering::Relaxed))
                .unwrap_or(0);
            (index, Running::count(&self.threads[index].running))
        };
        let task = AbortOnDrop(self.spawn_counted(index, running, task));
        task.await
    }

    /// Enters thread `index`'s runtime: what is spawned while the guard lives runs there.
    pub(crate) fn enter(&self, index: usize) -> tokio::runtime::EnterGuard<'_> {
        self.threads[index % self.threads.len()].handle.enter()
    }
}

/// One more task counted as running on a thread, until dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn count(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(running))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A task on another runtime that is aborted when whoever waits for it stops waiting.
struct AbortOnDrop<T>(JoinHandle<T>);

impl Drop for Threads {
    /// Threads not shut down explicitly (an error on the way) stop with their owner.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = io::Result<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map_err(|err| io::Error::other(format!("a tunnel thread's task failed: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_go_to_the_least_busy_thread_and_are_aborted_when_dropped() {
        let threads = Threads::start(2).unwrap();
        let (name_tx, name_rx) = tokio::sync::oneshot::channel();
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
        // A long task on one thread …
        let first = threads.spawn_on(0, async move {
            let _ = name_tx.send(std::thread::current().name().map(str::to_owned));
            let _ = hold_rx.await;
        });
        let first_thread = name_rx.await.unwrap();
        assert_eq!(first_thread.as_deref(), Some("linkgate-tunnel-0"));
        // … so the next one runs on the other.
        let (tx, rx) = tokio::sync::oneshot::channel();
        threads
            .run_on_least_busy(async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            })
            .await
            .unwrap();
        assert_eq!(rx.await.unwrap().as_deref(), Some("linkgate-tunnel-1"));

        // Dropping the wait aborts the task: its end of the channel goes away.
        let (mut watch, held) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let wait = threads.run_on_least_busy(async move {
            let _held = held;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        let mut wait = Box::pin(wait);
        tokio::select! {
            _ = &mut wait => panic!("a pending task ended"),
            _ = started_rx => {}
        }
        drop(wait);
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.closed())
            .await
            .expect("the aborted task dropped what it held");
        drop(hold_tx);
        first.await.unwrap();

        // Shutting down drops what is still running there.
        let (mut watch, held) = tokio::sync::oneshot::channel::<()>();
        let _still_running = threads.spawn_on(1, async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        threads.shutdown().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.closed())
            .await
            .expect("shutdown dropped the thread's tasks");
    }
}
