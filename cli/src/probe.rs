//! `linkgate probe`: the library's impostor battery against a gate, one line per check.

use crate::output::say;
use anyhow::{Result, bail};
use linkgate::Protocol;
use linkgate::testing::{Finding, Probe, Report};

use crate::args::{ClientArgs, LogFormat, ProbeArgs};
use crate::keys;

pub(crate) async fn run(args: ProbeArgs, format: LogFormat) -> Result<()> {
    let mut probe = Probe::new(args.addr.clone())
        .with_wait(args.wait)
        .with_silent_limit(args.silent_limit);
    if args.key.is_some() || args.key_env.is_some() {
        let client = ClientArgs {
            server: args.addr.clone(),
            key: args.key,
            key_env: args.key_env,
            id: args.id,
            mode: args.mode,
            protocol: Protocol::Linkgate1,
            timeout: args.wait,
            key_files: args.key_files,
        };
        probe = probe.with_credentials(keys::credentials(&client)?);
    } else if args.id.is_some() || args.mode.is_some() {
        bail!(
            "--id and --mode describe the legitimate client: give its key with --key or --key-env"
        );
    }
    let report = probe.run().await;
    let json = args.json || format == LogFormat::Json;
    // Nothing listening (or no such host): one line, not the same failure once per check.
    let unreachable = format!("cannot connect to {}", args.addr);
    if let Some(first) = report.findings.first()
        && report
            .findings
            .iter()
            .all(|finding| finding.detail.starts_with(&unreachable))
    {
        if json {
            say!(
                "{}",
                serde_json::json!({
                    "summary": "nothing was probed",
                    "passed": false,
                    "target": args.addr,
                    "error": first.detail,
                })
            )?;
        }
        bail!("{}: nothing was probed", first.detail);
    }
    for finding in &report.findings {
        if json {
            say!("{}", finding_json(finding))?;
        } else {
            say!("{finding}")?;
        }
    }
    if json {
        say!(
            "{}",
            serde_json::json!({
                "summary": report.summary(),
                "passed": report.passed(),
                "target": args.addr,
            })
        )?;
    } else {
        say!("{}", report.summary())?;
    }
    if !report.passed() {
        bail!(failure_line(&args.addr, &report));
    }
    Ok(())
}

fn finding_json(finding: &Finding) -> serde_json::Value {
    serde_json::json!({
        "check": finding.check,
        "status": finding.status.as_str(),
        "detail": finding.detail,
        "refused_at_accept": finding.refused_at_accept,
    })
}

fn failure_line(addr: &str, report: &Report) -> String {
    let failed: Vec<&str> = report.failures().map(|finding| finding.check).collect();
    if failed.is_empty() {
        return format!(
            "{addr} closed every connection before a CHALLENGE, so no impostor was examined (a penalty on this address? a stopping gate? not a gate?)"
        );
    }
    format!(
        "{addr} failed {} of {} checks: {}",
        failed.len(),
        report.findings.len(),
        failed.join(", ")
    )
}
