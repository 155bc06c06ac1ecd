//! The linkgate/1 handshake over real TCP on 127.0.0.1: legitimate clients, impostor clients and
//! impostor servers, in every mode. Every rejection is checked on both sides: the server's reason
//! and what the client saw.

use std::net::SocketAddr;
use std::time::Duration;

use linkgate::protocol::{self, ClientHello, Nonce};
use linkgate::{
    Admitted, Credentials, Error, Gate, GateConfig, Key, KeyId, Malformed, Mode, Refusal, Rejection,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{gate, key, keyring, plain_gate, raw_connect, read_until_closed};

type Outcome = linkgate::Result<Admitted<TcpStream>>;

/// Listens on an ephemeral port and runs `gate.admit` on the first connection.
async fn serve_one(gate: Gate) -> (SocketAddr, JoinHandle<Outcome>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        gate.admit(stream).await
    });
    (addr, task)
}

async fn server_error(task: JoinHandle<Outcome>) -> Error {
    match task.await.unwrap() {
        Ok(admitted) => panic!(
            "server admitted {}, expected a rejection",
            admitted.key_id()
        ),
        Err(err) => err,
    }
}

/// A plain-mode RESPONSE (mode 0x00), as the original linkgate/1 clients send it.
fn plain_response(key: &Key, id: &KeyId, server_nonce: &Nonce, client_nonce: [u8; 32]) -> Vec<u8> {
    ClientHello::new(key, id, Mode::Plain, server_nonce, client_nonce, None)
        .unwrap()
        .response()
        .encode()
}

#[tokio::test]
async fn legitimate_client_is_admitted_and_bytes_flow_both_ways_in_every_mode() {
    for mode in Mode::ALL {
        let alice = key("alice");
        let (addr, server) = serve_one(plain_gate(&[&alice, &key("bob")])).await;

        let credentials = Credentials::new(alice).with_mode(mode);
        let mut client = linkgate::connect(addr, &credentials).await.unwrap();
        assert_eq!(client.mode(), mode);
        let mut server_stream = server.await.unwrap().unwrap();
        assert_eq!(
            server_stream.key_id().as_str(),
            "alice",
            "the server learns who connected"
        );
        assert_eq!(server_stream.mode(), mode, "both sides agree on the mode");

        // Every byte value, both ways, unchanged; each side ends its direction.
        let upstream: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let downstream: Vec<u8> = upstream.iter().rev().copied().collect();
        let (up, down) = (upstream.clone(), downstream.clone());
        let server_side = tokio::spawn(async move {
            let mut got = vec![0u8; up.len()];
            server_stream.read_exact(&mut got).await.unwrap();
            server_stream.write_all(&down).await.unwrap();
            server_stream.shutdown().await.unwrap();
            got
        });
        client.write_all(&upstream).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got == downstream, "{mode}: downstream bytes differ");
        assert!(
            server_side.await.unwrap() == upstream,
            "{mode}: upstream bytes differ"
        );
    }
}

#[tokio::test]
async fn a_default_gate_refuses_plain_and_says_which_policy() {
    let alice = key("alice");
    let (addr, server) = serve_one(gate(&[&alice])).await;
    let credentials = Credentials::new(alice).with_mode(Mode::Plain);
    let err = linkgate::connect(addr, &credentials).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rejected(Rejection::RefusedAsMalformed(Mode::Plain))
        ),
        "{err}"
    );
    let reason = server_error(server).await;
    assert!(
        matches!(
            reason,
            Error::Refused(Refusal::ModeNotAllowed {
                mode: Mode::Plain,
                ..
            })
        ),
        "{reason}"
    );
    assert!(reason.to_string().contains("--allow-plain"), "{reason}");
}

#[tokio::test]
async fn a_gate_requiring_forward_secrecy_refuses_sealed() {
    let alice = key("alice");
    let config = GateConfig::new().with_forward_secrecy_required(true);
    let strict = Gate::with_config(keyring(&[&alice]), config).unwrap();
    let (addr, server) = serve_one(strict.clone()).await;
    let err = linkgate::connect(
        addr,
        &Credentials::new(alice.clone()).with_mode(Mode::Sealed),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rejected(Rejection::RefusedAsMalformed(Mode::Sealed))
        ),
        "{err}"
    );
    let reason = server_error(server).await;
    assert!(
        reason.to_string().contains("forward secrecy is required"),
        "{reason}"
    );

    let (addr, server) = serve_one(strict).await;
    let client = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(client.mode(), Mode::SealedFs);
    assert_eq!(server.await.unwrap().unwrap().mode(), Mode::SealedFs);
}

#[tokio::test]
async fn bytes_sent_right_after_the_response_reach_the_wrapped_server() {
    let alice = key("alice");
    let (addr, server) = serve_one(plain_gate(&[&alice])).await;

    // RESPONSE and the first application bytes leave in a single write.
    let (mut client, server_nonce) = raw_connect(addr).await;
    let client_nonce = [7u8; 32];
    let mut bytes = plain_response(&alice, alice.id(), &server_nonce, client_nonce);
    bytes.extend_from_slice(b"PING right behind the response");
    client.write_all(&bytes).await.unwrap();

    let mut server_stream = server.await.unwrap().unwrap();
    assert_eq!(server_stream.key_id().as_str(), "alice");
    let mut app = [0u8; 30];
    server_stream.read_exact(&mut app).await.unwrap();
    assert_eq!(&app, b"PING right behind the response");

    let mut verdict = [0u8; protocol::ADMITTED_LEN];
    client.read_exact(&mut verdict).await.unwrap();
    assert_eq!(verdict[0], protocol::VERDICT_ADMITTED);
    assert!(protocol::verify_server_proof(
        &alice,
        alice.id(),
        &server_nonce,
        &client_nonce,
        &verdict[1..]
    ));
}

#[tokio::test]
async fn sealed_records_sent_right_after_the_response_are_opened() {
    // Mode 0x01 clients hold their keys once the RESPONSE is out, and may send records at once.
    use linkgate::record::Sealer;
    let alice = key("alice");
    let (addr, server) = serve_one(gate(&[&alice])).await;
    let (mut client, server_nonce) = raw_connect(addr).await;
    let hello = ClientHello::new(
        &alice,
        alice.id(),
        Mode::Sealed,
        &server_nonce,
        [9; 32],
        None,
    )
    .unwrap();
    let mut bytes = hello.response().encode();
    // The client's c2s secret comes from the same schedule; run it through a loopback judge.
    let judged = protocol::judge(
        &bytes,
        &server_nonce,
        &keyring(&[&alice]),
        &key("dummy"),
        &protocol::ModePolicy::default(),
        protocol::EphemeralSecret::generate,
    )
    .unwrap();
    let protocol::Judgement::Admitted(admitted) = judged else {
        panic!("{judged:?}")
    };
    let c2s = admitted.secrets().unwrap().client_to_server().clone();
    Sealer::new(&c2s).seal(b"early data", &mut bytes).unwrap();
    client.write_all(&bytes).await.unwrap();

    let mut server_stream = server.await.unwrap().unwrap();
    let mut early = [0u8; 10];
    server_stream.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"early data");
    let mut verdict = [0u8; protocol::ADMITTED_LEN];
    client.read_exact(&mut verdict).await.unwrap();
    hello.finish(&verdict).expect("the gate proves the key");
}

#[tokio::test]
async fn wrong_key_is_denied() {
    let (addr, server) = serve_one(gate(&[&key("alice")])).await;
    let impostor = key("alice");
    let client = linkgate::connect(addr, &Credentials::new(impostor)).await;
    assert!(
        matches!(client, Err(Error::Rejected(Rejection::Denied))),
        "{client:?}"
    );
    let reason = server_error(server).await;
    assert!(
        matches!(&reason, Error::Refused(Refusal::WrongProof(id)) if id.as_str() == "alice"),
        "{reason}"
    );
}

#[tokio::test]
async fn unknown_key_id_is_denied() {
    let (addr, server) = serve_one(gate(&[&key("alice")])).await;
    let client = linkgate::connect(addr, &Credentials::new(key("mallory"))).await;
    assert!(
        matches!(client, Err(Error::Rejected(Rejection::Denied))),
        "{client:?}"
    );
    let reason = server_error(server).await;
    assert!(
        matches!(&reason, Error::Refused(Refusal::UnknownKeyId(id)) if id.as_str() == "mallory"),
        "{reason}"
    );
    assert_eq!(reason.to_string(), "denied: unknown key id mallory");
    assert_eq!(
        reason.reason(),
        "unknown_key_id",
        "the metrics label never carries the id"
    );
}

/// What a raw client receives after its RESPONSE, until the server closes.
async fn bytes_after_response(
    gate: Gate,
    respond: impl FnOnce(&Nonce) -> Vec<u8>,
) -> (Vec<u8>, Error, Duration) {
    let (addr, server) = serve_one(gate).await;
    let (mut client, server_nonce) = raw_connect(addr).await;
    let started = std::time::Instant::now();
    client.write_all(&respond(&server_nonce)).await.unwrap();
    let received = read_until_closed(&mut client).await;
    let elapsed = started.elapsed();
    (received, server_error(server).await, elapsed)
}

#[tokio::test]
async fn unknown_id_and_wrong_proof_look_the_same_to_the_client() {
    let alice = key("alice");
    let gate = plain_gate(&[&alice]);
    let guesser = key("alice");
    let stranger = guesser.clone().with_id(KeyId::new("zed").unwrap());

    let mut wrong_times = Vec::new();
    let mut unknown_times = Vec::new();
    for _ in 0..20 {
        let (wrong, reason, t) = bytes_after_response(gate.clone(), |nonce| {
            plain_response(&guesser, guesser.id(), nonce, [1; 32])
        })
        .await;
        assert_eq!(wrong, [protocol::VERDICT_DENIED]);
        assert!(matches!(reason, Error::Refused(Refusal::WrongProof(_))));
        wrong_times.push(t);

        // Same id length, so the RESPONSE has the same size too.
        let (unknown, reason, t) = bytes_after_response(gate.clone(), |nonce| {
            plain_response(&stranger, &KeyId::new("bobby").unwrap(), nonce, [1; 32])
        })
        .await;
        assert_eq!(unknown, wrong, "identical bytes for both refusals");
        assert!(matches!(reason, Error::Refused(Refusal::UnknownKeyId(_))));
        unknown_times.push(t);
    }
    wrong_times.sort();
    unknown_times.sort();
    // Timing is not asserted (speed belongs to the benchmarks); the medians are printed so a
    // reader can see that both paths do the same work (an HMAC under the dummy key).
    println!(
        "median time to refusal: wrong proof {:?}, unknown id {:?}",
        wrong_times[10], unknown_times[10]
    );
}

#[tokio::test]
async fn replayed_response_is_denied() {
    let alice = key("alice");
    let gate = plain_gate(&[&alice]);

    // Record a successful session's RESPONSE as an eavesdropper would.
    let (addr, server) = serve_one(gate.clone()).await;
    let (mut client, server_nonce) = raw_connect(addr).await;
    let captured = plain_response(&alice, alice.id(), &server_nonce, [9; 32]);
    client.write_all(&captured).await.unwrap();
    let mut verdict = [0u8; protocol::ADMITTED_LEN];
    client.read_exact(&mut verdict).await.unwrap();
    assert_eq!(verdict[0], protocol::VERDICT_ADMITTED);
    assert_eq!(server.await.unwrap().unwrap().key_id().as_str(), "alice");

    // Replay it on a new connection: the new server nonce makes it worthless.
    let (received, reason, _) = bytes_after_response(gate, |_| captured.clone()).await;
    assert_eq!(received, [protocol::VERDICT_DENIED]);
    assert!(
        matches!(&reason, Error::Refused(Refusal::WrongProof(id)) if id.as_str() == "alice"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_relay_rewriting_the_mode_byte_gets_denied() {
    // Downgrade attempt: the client asks for sealed-fs; a relay rewrites the mode to plain
    // (dropping e_C so the length fits). The proof covers the mode, so the gate denies.
    let alice = key("alice");
    let (addr, server) = serve_one(plain_gate(&[&alice])).await;
    let (mut client, server_nonce) = raw_connect(addr).await;
    let hello = ClientHello::new(
        &alice,
        alice.id(),
        Mode::SealedFs,
        &server_nonce,
        [5; 32],
        None,
    )
    .unwrap();
    let honest = hello.response().encode();
    let mut downgraded = honest[..2 + 5 + 32].to_vec();
    downgraded[0] = Mode::Plain.wire_byte();
    downgraded.extend_from_slice(&honest[honest.len() - 32..]);
    client.write_all(&downgraded).await.unwrap();
    assert_eq!(
        read_until_closed(&mut client).await,
        [protocol::VERDICT_DENIED]
    );
    assert!(matches!(
        server_error(server).await,
        Error::Refused(Refusal::WrongProof(_))
    ));
}

#[tokio::test]
async fn reflection_gets_nothing_usable() {
    // The attacker holds connection A open and wants a proof over A's nonce. On a second
    // connection B it offers A's server nonce as its client nonce, hoping B's server will
    // answer with something A would accept. B only ever sends its CHALLENGE, then `denied`:
    // no proof is produced before the client has proved the key.
    let alice = key("alice");
    let gate = gate(&[&alice]);
    let (addr_a, server_a) = serve_one(gate.clone()).await;
    let (_conn_a, nonce_a) = raw_connect(addr_a).await;

    let (received, reason, _) = bytes_after_response(gate, |_| {
        let mut response = vec![Mode::Sealed.wire_byte(), 5];
        response.extend_from_slice(b"alice");
        response.extend_from_slice(&nonce_a);
        response.extend_from_slice(&nonce_a); // anything: the attacker has no proof
        response
    })
    .await;
    assert_eq!(
        received,
        [protocol::VERDICT_DENIED],
        "only the denial, no proof"
    );
    assert!(
        matches!(reason, Error::Refused(Refusal::WrongProof(_))),
        "{reason}"
    );
    server_a.abort();
}

#[tokio::test]
async fn truncated_response_then_close_gets_nothing_more() {
    let (addr, server) = serve_one(gate(&[&key("alice")])).await;
    let (mut client, _) = raw_connect(addr).await;
    client.write_all(&[0x01, 0x05, b'a', b'l']).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(
        read_until_closed(&mut client).await,
        b"",
        "no verdict for a half response"
    );
    assert!(matches!(server_error(server).await, Error::ClosedEarly));
}

async fn assert_malformed(response: Vec<u8>, expected: Malformed) {
    let (received, reason, _) = bytes_after_response(gate(&[&key("alice")]), |_| response).await;
    assert_eq!(received, [protocol::VERDICT_MALFORMED]);
    assert!(
        matches!(&reason, Error::Refused(Refusal::Malformed(m)) if *m == expected),
        "expected {expected:?}, got {reason}"
    );
}

fn response_with(mode: u8, n: u8, id: &[u8]) -> Vec<u8> {
    let mut response = vec![mode, n];
    response.extend_from_slice(id);
    response.extend_from_slice(&[0x55; 64]);
    response
}

#[tokio::test]
async fn id_length_zero_is_malformed() {
    assert_malformed(response_with(1, 0, b""), Malformed::IdLength(0)).await;
}

#[tokio::test]
async fn id_length_65_is_malformed() {
    assert_malformed(response_with(1, 65, &[b'a'; 65]), Malformed::IdLength(65)).await;
}

#[tokio::test]
async fn forbidden_id_characters_are_malformed() {
    assert_malformed(response_with(1, 5, b"al ce"), Malformed::IdCharacters).await;
    assert_malformed(response_with(1, 5, b"../.."), Malformed::IdCharacters).await;
    assert_malformed(response_with(1, 2, &[0xc3, 0xa9]), Malformed::IdCharacters).await;
}

#[tokio::test]
async fn every_reserved_mode_byte_is_malformed() {
    // 0x11 and 0x12 are the multiplexed modes; every other byte from 0x03 up is reserved.
    for mode in (3..=255u8).filter(|byte| !matches!(byte, 0x11 | 0x12)) {
        assert_malformed(response_with(mode, 5, b"alice"), Malformed::Mode(mode)).await;
    }
}

#[tokio::test]
async fn random_bytes_are_rejected() {
    let gate = gate(&[&key("alice")]);
    for seed in 0..10u8 {
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed.wrapping_mul(97).wrapping_add(1))
            .collect();
        let (received, reason, _) = bytes_after_response(gate.clone(), |_| junk).await;
        assert!(
            received == [protocol::VERDICT_MALFORMED] || received == [protocol::VERDICT_DENIED],
            "got {received:?} for {reason}"
        );
        assert!(matches!(reason, Error::Refused(_)), "{reason}");
    }
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let config = GateConfig::new().with_handshake_timeout(Duration::from_millis(300));
    let gate = Gate::with_config(keyring(&[&key("alice")]), config).unwrap();
    let (addr, server) = serve_one(gate).await;
    // Timed from before the connection: the gate's deadline starts when it accepts.
    let started = std::time::Instant::now();
    let (mut client, _) = raw_connect(addr).await;
    assert_eq!(
        read_until_closed(&mut client).await,
        b"",
        "a staller gets nothing more"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    let err = server_error(server).await;
    assert!(
        matches!(&err, Error::Timeout(t) if t.after() == Duration::from_millis(300)),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "handshake timed out after 300ms waiting for the client's response",
        "the message shows the setting, not the time left"
    );
}

#[tokio::test]
async fn a_refused_stream_can_be_taken_back() {
    let (listener, addr) = crate::support::loopback_listener().await;
    let gate = gate(&[&key("alice")]);
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        match gate.admit_fallible(stream).await {
            Ok(_) => panic!("admitted an impostor"),
            Err((err, stream)) => (err, stream.peer_addr().unwrap() == peer),
        }
    });
    let client = linkgate::connect(addr, &Credentials::new(key("alice"))).await;
    assert!(matches!(client, Err(Error::Rejected(Rejection::Denied))));
    let (err, same_socket) = server.await.unwrap();
    assert!(err.is_denied() && same_socket);
}

/// A fake server that runs the handshake but answers with a proof made under `its_key`, without
/// checking the client. Returns what it read from the client.
async fn fake_admitting_server(its_key: Option<Key>) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    fake_server(its_key, true).await
}

/// The fake, optionally closing right after its admission.
async fn fake_server(its_key: Option<Key>, hold_open: bool) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let server_nonce = [3u8; 32];
        stream
            .write_all(&protocol::encode_challenge(&server_nonce))
            .await
            .unwrap();
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.unwrap();
        let mut rest = vec![0u8; protocol::response_remaining_len(head).unwrap()];
        stream.read_exact(&mut rest).await.unwrap();
        let mut response = head.to_vec();
        response.extend_from_slice(&rest);
        // The fake answers in plain-mode style whatever was asked: a proof under its own key.
        let decoded = protocol::Response::decode(&response).unwrap();
        let proof = match &its_key {
            Some(key) => {
                protocol::server_proof(key, &server_nonce, &decoded.client_nonce, &decoded.key_id)
            }
            None => [0xee; 32],
        };
        stream
            .write_all(&[protocol::VERDICT_ADMITTED])
            .await
            .unwrap();
        stream.write_all(&proof).await.unwrap();
        if hold_open {
            let _ = stream.read(&mut [0u8; 1]).await;
        }
        response
    });
    (addr, task)
}

#[tokio::test]
async fn server_with_the_wrong_key_is_an_impostor() {
    let (addr, fake) = fake_admitting_server(Some(key("alice"))).await;
    let credentials = Credentials::new(key("alice")).with_mode(Mode::Sealed);
    let err = linkgate::connect(addr, &credentials).await.unwrap_err();
    assert!(
        matches!(err, Error::Rejected(Rejection::ImpostorServer)),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the server failed to prove the key: possible impostor"
    );
    assert_eq!(
        &fake.await.unwrap()[..7],
        b"\x01\x05alice",
        "the fake did get a RESPONSE"
    );
}

#[tokio::test]
async fn server_that_admits_with_junk_is_an_impostor() {
    let (addr, fake) = fake_admitting_server(None).await;
    let credentials = Credentials::new(key("alice")).with_mode(Mode::Sealed);
    let err = linkgate::connect(addr, &credentials).await.unwrap_err();
    assert!(
        matches!(err, Error::Rejected(Rejection::ImpostorServer)),
        "{err}"
    );
    fake.await.unwrap();
}

#[tokio::test]
async fn a_sealed_fs_client_never_accepts_a_short_admission() {
    // The fake's 33-byte admission is what a plain or 0x01 gate sends: a sealed-fs client
    // refuses it rather than falling back.
    let (addr, fake) = fake_server(Some(key("alice")), false).await;
    let err = linkgate::connect(addr, &Credentials::new(key("alice")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Rejected(Rejection::ImpostorServer)),
        "{err}"
    );
    assert_eq!(fake.await.unwrap()[0], Mode::SealedFs.wire_byte());

    // Held open instead, the short admission never completes: a timeout, still no session.
    let (addr, fake) = fake_server(Some(key("alice")), true).await;
    let quick = Credentials::new(key("alice")).with_timeout(Duration::from_millis(300));
    let err = linkgate::connect(addr, &quick).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    fake.abort();
}

/// A server that sends `banner` on accept and then waits.
async fn banner_server(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(banner).await.unwrap();
        let _ = stream.read(&mut [0u8; 64]).await;
    });
    addr
}

#[tokio::test]
async fn ssh_banner_is_not_linkgate() {
    let addr = banner_server(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n").await;
    let started = std::time::Instant::now();
    let err = linkgate::connect(addr, &Credentials::new(key("alice")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected(Rejection::NotLinkgate(shown)) if shown.contains("SSH-2.0-OpenSSH_9.2p1")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "named at once, not after the timeout"
    );
}

#[tokio::test]
async fn http_response_is_not_linkgate() {
    let addr = banner_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
    let err = linkgate::connect(addr, &Credentials::new(key("alice")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected(Rejection::NotLinkgate(shown)) if shown.contains("HTTP/1.1 400 Bad Request")),
        "{err}"
    );
}

#[tokio::test]
async fn binary_greeting_is_not_linkgate_and_not_echoed() {
    let addr = banner_server(b"\x16\x03\x01\x00\xa5\x01\x00").await;
    let err = linkgate::connect(addr, &Credentials::new(key("alice")))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a linkgate/1 server: it sent 7 bytes that are not text"
    );
}

#[tokio::test]
async fn client_times_out_on_a_silent_server_and_says_it_sent_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(stream);
    });
    let credentials = Credentials::new(key("alice")).with_timeout(Duration::from_millis(200));
    let err = linkgate::connect(addr, &credentials).await.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout(t) if t.waiting() == linkgate::Waiting::Challenge),
        "{err}"
    );
    assert!(err.to_string().contains("the server sent nothing"), "{err}");
    assert!(err.to_string().contains("200ms"), "{err}");
    holder.abort();
}

#[tokio::test]
async fn connection_refused_is_an_io_error() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let err = linkgate::connect(addr, &Credentials::new(key("alice")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err}"
    );
}

#[tokio::test]
async fn seed_protocol_admits_refuses_and_times_out_like_linkgate1() {
    use linkgate::Protocol;
    let recipe = Key::new_short(KeyId::new("recipe").unwrap(), b"secret").unwrap();
    let config = GateConfig::new()
        .with_protocol(Protocol::Seed)
        .with_handshake_timeout(Duration::from_millis(300));
    let gate = Gate::with_config(keyring(&[&recipe]), config).unwrap();

    let (addr, server) = serve_one(gate.clone()).await;
    let credentials = Credentials::new(recipe.clone()).with_protocol(Protocol::Seed);
    assert_eq!(credentials.mode(), Mode::Plain, "seed has no sealed mode");
    let mut client = linkgate::connect(addr, &credentials).await.unwrap();
    let mut admitted = server.await.unwrap().unwrap();
    assert_eq!(
        admitted.key_id().as_str(),
        "recipe",
        "the server learns which key matched"
    );
    assert_eq!(admitted.mode(), Mode::Plain);
    client.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    admitted.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hi");

    // Wrong key: closed without a message.
    let (addr, server) = serve_one(gate.clone()).await;
    let guess = Key::new_short(KeyId::new("recipe").unwrap(), b"guess").unwrap();
    let mut client =
        linkgate::connect(addr, &Credentials::new(guess).with_protocol(Protocol::Seed))
            .await
            .unwrap();
    assert_eq!(read_until_closed(&mut client).await, b"");
    assert!(matches!(
        server_error(server).await,
        Error::Refused(Refusal::SeedMismatch)
    ));

    // Silent: the handshake timeout applies.
    let (addr, server) = serve_one(gate).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        read_until_closed(&mut silent).await.len(),
        32,
        "only the nonce"
    );
    assert!(matches!(server_error(server).await, Error::Timeout(_)));

    // linkgate/1 refuses the short key on both sides.
    assert!(matches!(
        Gate::new(keyring(&[&recipe])),
        Err(Error::Key(linkgate::KeyError::Length(6)))
    ));
    let (addr, _server) = serve_one(gate_for_alice()).await;
    let err = linkgate::connect(addr, &Credentials::new(recipe))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Key(linkgate::KeyError::Length(6))),
        "{err}"
    );
}

#[tokio::test]
async fn seed_md5_admits_the_published_recipe_and_refuses_the_other_digest() {
    use linkgate::Protocol;
    let recipe = Key::new_short(KeyId::new("recipe").unwrap(), b"peekaboo").unwrap();
    let gate_speaking = |protocol| {
        let config = GateConfig::new()
            .with_protocol(protocol)
            .with_handshake_timeout(Duration::from_millis(300));
        Gate::with_config(keyring(&[&recipe]), config).unwrap()
    };
    let md5 = Credentials::new(recipe.clone()).with_protocol(Protocol::SeedMd5);

    // The answer is HMAC-MD5 of the nonce, 16 bytes, as the published recipe computes it.
    let (addr, server) = serve_one(gate_speaking(Protocol::SeedMd5)).await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let mut nonce = [0u8; 32];
    raw.read_exact(&mut nonce).await.unwrap();
    let mut mac = <hmac::Hmac<md5::Md5> as hmac::KeyInit>::new_from_slice(b"peekaboo").unwrap();
    hmac::Mac::update(&mut mac, &nonce);
    raw.write_all(&hmac::Mac::finalize(mac).into_bytes())
        .await
        .unwrap();
    let mut admitted = server.await.unwrap().unwrap();
    assert_eq!(admitted.key_id().as_str(), "recipe");
    raw.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    admitted.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hi");

    // Our own client speaks it too.
    let (addr, server) = serve_one(gate_speaking(Protocol::SeedMd5)).await;
    let _client = linkgate::connect(addr, &md5).await.unwrap();
    assert_eq!(server.await.unwrap().unwrap().mode(), Mode::Plain);

    // A SHA-256 answer to an MD5 gate: its first 16 bytes are judged, and refused.
    let (addr, server) = serve_one(gate_speaking(Protocol::SeedMd5)).await;
    let sha = Credentials::new(recipe.clone()).with_protocol(Protocol::Seed);
    let mut client = linkgate::connect(addr, &sha).await.unwrap();
    assert_eq!(read_until_closed(&mut client).await, b"");
    assert!(matches!(
        server_error(server).await,
        Error::Refused(Refusal::SeedMismatch)
    ));

    // An MD5 answer to a SHA-256 gate is too short: the gate waits for the rest until its
    // handshake timeout, as a recipe server would block in recv.
    let (addr, server) = serve_one(gate_speaking(Protocol::Seed)).await;
    let mut client = linkgate::connect(addr, &md5).await.unwrap();
    assert!(matches!(server_error(server).await, Error::Timeout(_)));
    assert_eq!(read_until_closed(&mut client).await, b"");
}

fn gate_for_alice() -> Gate {
    gate(&[&key("alice")])
}

/// Each replaced keyring has the next generation, and an admission names the one that judged
/// it: a server that revokes on reload can tell a connection of the old key from one of its
/// new value under the same id.
#[tokio::test]
async fn admissions_name_the_keyring_generation_that_judged_them() {
    async fn admit_once(gate: &Gate, key: &Key) -> linkgate::Result<u64> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn({
            let credentials = Credentials::new(key.clone());
            async move { linkgate::connect(addr, &credentials).await.map(drop) }
        });
        let (stream, _) = listener.accept().await.unwrap();
        let admitted = gate.admit(stream).await;
        let _ = client.await.unwrap();
        admitted.map(|admitted| admitted.admission().keyring_generation())
    }
    let old = key("alice");
    let gate = gate(&[&old]);
    assert_eq!(gate.keyring_generation(), 0);
    assert_eq!(admit_once(&gate, &old).await.unwrap(), 0);

    let new = key("alice");
    let diff = gate.replace_keyring(keyring(&[&new, &key("bob")])).unwrap();
    assert_eq!(diff.changed, [KeyId::new("alice").unwrap()]);
    assert_eq!(gate.keyring_generation(), 1);
    assert_eq!(admit_once(&gate, &new).await.unwrap(), 1);
    assert!(
        admit_once(&gate, &old).await.is_err(),
        "the old key admits nothing"
    );

    gate.replace_keyring(keyring(&[&new])).unwrap();
    assert_eq!(gate.keyring_generation(), 2);
    assert_eq!(admit_once(&gate, &new).await.unwrap(), 2);
}
