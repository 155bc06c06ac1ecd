//! The sealed stream as applications see it: every mode over in-memory streams that hand over a
//! few bytes at a time, half-close, truncation, key updates over TCP, and a tampering relay.

use std::time::Duration;

use linkgate::record::RecordLimits;
use linkgate::{Admitted, Credentials, Error, Gate, GateConfig, Key, Mode, RecordError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

use crate::support::wire::record_counting_relay;
use crate::support::{key, keyring, payload, plain_gate};

/// Both ends of an admitted session over an in-memory pipe of `capacity` bytes.
async fn session_over_duplex(
    mode: Mode,
    capacity: usize,
) -> (Admitted<DuplexStream>, Admitted<DuplexStream>) {
    let alice = key("alice");
    let gate = plain_gate(&[&alice]);
    let (client_end, server_end) = tokio::io::duplex(capacity);
    let server = tokio::spawn(async move { gate.admit(server_end).await });
    let client = linkgate::authenticate(client_end, &Credentials::new(alice).with_mode(mode))
        .await
        .unwrap();
    (client, server.await.unwrap().unwrap())
}

/// Writes `data` in uneven pieces, then ends the direction.
async fn send_in_pieces(mut to: impl AsyncWrite + Unpin, data: Vec<u8>) {
    let mut rest = &data[..];
    let mut piece = 1;
    while !rest.is_empty() {
        let n = piece.min(rest.len());
        to.write_all(&rest[..n]).await.unwrap();
        rest = &rest[n..];
        piece = piece * 7 % 40_000 + 1;
    }
    to.shutdown().await.unwrap();
}

async fn read_all(mut from: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut got = Vec::new();
    from.read_to_end(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn every_mode_survives_partial_reads_and_half_closes_both_ways() {
    for mode in Mode::ALL {
        // 7 bytes at a time through the pipe: every record arrives in many reads.
        let (client, server) = session_over_duplex(mode, 7).await;
        let (client_read, client_write) = tokio::io::split(client);
        let (server_read, server_write) = tokio::io::split(server);
        let up = payload(200_000, 1);
        let down = payload(150_000, 2);
        // The client finishes sending first; the server keeps sending after reading the end.
        let (sent_up, sent_down) = (up.clone(), down.clone());
        let client_send = tokio::spawn(send_in_pieces(client_write, sent_up));
        let server_side = tokio::spawn(async move {
            let got = read_all(server_read).await;
            send_in_pieces(server_write, sent_down).await;
            got
        });
        let got_down = read_all(client_read).await;
        client_send.await.unwrap();
        assert!(server_side.await.unwrap() == up, "{mode}: client to server");
        assert!(
            got_down == down,
            "{mode}: server to client, after the client's half-close"
        );
    }
}

#[tokio::test]
async fn a_stream_cut_without_close_notify_is_an_error_not_an_end() {
    for mode in [Mode::Sealed, Mode::SealedFs] {
        let (client, mut server) = session_over_duplex(mode, 64 * 1024).await;
        let mut client_io = client.into_inner();
        // Data sealed by hand would be needed to write more; cutting is enough.
        client_io.shutdown().await.unwrap();
        drop(client_io);
        let mut buf = Vec::new();
        let err = server.read_to_end(&mut buf).await.unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
        assert!(
            matches!(inner, Some(Error::Record(RecordError::Truncated))),
            "{mode}: {err}"
        );
    }
}

#[tokio::test]
async fn plain_mode_hands_back_the_bare_stream() {
    let (client, server) = session_over_duplex(Mode::Plain, 1024).await;
    let mut client = client.into_inner();
    let (mut server, admission, sealed) = server.into_parts();
    assert!(sealed.is_none());
    assert_eq!(admission.key_id().as_str(), "alice");
    client.write_all(b"raw after the handshake").await.unwrap();
    let mut got = [0u8; 23];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"raw after the handshake");
}

/// Taking a sealed stream apart after it has read (and, idle, freed its read buffer) or after
/// the peer's close_notify hands back what is left, and does not panic on the freed buffer.
#[tokio::test]
async fn a_sealed_stream_comes_apart_after_reading_and_after_the_peers_close() {
    for mode in [Mode::Sealed, Mode::SealedFs] {
        let (mut client, mut server) = session_over_duplex(mode, 64 * 1024).await;
        client.write_all(b"hello").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        // Nothing more has come: the read goes idle and frees its buffer.
        let mut more = [0u8; 8];
        let idle = tokio::time::timeout(Duration::from_millis(20), server.read(&mut more)).await;
        assert!(idle.is_err(), "{mode}: a read completed with nothing sent");
        let (_, _, parts) = server.into_parts();
        let parts = parts.expect("a sealed stream has record state");
        assert!(parts.unread_plaintext.is_empty(), "{mode}");
        assert!(parts.unread_ciphertext.is_empty(), "{mode}");

        let (mut client, mut server) = session_over_duplex(mode, 64 * 1024).await;
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"bye", "{mode}");
        let (_, _, parts) = server.into_parts();
        assert!(parts.unwrap().unread_plaintext.is_empty(), "{mode}");
    }
}

/// A gate that sends a KeyUpdate every 4 records, and a client that does too.
fn rekeying(alice: &Key) -> (Gate, Credentials) {
    let limits = RecordLimits::new().with_key_update_interval(4);
    let gate = Gate::with_config(
        keyring(&[alice]),
        GateConfig::new().with_record_limits(limits),
    )
    .unwrap();
    (
        gate,
        Credentials::new(alice.clone()).with_record_limits(limits),
    )
}

#[tokio::test]
async fn key_updates_every_four_records_over_a_long_transfer() {
    let alice = key("alice");
    let (gate, credentials) = rekeying(&alice);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let admitted = gate.admit(stream).await.unwrap();
        crate::support::echo(admitted).await;
    });
    // Mode 0x02 for "alice": a RESPONSE of 2 + 5 + 96 bytes; CHALLENGE and VERDICT, 40 + 65.
    let (relay, counts) = record_counting_relay(addr, 103, 105).await;
    let client = linkgate::connect(relay, &credentials).await.unwrap();
    // 8 MiB each way is about 512 records, so about 128 key updates per direction.
    let data = payload(8 << 20, 9);
    let (reader, writer) = tokio::io::split(client);
    let sender = tokio::spawn(send_in_pieces(writer, data.clone()));
    let echoed = read_all(reader).await;
    sender.await.unwrap();
    server.await.unwrap();
    assert!(
        echoed == data,
        "8 MiB came back intact across the key updates"
    );
    for (way, count) in [("up", &counts.up), ("down", &counts.down)] {
        // The KeyUpdate is every 4th record, at `seq` 3 under each key.
        if let Err(wrong) = count.key_updates_every(4, 512) {
            panic!("{way}: {wrong}");
        }
    }
}

/// Forwards bytes between two TCP streams, applying `tamper` to the server-bound bytes once the
/// handshake (the first `skip` bytes) has passed.
async fn tampering_relay(
    gate_addr: std::net::SocketAddr,
    skip: usize,
    tamper: fn(&mut Vec<u8>),
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(gate_addr).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        });
        let mut seen = 0usize;
        let mut held = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if seen >= skip {
                held.extend_from_slice(&buf[..n]);
            } else {
                let keep = (skip - seen).min(n);
                if sw.write_all(&buf[..keep]).await.is_err() {
                    return;
                }
                held.extend_from_slice(&buf[keep..n]);
            }
            seen += n;
            if held.len() >= 200 {
                tamper(&mut held);
                let _ = sw.write_all(&held).await;
                held.clear();
            }
        }
        let _ = sw.shutdown().await;
    });
    addr
}

#[tokio::test]
async fn a_relay_that_flips_a_bit_gets_nothing_through() {
    let alice = key("alice");
    let gate = Gate::new(keyring(&[&alice])).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut admitted = gate.admit(stream).await.unwrap();
        let mut got = Vec::new();
        let result = admitted.read_to_end(&mut got).await;
        (got, result)
    });
    // The RESPONSE in mode 0x01 for "alice" is 2 + 5 + 64 = 71 bytes.
    let relay = tampering_relay(gate_addr, 71, |held| held[100] ^= 0x01).await;
    let mut client = linkgate::connect(relay, &Credentials::new(alice).with_mode(Mode::Sealed))
        .await
        .unwrap();
    client.write_all(&[0x42; 300]).await.unwrap();
    let _ = client.shutdown().await;
    let (got, result) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.is_empty(),
        "nothing of the tampered record was handed over"
    );
    let err = result.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(
        matches!(inner, Some(Error::Record(RecordError::BadTag))),
        "{err}"
    );
}

/// A sealed session moved to another runtime with `map_io` (`into_std` here, `from_std` there)
/// keeps its keys and what it had already read: the plaintext buffered before the move is read
/// after it, and both directions go on.
#[tokio::test]
async fn a_sealed_session_moves_to_another_runtime_with_what_it_buffered() {
    let alice = key("alice");
    let gate = plain_gate(&[&alice]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        gate.admit(tcp).await
    });
    let credentials = Credentials::new(alice).with_mode(Mode::SealedFs);
    let mut client = linkgate::connect(addr, &credentials).await.unwrap();
    let mut server = server.await.unwrap().unwrap();
    // Two records in one segment: reading the first buffers the second.
    client.write_all(b"first").await.unwrap();
    client.write_all(b"second").await.unwrap();
    client.flush().await.unwrap();
    let mut first = [0u8; 5];
    server.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"first");

    let detached = server.map_io(TcpStream::into_std).unwrap();
    let moved = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut server = detached.map_io(TcpStream::from_std).unwrap();
            let mut second = [0u8; 6];
            server.read_exact(&mut second).await.unwrap();
            let mut third = [0u8; 5];
            server.read_exact(&mut third).await.unwrap();
            server.write_all(b"reply").await.unwrap();
            server.shutdown().await.unwrap();
            (second, third)
        })
    });
    client.write_all(b"third").await.unwrap();
    client.flush().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut reply))
        .await
        .expect("the moved session answers")
        .unwrap();
    let (second, third) = tokio::task::spawn_blocking(move || moved.join().unwrap())
        .await
        .unwrap();
    assert_eq!((&second, &third), (b"second", b"third"));
    assert_eq!(reply, b"reply");
}
