//! Lines for the user on standard output and standard error.
//!
//! `println!` and `eprintln!` panic when the stream is a closed pipe (`linkgate check | true`)
//! or a full disk; these return the error instead, so it becomes one line and exit status 1.

use std::io::Write;

use anyhow::{Context, Result};

/// Writes one line to standard output and flushes it.
pub(crate) fn line(args: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

/// Writes one line to standard error; a failure is ignored (there is nowhere left to say it).
pub(crate) fn error_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err
        .write_fmt(args)
        .and_then(|()| err.write_all(b"\n"))
        .and_then(|()| err.flush());
}

/// `say!("...", args)`: [`line`] with `format!` arguments.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// `say_err!("...", args)`: [`error_line`] with `format!` arguments.
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::output::error_line(format_args!($($arg)*))
    };
}

pub(crate) use {say, say_err};
