//! `linkgate probe` against a correct gate, and against setups that are wrong in each of the
//! ways it must catch: no gate at all, a stand-in that admits anyone, plain mode allowed on a
//! non-loopback address.

use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::process::{BIN, Linkgate, keygen, run, start_serve};
use crate::support::{Upstream, echo_upstream};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn probe(args: &[&str]) -> Output {
    let mut all = vec!["probe"];
    all.extend_from_slice(args);
    run(&all)
}

/// A real gate (key `alice`, handshake timeout 1 s, `serve_flags` added) in front of an echo
/// upstream that counts what reaches it, probed with alice's key when `with_key`, silent limit
/// 5 s. The gate is returned for its log.
async fn probe_a_gate(serve_flags: &[&str], with_key: bool) -> (Output, Upstream, Linkgate) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "alice");
    let upstream = echo_upstream().await;
    let mut flags = vec!["--handshake-timeout", "1s"];
    flags.extend_from_slice(serve_flags);
    let (serve, addr) = start_serve(dir.path(), Some(upstream.addr), &flags).await;
    let addr = addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec![addr.as_str(), "--silent-limit", "5s"];
        if with_key {
            args.extend(["--key", key.to_str().unwrap()]);
        }
        probe(&args)
    })
    .await
    .unwrap();
    (out, upstream, serve)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_impostor_is_refused_by_a_correct_gate_and_only_admissions_reach_the_upstream() {
    // Exempt, so that every impostor is examined rather than refused at accept.
    let (out, upstream, serve) = probe_a_gate(&["--penalty-exempt", "127.0.0.1/32"], true).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for line in [
        "PASS legitimate: admitted as alice (mode sealed-fs)",
        "PASS plain-mode: refused (",
        "PASS tampered-record: the gate reset the connection after a tampered record",
        "PASS replayed-response: denied (VERDICT 0x01)",
        "PASS wrong-key: denied (VERDICT 0x01)",
        "PASS unknown-id: denied (VERDICT 0x01)",
        "PASS reflection: denied (VERDICT 0x01)",
        "PASS http-request: refused as malformed (VERDICT 0x02)",
        "PASS redis-ping: refused as malformed (VERDICT 0x02)",
        "PASS truncated-response: closed after the CHALLENGE",
        "PASS oversized-response: refused as malformed (VERDICT 0x02)",
        "PASS reserved-modes: 251 reserved mode bytes: 251 refused as malformed, 0 refused at accept",
        "PASS silent-client: closed after 1.",
        "ok: 13 passed, 0 failed, 0 skipped",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The gate's side of the same attempts.
    let log = serve.stderr();
    for reason in [
        "reason=denied: wrong proof for key id alice",
        "reason=malformed response: reserved mode 0x03",
        "reason=malformed response: key id length 200 is outside 1..=64",
        "reason=mode plain refused by policy: plain mode is not allowed",
        "reason=record_bad_tag error=a record failed authentication",
    ] {
        assert!(
            log.contains(reason),
            "missing {reason:?} in the gate's log:\n{log}"
        );
    }
    // Only the three admissions (the legitimate client, the session that was then tampered with,
    // and the one whose RESPONSE was replayed) ever reached the upstream.
    assert_eq!(upstream.accepts.load(Ordering::SeqCst), 3, "{stdout}");
    // None of them delivered a byte: not the tampered record, not the replayed session.
    assert_eq!(upstream.bytes.load(Ordering::SeqCst), 0, "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gate_requiring_forward_secrecy_passes_too() {
    let flags = [
        "--require-forward-secrecy",
        "--penalty-exempt",
        "127.0.0.1/32",
    ];
    let (out, _upstream, _serve) = probe_a_gate(&flags, true).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("ok: 13 passed, 0 failed, 0 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS unknown-id: denied (VERDICT 0x01)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_closes_every_connection_at_once_is_inconclusive_not_a_pass() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let out = tokio::task::spawn_blocking(move || probe(&[&addr, "--wait", "500ms"]))
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("INCONCLUSIVE (every connection was closed at accept, before a CHALLENGE): 9 passed, 0 failed"),
        "{stdout}"
    );
    let refused = probe(&["127.0.0.1:1", "--id", "alice"]);
    assert!(!refused.status.success());
    assert_eq!(
        text(&refused.stderr).trim(),
        "linkgate: --id and --mode describe the legitimate client: give its key with --key or --key-env"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gate_with_penalties_still_passes_and_the_summary_says_what_was_only_refused_at_accept() {
    let (out, upstream, _serve) = probe_a_gate(&[], false).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("closed before the CHALLENGE (refused at accept)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("answered only by a refusal at accept (the gate penalizes this source"),
        "{stdout}"
    );
    assert_eq!(upstream.accepts.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_gate_at_all_fails_and_says_so() {
    let upstream = echo_upstream().await;
    let addr = upstream.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        probe(&[&addr, "--wait", "300ms", "--silent-limit", "1s", "--json"])
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    let http = lines
        .iter()
        .find(|line| line["check"] == "http-request")
        .expect("an http-request line");
    assert_eq!(http["status"], "FAIL");
    let detail = http["detail"].as_str().unwrap();
    assert!(
        detail.contains("GET / HTTP/1.1") && detail.contains("not a linkgate CHALLENGE"),
        "{detail}"
    );
    let unknown = lines
        .iter()
        .find(|line| line["check"] == "unknown-id")
        .unwrap();
    assert_eq!(unknown["status"], "FAIL");
    assert_eq!(unknown["detail"], "sent nothing (not a linkgate gate?)");
    assert_eq!(lines.last().unwrap()["passed"], false);
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("linkgate: ")
            && stderr.contains("failed")
            && stderr.contains("http-request"),
        "{stderr}"
    );
}

#[test]
fn nothing_listening_or_no_port_is_one_line_not_a_failure_per_check() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = probe(&[&addr, "--wait", "300ms"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to {addr}"))
            && stderr.contains("nothing was probed"),
        "{stderr}"
    );
    // With --json, stdout still has its one summary object.
    let out = probe(&[&addr, "--wait", "300ms", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(summary["passed"], false);
    assert!(
        summary["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{summary}"
    );
    for bad in ["127.0.0.1", "unix:/run/gate.sock"] {
        let out = probe(&[bad]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(text(&out.stdout).is_empty());
    }
}

/// A stand-in "gate" for this test only: it sends a proper CHALLENGE, then admits whatever
/// comes back (VERDICT 0x00 and a made-up proof).
async fn gate_that_admits_anyone() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut challenge = b"LGATE/1\n".to_vec();
                challenge.extend_from_slice(&[7u8; 32]);
                if stream.write_all(&challenge).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 512];
                // Long enough for a loaded machine to deliver the probe's reply, short enough
                // that the silent-client check sees this hang up well within its --silent-limit
                // (3 s in the test below).
                let read = tokio::time::timeout(Duration::from_millis(600), stream.read(&mut buf));
                if let Ok(Ok(n)) = read.await
                    && n > 0
                {
                    let _ = stream.write_all(&[0u8; 65]).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stand_in_that_admits_anyone_fails_with_the_impostors_it_let_in() {
    let addr = gate_that_admits_anyone().await.to_string();
    let out = tokio::task::spawn_blocking(move || {
        probe(&[&addr, "--wait", "500ms", "--silent-limit", "3s"])
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for line in [
        "FAIL unknown-id: ADMITTED it (VERDICT 0x00 and 64 more bytes)",
        "FAIL wrong-key: ADMITTED it",
        "FAIL reflection: ADMITTED it",
        "FAIL reserved-modes: mode byte 0x03: ADMITTED it",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(
        text(&out.stderr).contains("unknown-id, reflection, http-request"),
        "{}",
        text(&out.stderr)
    );
}

/// Whether this machine lets the test make a network namespace of its own (root, `unshare`,
/// `ip`); where it cannot, the test is skipped unless LINKGATE_REQUIRE_PEERS says it must run.
fn can_make_network_namespaces() -> bool {
    let ok = Command::new("unshare")
        .args(["-n", "ip", "link", "set", "lo", "up"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        ok || std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
        "cannot make a network namespace (unshare -n, ip), which LINKGATE_REQUIRE_PEERS requires"
    );
    ok
}

#[test]
fn plain_mode_allowed_on_a_non_loopback_address_is_flagged() {
    if !can_make_network_namespaces() {
        eprintln!("skipped: no network namespaces here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "alice");
    // In a namespace of its own, 10.77.0.1 is a local address that is not loopback: the gate
    // listens on 0.0.0.0 with plain mode allowed, and the probe reaches it at 10.77.0.1.
    let script = r#"set -e
ip link set lo up
ip addr add 10.77.0.1/32 dev lo
"$BIN" serve --listen 0.0.0.0:7700 --keys "$KEYS" --allow-plain --handshake-timeout 1s \
    --penalty-exempt 10.77.0.1/32 2> "$KEYS/serve.log" &
GATE=$!
for i in $(seq 1 100); do
    if (exec 3<>/dev/tcp/10.77.0.1/7700) 2> /dev/null; then break; fi
    sleep 0.05
done
set +e
"$BIN" probe 10.77.0.1:7700 --key "$KEYS/alice.key" --silent-limit 4s
STATUS=$?
kill $GATE
wait $GATE
exit $STATUS
"#;
    let out = Command::new("timeout")
        .args(["60", "unshare", "-n", "bash", "-c", script])
        .env("BIN", BIN)
        .env("KEYS", dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("FAIL plain-mode: allowed on a non-loopback address"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS legitimate: admitted as alice"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("10.77.0.1:7700 failed 1 of 13 checks: plain-mode"),
        "{}",
        text(&out.stderr)
    );
}
