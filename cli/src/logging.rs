//! Logging set-up, and how results and fatal errors are printed in each log format.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::args::{LogArgs, LogFormat};

impl LogArgs {
    /// Logs go to stderr, so stdout carries only what a command prints as its result.
    /// `quiet_by_default` is for the demo, which prints its own story.
    pub(crate) fn init(&self, quiet_by_default: bool) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) if quiet_by_default => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
    }
}

/// Prints a fatal error as one line on stderr: `linkgate: MESSAGE`, or a JSON object with
/// `level`, `message` and `error` fields when JSON logs were asked for.
pub(crate) fn print_error(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("linkgate: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({"level": "ERROR", "message": "linkgate failed", "error": message})
        ),
    }
}
