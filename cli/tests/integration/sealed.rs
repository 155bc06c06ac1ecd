//! The sealed modes through the real binary: unmodified client → `connect` → (relay) → `serve`
//! → upstream, in every mode, and a relay that tampers with the sealed stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::process::{check, keygen, start_serve};
use crate::support::wire::{fail_and_expect_a_reset, record_counting_relay};
use crate::support::{echo_through, echo_upstream, payload, start_connect};

/// The `serve` and `connect` flags for `mode`.
fn mode_flags(mode: &str) -> (Vec<&'static str>, Vec<String>) {
    let serve: Vec<&str> = if mode == "plain" {
        vec!["--allow-plain"]
    } else {
        vec![]
    };
    (serve, vec!["--mode".into(), mode.into()])
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mode_carries_64_mib_each_way_intact() {
    for mode in ["plain", "sealed", "sealed-fs"] {
        let dir = TempDir::new().unwrap();
        let key = keygen(dir.path(), "alice");
        let upstream = echo_upstream().await;
        let (serve_flags, connect_flags) = mode_flags(mode);
        let (serve, gate) = start_serve(dir.path(), Some(upstream.addr), &serve_flags).await;
        let connect_flags: Vec<&str> = connect_flags.iter().map(String::as_str).collect();
        let (_connect, local) = start_connect(gate, &key, &connect_flags).await;

        let data = payload(64 << 20, 11);
        let digest = Sha256::digest(&data);
        let received = echo_through(TcpStream::connect(local).await.unwrap(), data).await;
        assert_eq!(
            Sha256::digest(&received),
            digest,
            "{mode}: SHA-256 of what came back"
        );
        serve
            .wait_for_log(&["admitted", "key_id=alice", &format!("mode={mode}")])
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_sealed_connections_and_half_close_both_ways() {
    for mode in ["sealed", "sealed-fs"] {
        let dir = TempDir::new().unwrap();
        let key = keygen(dir.path(), "alice");
        let upstream = echo_upstream().await;
        let (_serve, gate) = start_serve(dir.path(), Some(upstream.addr), &[]).await;
        let (_connect, local) = start_connect(gate, &key, &["--mode", mode]).await;
        let mut clients = Vec::new();
        for i in 0..50u64 {
            clients.push(tokio::spawn(async move {
                let data = payload(100_000 + i as usize * 997, i);
                let mut stream = TcpStream::connect(local).await.unwrap();
                // Send everything, then half-close: the echo still comes back in full, and the
                // client's end reaches the upstream, which ends its side in turn.
                stream.write_all(&data).await.unwrap();
                stream.shutdown().await.unwrap();
                let mut back = Vec::new();
                stream.read_to_end(&mut back).await.unwrap();
                assert!(
                    back == data,
                    "connection {i} ({mode}) got different bytes back"
                );
            }));
        }
        for client in clients {
            client.await.unwrap();
        }
        assert_eq!(
            upstream.accepts.load(std::sync::atomic::Ordering::SeqCst),
            50
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_can_close_first_and_the_client_can_still_send() {
    // Upstream: sends a greeting, half-closes, then reads everything the client sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let got = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream
            .write_all(b"greeting, then I am done talking")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        all
    });
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (serve, gate) = start_serve(dir.path(), Some(upstream), &[]).await;
    let (_connect, local) = start_connect(gate, &key, &[]).await;
    let mut client = TcpStream::connect(local).await.unwrap();
    let mut greeting = Vec::new();
    client.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(
        greeting, b"greeting, then I am done talking",
        "a clean end, via close_notify"
    );
    let late = payload(3 << 20, 5);
    client.write_all(&late).await.unwrap();
    client.shutdown().await.unwrap();
    serve
        .wait_for_log(&["closed", "bytes_in=3145728", "bytes_out=32"])
        .await;
    let got = tokio::time::timeout(Duration::from_secs(10), got)
        .await
        .expect("the upstream did not see the end of the client's bytes")
        .unwrap();
    assert!(got == late, "the other direction kept flowing");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_against_a_gate_that_refuses_the_mode_says_so() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (serve, gate) = start_serve(dir.path(), None, &["--require-forward-secrecy"]).await;
    let gate = gate.to_string();
    for (mode, policy, hint) in [
        (
            "plain",
            "--allow-plain",
            "it admits plain only with --allow-plain",
        ),
        (
            "sealed",
            "forward secrecy is required",
            "it may require forward secrecy; try --mode sealed-fs",
        ),
    ] {
        let out = check(&gate, &key, &["--mode", mode]);
        assert_eq!(out.status.code(), Some(1));
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(
            message.contains(&format!("the gate refused mode {mode}")) && message.contains(hint),
            "{message}"
        );
        serve
            .wait_for_log(&[
                "connection rejected",
                &format!("mode {mode} refused by policy"),
                policy,
            ])
            .await;
    }
    let out = check(&gate, &key, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An upstream that records every byte it receives and how its connection ended.
struct RecordingUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    ending: Arc<Mutex<Option<String>>>,
}

async fn recording_upstream() -> RecordingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let ending = Arc::new(Mutex::new(None));
    let (r, e) = (Arc::clone(&received), Arc::clone(&ending));
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let how = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break "eof".to_owned(),
                Ok(n) => r.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(err) => break format!("{:?}", err.kind()),
            }
        };
        *e.lock().unwrap() = Some(how);
    });
    RecordingUpstream {
        addr,
        received,
        ending,
    }
}

/// What the relay does to the client-to-gate records (numbered from 0 after the handshake).
#[derive(Clone, Copy, Debug)]
enum Tamper {
    FlipBit(usize),
    Drop(usize),
    Swap(usize),
    CutAfter(usize),
    Inject,
}

/// A relay between `connect` and `serve` that passes the handshake (the first `handshake_len`
/// client bytes) untouched, then applies `tamper` to the client's records. When the gate side
/// fails, the client side is reset too. Also returns how many plaintext bytes the records it
/// passed intact, before the tampered one, carried.
async fn tampering_relay(
    gate: SocketAddr,
    handshake_len: usize,
    tamper: Tamper,
) -> (SocketAddr, Arc<Mutex<usize>>) {
    let intact = Arc::new(Mutex::new(0usize));
    let intact_before = Arc::clone(&intact);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(gate).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let back = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match sr.read(&mut buf).await {
                    Ok(0) => {
                        let _ = cw.shutdown().await;
                        return None;
                    }
                    Ok(n) => {
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return None;
                        }
                    }
                    // The gate reset: pass the reset on to `connect`.
                    Err(_) => return Some(cw),
                }
            }
        });
        let mut pending = Vec::new();
        let mut passed = 0usize;
        let mut record = 0usize;
        let mut held: Option<Vec<u8>> = None;
        let mut buf = vec![0u8; 65536];
        'relay: loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            if passed < handshake_len {
                let take = (handshake_len - passed).min(pending.len());
                let head: Vec<u8> = pending.drain(..take).collect();
                let _ = sw.write_all(&head).await;
                passed += take;
                if passed == handshake_len && matches!(tamper, Tamper::Inject) {
                    let _ = sw.write_all(b"SET injected 1\r\n").await;
                }
            }
            while pending.len() >= 5 {
                let len = 5 + usize::from(u16::from_be_bytes([pending[3], pending[4]]));
                if pending.len() < len {
                    break;
                }
                let mut one: Vec<u8> = pending.drain(..len).collect();
                let untouched = match tamper {
                    Tamper::FlipBit(k) | Tamper::Drop(k) | Tamper::Swap(k) => record < k,
                    Tamper::CutAfter(k) => record <= k,
                    Tamper::Inject => false,
                };
                if untouched {
                    // Data, type byte and tag: L - 17 bytes of plaintext.
                    *intact_before.lock().unwrap() += len - 5 - 17;
                }
                let out = match tamper {
                    Tamper::FlipBit(k) if k == record => {
                        one[len / 2] ^= 0x04;
                        vec![one]
                    }
                    Tamper::Drop(k) if k == record => vec![],
                    Tamper::Swap(k) if k == record => {
                        held = Some(one);
                        vec![]
                    }
                    Tamper::Swap(k) if k + 1 == record => vec![one, held.take().unwrap()],
                    Tamper::CutAfter(k) if k < record => {
                        // Stop here: the gate sees TCP end without close_notify.
                        let _ = sw.shutdown().await;
                        break 'relay;
                    }
                    _ => vec![one],
                };
                record += 1;
                for piece in out {
                    let _ = sw.write_all(&piece).await;
                }
            }
        }
        if !matches!(tamper, Tamper::CutAfter(_)) {
            let _ = sw.shutdown().await;
        }
        if let Ok(Some(client_side)) = back.await {
            let client = client_side.reunite(cr).unwrap();
            let _ = client.set_zero_linger();
        }
        // Keep the gate side open until the gate decides (the halves drop here).
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    (addr, intact)
}

/// The RESPONSE of a sealed-fs client presenting "alice": 2 + 5 + 32 + 32 + 32 bytes.
const SEALED_FS_ALICE_RESPONSE: usize = 103;

#[tokio::test(flavor = "multi_thread")]
async fn a_tampering_relay_gets_nothing_past_the_tampered_record_and_both_sides_reset() {
    for (tamper, reason) in [
        (Tamper::FlipBit(2), "record_bad_tag"),
        (Tamper::Drop(2), "record_bad_tag"),
        (Tamper::Swap(2), "record_bad_tag"),
        (Tamper::CutAfter(2), "record_truncated"),
        (Tamper::Inject, "record_bad_header"),
    ] {
        let dir = TempDir::new().unwrap();
        let key = keygen(dir.path(), "alice");
        let upstream = recording_upstream().await;
        let (serve, gate) = start_serve(dir.path(), Some(upstream.addr), &[]).await;
        let (relay, intact) = tampering_relay(gate, SEALED_FS_ALICE_RESPONSE, tamper).await;
        let (_connect, local) = start_connect(relay, &key, &[]).await;

        // Five messages, most in a record of their own (the client waits between them). A
        // reset is reported once, to whichever call meets it first: a write or the read.
        let mut client = TcpStream::connect(local).await.unwrap();
        // Only once the tunnel is up does each message become a record of its own.
        _connect.wait_for_log(&["authenticated to the gate"]).await;
        let mut sent = Vec::new();
        let mut failed = None;
        for i in 0..5u8 {
            let message = vec![b'0' + i; 1000];
            if let Err(err) = client.write_all(&message).await {
                failed = Some(err);
                break;
            }
            sent.push(message);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if failed.is_none() {
            let _ = client.shutdown().await;
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
                .await
                .expect("the client hears the end");
            failed = read.err();
        }
        let failed = failed.unwrap_or_else(|| {
            panic!(
                "{tamper:?}: the client saw a clean end\nconnect:\n{}\nserve:\n{}",
                _connect.stderr(),
                serve.stderr()
            )
        });
        assert_eq!(
            failed.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{tamper:?}: {failed}"
        );

        let line = serve
            .wait_for_log(&["closed after an error", &format!("reason={reason}")])
            .await;
        assert!(line.contains("key_id=alice"), "{line}");
        // Give the upstream a moment to see the reset.
        for _ in 0..100 {
            if upstream.ending.lock().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let received = upstream.received.lock().unwrap().clone();
        // `connect` may put several messages in one record: what may arrive is exactly what the
        // intact records before the tampered one carried.
        let intact = *intact.lock().unwrap();
        let expected = &sent.concat()[..intact];
        assert!(
            received == expected,
            "{tamper:?}: the upstream got {} bytes, expected the {intact} before the tampered record",
            received.len()
        );
        if !matches!(tamper, Tamper::Inject) {
            assert!(
                intact >= 1000,
                "{tamper:?}: some records passed before the tampering"
            );
        }
        assert_eq!(
            upstream.ending.lock().unwrap().as_deref(),
            Some("ConnectionReset"),
            "{tamper:?}: the upstream is reset, not closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_updates_every_four_records_through_the_chain() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let upstream = echo_upstream().await;
    let (_serve, gate) = start_serve(
        dir.path(),
        Some(upstream.addr),
        &["--key-update-after-records", "4"],
    )
    .await;
    // Mode 0x02 for "alice": a RESPONSE of 2 + 5 + 96 bytes; CHALLENGE and VERDICT, 40 + 65.
    let (relay, counts) = record_counting_relay(gate, 103, 105).await;
    let (_connect, local) = start_connect(relay, &key, &["--key-update-after-records", "4"]).await;
    // 16 MiB each way: about 1000 records, 250 key updates per direction and process.
    let data = payload(16 << 20, 21);
    let digest = Sha256::digest(&data);
    let received = echo_through(TcpStream::connect(local).await.unwrap(), data).await;
    assert_eq!(Sha256::digest(&received), digest);
    for (way, count) in [("up", &counts.up), ("down", &counts.down)] {
        // The KeyUpdate is every 4th record, at `seq` 3 under each key.
        if let Err(wrong) = count.key_updates_every(4, 1000) {
            panic!("{way}: {wrong}");
        }
    }
}

/// A record that fails to open is answered with a reset, whatever serves the connection: the
/// built-in echo as much as a forwarded upstream (PROTOCOL.md, "Failure").
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_record_to_the_built_in_echo_is_answered_with_a_reset() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (serve, gate) = start_serve(dir.path(), None, &[]).await;
    let credentials = linkgate::Credentials::new(linkgate::Key::from_file(&key).unwrap());
    let mut admitted = linkgate::connect(gate, &credentials).await.unwrap();
    admitted.write_all(b"first").await.unwrap();
    let mut echoed = [0u8; 5];
    admitted.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"first");
    if let Err(wrong) = fail_and_expect_a_reset(admitted.get_mut(), false).await {
        panic!("the gate: {wrong}");
    }
    serve
        .wait_for_log(&["closed after an error", "record_bad_tag"])
        .await;
}
