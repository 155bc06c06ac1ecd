//! `linkgate`: front an unmodified server with the linkgate gate, and let unmodified clients
//! through it. A thin shell over the library: arguments, logging, signals, forwarding, exit codes.

mod addr;
mod args;
mod config;
mod connect;
mod demo;
mod forward;
mod keygen;
mod keys;
mod listen;
mod logging;
mod metrics;
mod output;
mod per_key;
mod probe;
mod proxy;
mod reload;
mod revocations;
mod serve;
mod service;
mod signals;
mod socket;
mod systemd;
mod threads;
mod tunnel;
mod upstream;
mod usage;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// See `Cargo.toml`: the frame buffers of tunnels churn glibc's heap.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage::report(&err),
    };
    let format = cli.log.log_format;
    // Sockets systemd passed, taken before anything else could open descriptors.
    let systemd_sockets = listen::SystemdSockets::from_env();
    let _log_writer = cli.log.init(matches!(cli.command, Command::Demo(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return fail(
                format,
                &anyhow::Error::new(err).context("cannot start the runtime"),
            );
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args, systemd_sockets).await,
            Command::Connect(args) => connect::run(args, systemd_sockets).await,
            Command::CheckConfig(args) => serve::check_config(&args),
            Command::Check(args) => connect::check(args, format).await,
            Command::Keygen(args) => keygen::run(&args.out, args.force),
            Command::Demo(args) => demo::run(args).await,
            Command::Probe(args) => probe::run(args, format).await,
        }
    });
    // Connections cut at the drain deadline must not hold the process up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(format, &err),
    }
}

/// One readable line on stderr (a JSON object with --log-format json) and exit status 1.
fn fail(format: args::LogFormat, err: &anyhow::Error) -> ExitCode {
    logging::print_error(format, &format!("{err:#}"));
    ExitCode::FAILURE
}
