//! Usage errors: one line that keeps clap's suggestion and points at the right help.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Help and version go out as clap prints them; a usage error becomes one line on stderr —
/// clap's message, its "did you mean" suggestion, and which `--help` to read — and exit 2.
pub(crate) fn report(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::from(2);
        }
        _ => {}
    }
    // args() would panic on an argument that is not UTF-8, the very input being reported.
    let argv: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    crate::logging::print_error(format_asked(&argv), &one_line(err, &argv));
    ExitCode::from(2)
}

/// The log format the command line asked for, read from the raw arguments: they did not parse,
/// yet an operator who asked for JSON gets the usage error as JSON too.
fn format_asked(argv: &[String]) -> crate::args::LogFormat {
    let json = argv.iter().enumerate().any(|(at, arg)| {
        arg == "--log-format=json"
            || (arg == "--log-format" && argv.get(at + 1).is_some_and(|next| next == "json"))
    });
    if json {
        crate::args::LogFormat::Json
    } else {
        crate::args::LogFormat::Text
    }
}

/// The one line for `err`, given the command line it came from.
pub(crate) fn one_line(err: &clap::Error, argv: &[String]) -> String {
    let rendered = err.render().to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    if line.ends_with(':') {
        // "the following required arguments were not provided:" lists them on the next,
        // indented lines; without them the line says nothing.
        let listed: Vec<&str> = lines
            .take_while(|next| next.starts_with(' '))
            .map(str::trim)
            .collect();
        line.push(' ');
        line.push_str(&listed.join(", "));
    }
    let suggestion = [
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedArg,
        ContextKind::SuggestedValue,
    ]
    .into_iter()
    .find_map(|kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) if !v.is_empty() => Some(v.join("' or '")),
        _ => None,
    });
    if let Some(suggestion) = suggestion {
        line.push_str(&format!(" (did you mean '{suggestion}'?)"));
    }
    line.push_str(&format!("; see '{} --help'", help_command(argv)));
    line
}

/// `linkgate SUBCOMMAND` when the command line names a subcommand, else `linkgate`.
fn help_command(argv: &[String]) -> String {
    const SUBCOMMANDS: [&str; 7] = [
        "serve",
        "connect",
        "check",
        "keygen",
        "demo",
        "check-config",
        "probe",
    ];
    argv.iter()
        .skip(1)
        .find(|arg| SUBCOMMANDS.contains(&arg.as_str()))
        .map_or_else(|| "linkgate".to_owned(), |sub| format!("linkgate {sub}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::one_line;
    use crate::args::Cli;

    fn error_for(args: &[&str]) -> String {
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let err = Cli::try_parse_from(&argv).unwrap_err();
        one_line(&err, &argv)
    }

    #[test]
    fn suggestions_survive_and_point_at_the_subcommand_help() {
        let line = error_for(&["linkgate", "serv"]);
        assert!(
            line.contains("'serv'") && line.contains("did you mean 'serve'?"),
            "{line}"
        );
        assert!(line.ends_with("see 'linkgate --help'"), "{line}");
        let line = error_for(&["linkgate", "serve", "--upstrem", "127.0.0.1:1"]);
        assert!(line.contains("did you mean '--upstream'?"), "{line}");
        assert!(line.ends_with("see 'linkgate serve --help'"), "{line}");
    }

    #[test]
    fn a_missing_argument_is_named() {
        let line = error_for(&["linkgate", "connect", "--tunnels", "3"]);
        assert!(line.contains("were not provided: --mux"), "{line}");
        assert!(line.ends_with("see 'linkgate connect --help'"), "{line}");
        let line = error_for(&["linkgate", "probe"]);
        assert!(line.contains("not provided: <ADDR>"), "{line}");
        assert!(line.ends_with("see 'linkgate probe --help'"), "{line}");
    }
}
