//! GatedListener over real TCP: concurrent handshakes, slow clients, bounds and the log of
//! refusals.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use linkgate::protocol::CHALLENGE_LEN;
use linkgate::{
    Admission, Credentials, Error, Gate, GateConfig, GatedListener, Key, ListenerConfig, Peer,
    Rejection,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::support::{capture_logs, echo, echo_once, gate, key, keyring, wait_for_log_line};

/// Runs a GatedListener whose admitted connections are echoed; reports each admission.
async fn gated_echo(gate: Gate) -> (SocketAddr, mpsc::UnboundedReceiver<Admission>) {
    gated_echo_with(gate, ListenerConfig::new()).await
}

async fn gated_echo_with(
    gate: Gate,
    config: ListenerConfig,
) -> (SocketAddr, mpsc::UnboundedReceiver<Admission>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut listener = GatedListener::with_config(listener, gate, config);
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let stream = listener.accept().await;
            let _ = tx.send(stream.admission().clone());
            tokio::spawn(echo(stream));
        }
    });
    (addr, rx)
}

/// Connects from `source` (any 127/8 address) and returns the stream.
async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// True if the server sent a full CHALLENGE (its handshake for us is running).
async fn got_challenge(stream: &mut TcpStream) -> bool {
    let mut challenge = [0u8; CHALLENGE_LEN];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut challenge)).await,
        Ok(Ok(_))
    )
}

/// True if the server closed the connection without sending anything.
async fn closed_without_a_byte(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn admitted_connections_come_with_peer_and_key_id() {
    let alice = key("alice");
    let bob = key("bob");
    let (addr, mut admissions) = gated_echo(gate(&[&alice, &bob])).await;

    let mut a = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    let first = admissions.recv().await.unwrap();
    assert_eq!(first.key_id().as_str(), "alice");
    assert_eq!(
        first.peer(),
        Some(&Peer::Ip(a.get_ref().local_addr().unwrap()))
    );
    assert_eq!(first.mode(), linkgate::Mode::SealedFs);
    assert_eq!(echo_once(&mut a, b"hello").await, b"hello");

    let mut b = linkgate::connect(addr, &Credentials::new(bob))
        .await
        .unwrap();
    let second = admissions.recv().await.unwrap();
    assert_eq!(second.key_id().as_str(), "bob");
    assert_ne!(first.connection_id(), second.connection_id());
    assert_eq!(echo_once(&mut b, b"world").await, b"world");
}

#[tokio::test]
async fn rejections_are_logged_with_peer_and_reason_and_never_accepted() {
    capture_logs();
    let alice = key("alice");
    let (addr, mut admissions) = gated_echo(gate(&[&alice])).await;

    // Each attempt's local port identifies its own log line (other tests log similar ones).
    let stream = TcpStream::connect(addr).await.unwrap();
    let port = stream.local_addr().unwrap().port();
    let impostor = linkgate::authenticate(stream, &Credentials::new(key("alice"))).await;
    assert!(
        matches!(impostor, Err(Error::Rejected(Rejection::Denied))),
        "{impostor:?}"
    );
    let peer = format!("peer=127.0.0.1:{port}");
    wait_for_log_line(&["connection rejected", "wrong proof for key id alice", &peer]).await;

    let stream = TcpStream::connect(addr).await.unwrap();
    let port = stream.local_addr().unwrap().port();
    let unknown = linkgate::authenticate(stream, &Credentials::new(key("zed"))).await;
    assert!(
        matches!(unknown, Err(Error::Rejected(Rejection::Denied))),
        "{unknown:?}"
    );
    let peer = format!("peer=127.0.0.1:{port}");
    wait_for_log_line(&["connection rejected", "unknown key id zed", &peer]).await;

    // Only the legitimate client ever comes out of accept().
    let _ok = linkgate::connect(addr, &Credentials::new(alice.clone()))
        .await
        .unwrap();
    assert_eq!(admissions.recv().await.unwrap().key_id().as_str(), "alice");
    assert!(admissions.try_recv().is_err());

    // Key bytes never reach the log.
    let secret_hex = alice.to_hex_line();
    assert!(!crate::support::logs().contains(secret_hex.trim()));
}

#[tokio::test]
async fn silent_clients_do_not_delay_a_legitimate_one() {
    let alice = key("alice");
    // Room for all 200 silent handshakes, and a timeout far longer than the test, so the
    // legitimate client is admitted while every silent one is still being waited on.
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let (addr, mut admissions) = gated_echo_with(
        gate,
        ListenerConfig::new().with_max_handshakes_per_source(256),
    )
    .await;

    let silent_source = Ipv4Addr::new(127, 0, 0, 2);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(connect_from(silent_source, addr).await);
    }
    for stream in &mut silent {
        assert!(
            got_challenge(stream).await,
            "each silent client's handshake is running"
        );
    }

    let started = Instant::now();
    let mut client = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    let admitted_after = started.elapsed();
    let admission = admissions.recv().await.unwrap();
    assert_eq!(admission.key_id().as_str(), "alice");
    assert_eq!(
        admission.peer().and_then(Peer::ip_addr).map(|a| a.ip()),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    assert_eq!(
        echo_once(&mut client, b"still served").await,
        b"still served"
    );
    println!("admitted in {admitted_after:?} with 200 silent clients connected from 127.0.0.2");

    // The silent clients are all still open: nothing waited for them to time out.
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte))
                .await
                .is_err(),
            "a silent client was closed early"
        );
    }
}

#[tokio::test]
async fn per_ip_bound_closes_the_excess_at_once() {
    capture_logs();
    let alice = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let (addr, mut admissions) = gated_echo_with(
        gate,
        ListenerConfig::new().with_max_handshakes_per_source(3),
    )
    .await;

    let crowded = Ipv4Addr::new(127, 0, 0, 3);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(crowded, addr).await;
        assert!(got_challenge(&mut stream).await);
        held.push(stream);
    }
    let mut excess = connect_from(crowded, addr).await;
    let excess_port = excess.local_addr().unwrap().port();
    assert!(
        closed_without_a_byte(&mut excess).await,
        "the 4th from one IP gets nothing"
    );
    let line = wait_for_log_line(&[
        "too many handshakes in progress",
        &format!("127.0.0.3:{excess_port}"),
    ])
    .await;
    assert!(line.contains("WARN"), "{line}");

    // Another address is unaffected.
    let mut client = linkgate::connect(addr, &Credentials::new(alice.clone()))
        .await
        .unwrap();
    assert_eq!(admissions.recv().await.unwrap().key_id().as_str(), "alice");
    assert_eq!(echo_once(&mut client, b"ok").await, b"ok");

    // When one of the held handshakes ends, the address gets a slot back.
    drop(held.pop());
    let mut retry = None;
    for _ in 0..100 {
        let mut stream = connect_from(crowded, addr).await;
        if got_challenge(&mut stream).await {
            retry = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(retry.is_some(), "a freed slot is reused");
}

#[tokio::test]
async fn global_bound_closes_the_excess_at_once() {
    capture_logs();
    let alice: Key = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    // Shedding off: this is the plain bound (shedding has its own test).
    let config = ListenerConfig::new()
        .with_max_handshakes(4)
        .with_shed_after(Duration::from_secs(3600));
    let (addr, _admissions) = gated_echo_with(gate, config).await;

    let mut held = Vec::new();
    for last_octet in 10..14 {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, last_octet), addr).await;
        assert!(got_challenge(&mut stream).await);
        held.push(stream);
    }
    let mut excess = connect_from(Ipv4Addr::new(127, 0, 0, 14), addr).await;
    let port = excess.local_addr().unwrap().port();
    assert!(
        closed_without_a_byte(&mut excess).await,
        "the 5th handshake is refused"
    );
    wait_for_log_line(&[
        "too many handshakes in progress",
        &format!("127.0.0.14:{port}"),
    ])
    .await;

    // A legitimate client is refused too while the gate is full: the bound is global.
    let err = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ClosedEarly | Error::Io(_)), "{err}");
}

#[tokio::test]
async fn serve_with_wraps_an_existing_handler_in_one_call() {
    // The existing server's handler: upper-cases what it receives. It takes any stream, so it
    // serves admitted connections in every mode.
    async fn handle(mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            buf[..n].make_ascii_uppercase();
            if stream.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }

    let alice = key("alice");
    let listener = GatedListener::bind("127.0.0.1:0", gate(&[&alice]))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut who_called) = mpsc::unbounded_channel();
    tokio::spawn(linkgate::serve_with(listener, move |stream| {
        let _ = tx.send(stream.admission().clone());
        handle(stream)
    }));

    let mut client = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(echo_once(&mut client, b"shout this").await, b"SHOUT THIS");
    let who = who_called.recv().await.unwrap();
    assert_eq!(who.key_id().as_str(), "alice");
    assert_eq!(
        who.peer(),
        Some(&Peer::Ip(client.get_ref().local_addr().unwrap()))
    );

    let refused = linkgate::connect(addr, &Credentials::new(key("alice"))).await;
    assert!(matches!(refused, Err(Error::Rejected(Rejection::Denied))));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        who_called.try_recv().is_err(),
        "the handler never saw the impostor"
    );
}

#[tokio::test]
async fn when_every_slot_is_taken_the_oldest_handshake_is_shed() {
    capture_logs();
    let alice = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let config = ListenerConfig::new()
        .with_max_handshakes(4)
        .with_shed_after(Duration::from_millis(100));
    let (addr, mut admissions) = gated_echo_with(gate, config).await;

    // Four slow clients from four sources take every slot.
    let mut held = Vec::new();
    for last_octet in 20..24 {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, last_octet), addr).await;
        assert!(got_challenge(&mut stream).await);
        held.push(stream);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A legitimate client still gets in: the oldest slow one (127.0.0.20) makes room.
    let mut client = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(admissions.recv().await.unwrap().key_id().as_str(), "alice");
    assert_eq!(echo_once(&mut client, b"in").await, b"in");
    assert!(
        closed_without_a_byte(&mut held[0]).await,
        "the oldest was ended"
    );
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), held[3].read(&mut byte))
            .await
            .is_err(),
        "the newest slow client is still waiting"
    );
    wait_for_log_line(&[
        "ended an old handshake from the busiest source",
        "127.0.0.20:",
    ])
    .await;
}

#[tokio::test]
async fn shedding_picks_the_source_holding_the_most_slots_not_a_lone_older_client() {
    capture_logs();
    let alice = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let config = ListenerConfig::new()
        .with_max_handshakes(4)
        .with_shed_after(Duration::from_millis(100));
    let (addr, mut admissions) = gated_echo_with(gate, config).await;

    // The oldest handshake is a lone client's (127.0.0.26, slow this time); three newer ones
    // come from one busy source (127.0.0.25).
    let mut lone = connect_from(Ipv4Addr::new(127, 0, 0, 26), addr).await;
    assert!(got_challenge(&mut lone).await);
    let mut busy = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 25), addr).await;
        assert!(got_challenge(&mut stream).await);
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut client = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(admissions.recv().await.unwrap().key_id().as_str(), "alice");
    assert_eq!(echo_once(&mut client, b"in").await, b"in");
    assert!(
        closed_without_a_byte(&mut busy[0]).await,
        "the busy source's oldest was ended"
    );
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), lone.read(&mut byte))
            .await
            .is_err(),
        "the lone client, though older, is still waiting"
    );
    wait_for_log_line(&[
        "ended an old handshake from the busiest source",
        "127.0.0.25:",
    ])
    .await;
}

#[tokio::test]
async fn a_source_holding_every_slot_makes_room_for_another_at_once() {
    capture_logs();
    let alice = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    // Too young to shed by age for the whole test: only fairness between sources can help.
    let config = ListenerConfig::new()
        .with_max_handshakes(4)
        .with_shed_after(Duration::from_secs(60));
    let (addr, mut admissions) = gated_echo_with(gate, config).await;
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 27), addr).await;
        assert!(got_challenge(&mut stream).await);
        busy.push(stream);
    }
    // One more from the same source gets nothing: it holds no fewer slots than the victim's.
    let mut same = connect_from(Ipv4Addr::new(127, 0, 0, 27), addr).await;
    assert!(
        closed_without_a_byte(&mut same).await,
        "refused, not let in"
    );
    // Another source is let in at once.
    let mut client = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(admissions.recv().await.unwrap().key_id().as_str(), "alice");
    assert_eq!(echo_once(&mut client, b"in").await, b"in");
    assert!(
        closed_without_a_byte(&mut busy[0]).await,
        "the busy source's oldest was ended"
    );
}

#[tokio::test]
async fn a_busy_source_never_sheds_a_lone_clients_handshake_however_old() {
    let alice = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let config = ListenerConfig::new()
        .with_max_handshakes(4)
        .with_shed_after(Duration::from_millis(100));
    let (addr, _admissions) = gated_echo_with(gate, config).await;
    let mut lone = connect_from(Ipv4Addr::new(127, 0, 0, 28), addr).await;
    assert!(got_challenge(&mut lone).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 29), addr).await;
        assert!(got_challenge(&mut stream).await);
        busy.push(stream);
    }
    // The lone handshake is old enough to shed, but the newcomer's source holds more slots.
    let mut newcomer = connect_from(Ipv4Addr::new(127, 0, 0, 29), addr).await;
    assert!(closed_without_a_byte(&mut newcomer).await, "refused");
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), lone.read(&mut byte))
            .await
            .is_err(),
        "the lone client is still waiting"
    );
}

#[tokio::test]
async fn repeated_failures_from_a_source_are_refused_at_accept_and_logged_once() {
    capture_logs();
    let alice = key("alice");
    let gate = Gate::new(keyring(&[&alice])).unwrap();
    let (addr, mut admissions) = gated_echo_with(gate, ListenerConfig::new()).await;
    let attacker = Ipv4Addr::new(127, 0, 0, 30);
    // Four wrong proofs: 5 s each, past the 15 s the penalty must reach before it is enforced
    // (three come a hair short: accrued time runs down as it passes).
    for _ in 0..4 {
        let stream = connect_from(attacker, addr).await;
        let denied = linkgate::authenticate(stream, &Credentials::new(key("alice"))).await;
        assert!(matches!(denied, Err(Error::Rejected(Rejection::Denied))));
    }
    wait_for_log_line(&["source penalized", "source=127.0.0.30 peer=127.0.0.30:"]).await;
    // From now on the source gets nothing at all, not even a challenge, and no log line each.
    for _ in 0..20 {
        let mut stream = connect_from(attacker, addr).await;
        assert!(closed_without_a_byte(&mut stream).await);
    }
    let lines = crate::support::logs()
        .lines()
        .filter(|line| line.contains("127.0.0.30:"))
        .count();
    assert!(
        lines <= 5,
        "four rejections and one penalty line, not one per connection ({lines})"
    );
    // Another source is not affected, and a whole IPv6 /64 would count as one source.
    let _ok = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(admissions.recv().await.unwrap().key_id().as_str(), "alice");
}
