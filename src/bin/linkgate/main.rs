//! `linkgate`: front an unmodified server with the linkgate/1 gate, and let unmodified clients
//! through it. A thin shell over the library: argument parsing, logging, signals, exit codes.

mod bench;
mod cli;
mod demo;
mod run;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return cli::report_usage_error(err),
    };
    cli.log
        .init(matches!(cli.command, Command::Demo(_) | Command::Bench(_)));
    // The bench tools run single-threaded: a load generator should leave the cores to the
    // chain it measures, and one thread is plenty for its test servers.
    let mut builder = match cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("cannot start the runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => run::serve(args).await,
            Command::Connect(args) => run::connect(args).await,
            Command::Check(args) => run::check(args).await,
            Command::Keygen(args) => run::keygen(args),
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// One readable line on stderr and exit status 1.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("linkgate: {err:#}");
    ExitCode::FAILURE
}
