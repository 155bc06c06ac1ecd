//! The linkgate/1 handshake over real TCP on 127.0.0.1: legitimate clients, impostor clients and
//! impostor servers. Every rejection is checked on both sides: the server's reason and what the
//! client saw.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{key, keyring};
use linkgate::protocol::{self, CHALLENGE_LEN, Nonce};
use linkgate::{Credentials, Error, Gate, Key, KeyId, Malformed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

type Admitted = linkgate::Result<(TcpStream, KeyId)>;

/// Listens on an ephemeral port and runs `gate.admit` on the first connection.
async fn serve_one(gate: Gate) -> (SocketAddr, JoinHandle<Admitted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        gate.admit(stream).await
    });
    (addr, task)
}

/// Connects without the SDK and reads the CHALLENGE.
async fn raw_connect(addr: SocketAddr) -> (TcpStream, Nonce) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut challenge = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await.unwrap();
    let nonce = protocol::decode_challenge(&challenge).expect("a linkgate/1 challenge");
    (stream, nonce)
}

/// Everything the peer sends until it closes (a reset after its last byte counts as a close).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("peer neither closed nor sent anything for 5 s"),
        }
    }
}

async fn server_error(task: JoinHandle<Admitted>) -> Error {
    match task.await.unwrap() {
        Ok((_, id)) => panic!("server admitted {id}, expected a rejection"),
        Err(err) => err,
    }
}

#[tokio::test]
async fn legitimate_client_is_admitted_and_bytes_flow_both_ways() {
    let alice = key("alice");
    let gate = Gate::new(keyring(&[&alice, &key("bob")])).unwrap();
    let (addr, server) = serve_one(gate).await;

    let mut client = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    let (mut server_stream, key_id) = server.await.unwrap().unwrap();
    assert_eq!(key_id.as_str(), "alice", "the server learns who connected");

    // Every byte value, both ways, unchanged.
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
    assert_eq!(got, downstream);
    assert_eq!(server_side.await.unwrap(), upstream);
}

#[tokio::test]
async fn bytes_sent_right_after_the_response_reach_the_wrapped_server() {
    let alice = key("alice");
    let gate = Gate::new(keyring(&[&alice])).unwrap();
    let (addr, server) = serve_one(gate).await;

    // RESPONSE and the first application bytes leave in a single write.
    let (mut client, server_nonce) = raw_connect(addr).await;
    let client_nonce = [7u8; 32];
    let mut bytes = protocol::respond(&alice, alice.id(), &server_nonce, &client_nonce).encode();
    bytes.extend_from_slice(b"PING right behind the response");
    client.write_all(&bytes).await.unwrap();

    let (mut server_stream, key_id) = server.await.unwrap().unwrap();
    assert_eq!(key_id.as_str(), "alice");
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
async fn wrong_key_is_denied() {
    let gate = Gate::new(keyring(&[&key("alice")])).unwrap();
    let (addr, server) = serve_one(gate).await;
    let impostor = key("alice");
    let client = linkgate::connect(addr, &Credentials::new(impostor)).await;
    assert!(matches!(client, Err(Error::Denied)), "{client:?}");
    let reason = server_error(server).await;
    assert!(
        matches!(&reason, Error::WrongProof(id) if id.as_str() == "alice"),
        "{reason}"
    );
}

#[tokio::test]
async fn unknown_key_id_is_denied() {
    let gate = Gate::new(keyring(&[&key("alice")])).unwrap();
    let (addr, server) = serve_one(gate).await;
    let client = linkgate::connect(addr, &Credentials::new(key("mallory"))).await;
    assert!(matches!(client, Err(Error::Denied)), "{client:?}");
    let reason = server_error(server).await;
    assert!(
        matches!(&reason, Error::UnknownKeyId(id) if id.as_str() == "mallory"),
        "{reason}"
    );
    assert_eq!(reason.to_string(), "denied: unknown key id mallory");
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
    let gate = Gate::new(keyring(&[&alice])).unwrap();
    let guesser = key("alice");
    let stranger = guesser.clone().with_id(KeyId::new("zed").unwrap());

    let mut wrong_times = Vec::new();
    let mut unknown_times = Vec::new();
    for _ in 0..20 {
        let (wrong, reason, t) = bytes_after_response(gate.clone(), |nonce| {
            protocol::respond(&guesser, guesser.id(), nonce, &[1; 32]).encode()
        })
        .await;
        assert_eq!(wrong, [protocol::VERDICT_DENIED]);
        assert!(matches!(reason, Error::WrongProof(_)));
        wrong_times.push(t);

        // Same id length, so the RESPONSE has the same size too.
        let (unknown, reason, t) = bytes_after_response(gate.clone(), |nonce| {
            let id = KeyId::new("bobby").unwrap();
            protocol::respond(&stranger, &id, nonce, &[1; 32]).encode()
        })
        .await;
        assert_eq!(unknown, wrong, "identical bytes for both refusals");
        assert!(matches!(reason, Error::UnknownKeyId(_)));
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
    let gate = Gate::new(keyring(&[&alice])).unwrap();

    // Record a successful session's RESPONSE as an eavesdropper would.
    let (addr, server) = serve_one(gate.clone()).await;
    let (mut client, server_nonce) = raw_connect(addr).await;
    let captured = protocol::respond(&alice, alice.id(), &server_nonce, &[9; 32]).encode();
    client.write_all(&captured).await.unwrap();
    let mut verdict = [0u8; protocol::ADMITTED_LEN];
    client.read_exact(&mut verdict).await.unwrap();
    assert_eq!(verdict[0], protocol::VERDICT_ADMITTED);
    assert_eq!(server.await.unwrap().unwrap().1.as_str(), "alice");

    // Replay it on a new connection: the new server nonce makes it worthless.
    let (received, reason, _) = bytes_after_response(gate, |_| captured.clone()).await;
    assert_eq!(received, [protocol::VERDICT_DENIED]);
    assert!(
        matches!(&reason, Error::WrongProof(id) if id.as_str() == "alice"),
        "{reason}"
    );
}

#[tokio::test]
async fn reflection_gets_nothing_usable() {
    // The attacker holds connection A open and wants a proof over A's nonce. On a second
    // connection B it offers A's server nonce as its client nonce, hoping B's server will
    // answer with something A would accept. B only ever sends its CHALLENGE, then `denied`:
    // no proof is produced before the client has proved the key.
    let alice = key("alice");
    let gate = Gate::new(keyring(&[&alice])).unwrap();
    let (addr_a, server_a) = serve_one(gate.clone()).await;
    let (_conn_a, nonce_a) = raw_connect(addr_a).await;

    let (received, reason, _) = bytes_after_response(gate, |_| {
        let mut response = vec![protocol::MODE_PLAIN, 5];
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
    assert!(matches!(reason, Error::WrongProof(_)), "{reason}");
    server_a.abort();
}

#[tokio::test]
async fn truncated_response_then_close_gets_nothing_more() {
    let gate = Gate::new(keyring(&[&key("alice")])).unwrap();
    let (addr, server) = serve_one(gate).await;
    let (mut client, _) = raw_connect(addr).await;
    client.write_all(&[0x00, 0x05, b'a', b'l']).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(
        read_until_closed(&mut client).await,
        b"",
        "no verdict for a half response"
    );
    assert!(matches!(server_error(server).await, Error::ClosedEarly));
}

async fn assert_malformed(response: Vec<u8>, expected: Malformed) {
    let gate = Gate::new(keyring(&[&key("alice")])).unwrap();
    let (received, reason, _) = bytes_after_response(gate, |_| response).await;
    assert_eq!(received, [protocol::VERDICT_MALFORMED]);
    assert!(
        matches!(&reason, Error::MalformedResponse(m) if *m == expected),
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
    assert_malformed(response_with(0, 0, b""), Malformed::IdLength(0)).await;
}

#[tokio::test]
async fn id_length_65_is_malformed() {
    assert_malformed(response_with(0, 65, &[b'a'; 65]), Malformed::IdLength(65)).await;
}

#[tokio::test]
async fn forbidden_id_characters_are_malformed() {
    assert_malformed(response_with(0, 5, b"al ce"), Malformed::IdCharacters).await;
    assert_malformed(response_with(0, 5, b"../.."), Malformed::IdCharacters).await;
    assert_malformed(response_with(0, 2, &[0xc3, 0xa9]), Malformed::IdCharacters).await;
}

#[tokio::test]
async fn non_zero_mode_is_malformed() {
    assert_malformed(response_with(1, 5, b"alice"), Malformed::Mode(1)).await;
    assert_malformed(response_with(0x80, 5, b"alice"), Malformed::Mode(0x80)).await;
}

#[tokio::test]
async fn random_bytes_are_rejected() {
    let gate = Gate::new(keyring(&[&key("alice")])).unwrap();
    for seed in 0..10u8 {
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed.wrapping_mul(97).wrapping_add(1))
            .collect();
        let (received, reason, _) = bytes_after_response(gate.clone(), |_| junk).await;
        assert!(
            received == [protocol::VERDICT_MALFORMED] || received == [protocol::VERDICT_DENIED],
            "got {received:?} for {reason}"
        );
        assert!(
            matches!(
                reason,
                Error::MalformedResponse(_) | Error::WrongProof(_) | Error::UnknownKeyId(_)
            ),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let config = linkgate::Config::new().handshake_timeout(Duration::from_millis(300));
    let gate = Gate::with_config(keyring(&[&key("alice")]), config).unwrap();
    let (addr, server) = serve_one(gate).await;
    let (mut client, _) = raw_connect(addr).await;
    let started = std::time::Instant::now();
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
    assert!(
        matches!(server_error(server).await, Error::Timeout(t) if t == Duration::from_millis(300))
    );
}

/// A fake server that runs the handshake but answers with a proof made under `its_key`, without
/// checking the client. Returns what it read from the client.
async fn fake_admitting_server(its_key: Option<Key>) -> (SocketAddr, JoinHandle<Vec<u8>>) {
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
        let _ = stream.read(&mut [0u8; 1]).await;
        response
    });
    (addr, task)
}

#[tokio::test]
async fn server_with_the_wrong_key_is_an_impostor() {
    let (addr, fake) = fake_admitting_server(Some(key("alice"))).await;
    let err = linkgate::connect(addr, &Credentials::new(key("alice")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ImpostorServer), "{err}");
    assert_eq!(
        err.to_string(),
        "server failed to prove the key: possible impostor"
    );
    assert_eq!(
        &fake.await.unwrap()[..7],
        b"\x00\x05alice",
        "the fake did get a RESPONSE"
    );
}

#[tokio::test]
async fn server_that_admits_with_junk_is_an_impostor() {
    let (addr, fake) = fake_admitting_server(None).await;
    let err = linkgate::connect(addr, &Credentials::new(key("alice")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ImpostorServer), "{err}");
    fake.await.unwrap();
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
        matches!(&err, Error::NotLinkgate(shown) if shown.contains("SSH-2.0-OpenSSH_9.2p1")),
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
        matches!(&err, Error::NotLinkgate(shown) if shown.contains("HTTP/1.1 400 Bad Request")),
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
async fn client_times_out_on_a_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(stream);
    });
    let credentials = Credentials::new(key("alice")).with_timeout(Duration::from_millis(200));
    let err = linkgate::connect(addr, &credentials).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
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
    let config = linkgate::Config::new()
        .protocol(Protocol::Seed)
        .handshake_timeout(Duration::from_millis(300));
    let gate = Gate::with_config(keyring(&[&recipe]), config).unwrap();

    let (addr, server) = serve_one(gate.clone()).await;
    let credentials = Credentials::new(recipe.clone()).with_protocol(Protocol::Seed);
    let mut client = linkgate::connect(addr, &credentials).await.unwrap();
    let (mut admitted, id) = server.await.unwrap().unwrap();
    assert_eq!(id.as_str(), "recipe", "the server learns which key matched");
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
    assert!(matches!(server_error(server).await, Error::SeedMismatch));

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
        Err(Error::KeyLength(6))
    ));
    let (addr, _server) = serve_one(Gate::new(keyring(&[&key("alice")])).unwrap()).await;
    let err = linkgate::connect(addr, &Credentials::new(recipe))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyLength(6)), "{err}");
}
