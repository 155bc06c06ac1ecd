//! Logging set-up, and how results and fatal errors are printed in each log format.

use crate::output::say_err;
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::args::{LogArgs, LogFormat};

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because stderr could not keep up.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

impl LogArgs {
    /// Logs go to stderr, so stdout carries only what a command prints as its result, through a
    /// bounded, non-blocking writer: a blocked stderr (a pipe nobody reads) costs log lines, never
    /// the gate's progress. Keep the returned guard until exit: dropping it flushes.
    /// `quiet_by_default` is for the demo, which prints its own story.
    pub(crate) fn init(&self, quiet_by_default: bool) -> WorkerGuard {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) if quiet_by_default => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            // Lines held while stderr is slow; past it, lines are dropped (and counted) rather
            // than stalling the gate.
            .buffered_lines_limit(self.log_buffer_lines.max(1))
            .thread_name("linkgate-log")
            .finish(std::io::stderr());
        let _ = DROPPED.set(writer.error_counter());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
        guard
    }
}

/// Prints a fatal error as one line on stderr: `linkgate: MESSAGE`, or a JSON object with
/// `level`, `message` and `error` fields when JSON logs were asked for.
pub(crate) fn print_error(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => say_err!("linkgate: {message}"),
        LogFormat::Json => say_err!(
            "{}",
            serde_json::json!({"level": "ERROR", "message": "linkgate failed", "error": message})
        ),
    }
}
