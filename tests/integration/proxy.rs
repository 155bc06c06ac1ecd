//! PROXY protocol headers from trusted load balancers, over real TCP: the real client is known,
//! bounds count it, health checks are quiet, and nobody else may claim an address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use linkgate::proxy_protocol::{self, Version};
use linkgate::{Admission, Credentials, Gate, GateConfig, GatedListener, ListenerConfig, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::support::{capture_logs, echo, echo_once, key, keyring, logs, wait_for_log_line};

/// A gate trusting PROXY headers from 127.0.0.1 only, echoing admitted connections.
async fn gate_behind_a_balancer(
    per_source: usize,
) -> (
    SocketAddr,
    linkgate::Key,
    mpsc::UnboundedReceiver<Admission>,
) {
    let alice = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_millis(800)),
    )
    .unwrap();
    let config = ListenerConfig::new()
        .with_proxy_protocol_from(["127.0.0.1/32".parse().unwrap()])
        .with_max_handshakes_per_source(per_source);
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
    (addr, alice, rx)
}

async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

fn header(version: Version, client: &str, gate: SocketAddr) -> Vec<u8> {
    proxy_protocol::encode(version, Some((client.parse().unwrap(), gate)), &[]).unwrap()
}

#[tokio::test]
async fn the_real_client_behind_a_trusted_balancer_is_known() {
    capture_logs();
    let (addr, alice, mut admitted) = gate_behind_a_balancer(64).await;
    for (version, client) in [
        (Version::V2, "192.0.2.7:40001"),
        (Version::V1, "198.51.100.9:40002"),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&header(version, client, addr))
            .await
            .unwrap();
        let mut session = linkgate::authenticate(stream, &Credentials::new(alice.clone()))
            .await
            .unwrap();
        assert_eq!(echo_once(&mut session, b"hi").await, b"hi");
        let who = admitted.recv().await.unwrap();
        assert_eq!(
            who.peer(),
            Some(&Peer::Ip(client.parse().unwrap())),
            "{version:?}"
        );
        let via = who.via().and_then(Peer::ip_addr).unwrap();
        assert_eq!(via.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            via,
            session.get_ref().local_addr().unwrap(),
            "via is the balancer's socket"
        );
    }
}

#[tokio::test]
async fn a_health_check_is_closed_quietly() {
    capture_logs();
    let (addr, _, _) = gate_behind_a_balancer(64).await;
    let mut check = TcpStream::connect(addr).await.unwrap();
    let port = check.local_addr().unwrap().port();
    check
        .write_all(&proxy_protocol::encode(Version::V2, None, &[]).unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), check.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty(), "no challenge for a health check");
    wait_for_log_line(&["health check", &format!("via=127.0.0.1:{port}")]).await;
    assert!(
        !logs()
            .lines()
            .any(|l| l.contains("rejected") && l.contains(&format!("127.0.0.1:{port}"))),
        "a health check is not a refusal"
    );
}

#[tokio::test]
async fn a_trusted_balancer_without_a_valid_header_is_refused_within_the_deadline() {
    capture_logs();
    let (addr, _, mut admitted) = gate_behind_a_balancer(64).await;
    let mut huge = proxy_protocol::V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    for (bytes, reason) in [
        (&b""[..], "waiting for a PROXY protocol header"),
        (
            &b"PROXY TCP4 192.0.2.1"[..],
            "waiting for a PROXY protocol header",
        ),
        (&huge[..], "more than"),
        (
            &b"\x01\x05alice and a RESPONSE"[..],
            "no PROXY protocol header",
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let port = stream.local_addr().unwrap().port();
        stream.write_all(bytes).await.unwrap();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .unwrap();
        assert!(got.is_empty(), "no challenge without a header: {got:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused within the 800 ms deadline"
        );
        wait_for_log_line(&[
            "connection rejected",
            reason,
            &format!("via=127.0.0.1:{port}"),
        ])
        .await;
    }
    assert!(admitted.try_recv().is_err());
}

#[tokio::test]
async fn an_untrusted_source_cannot_claim_an_address() {
    capture_logs();
    let (addr, alice, mut admitted) = gate_behind_a_balancer(64).await;
    let mut spoofer = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    let port = spoofer.local_addr().unwrap().port();
    spoofer
        .write_all(&header(Version::V1, "192.0.2.99:1", addr))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), spoofer.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got.len(), 41, "the challenge, then the malformed verdict");
    assert_eq!(got[40], linkgate::protocol::VERDICT_MALFORMED);
    wait_for_log_line(&[
        "connection rejected",
        "not trusted",
        &format!("127.0.0.2:{port}"),
    ])
    .await;

    // A key holder from there gets in as itself, without a header.
    let stream = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    let _session = linkgate::authenticate(stream, &Credentials::new(alice))
        .await
        .unwrap();
    let who = admitted.recv().await.unwrap();
    assert_eq!(
        who.peer().and_then(Peer::ip_addr).unwrap().ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
    );
    assert!(who.via().is_none());
}

#[tokio::test]
async fn per_source_bounds_count_the_real_clients() {
    capture_logs();
    let (addr, alice, mut admitted) = gate_behind_a_balancer(3).await;
    // Three silent clients of 192.0.2.1, all through the one balancer address.
    let mut silent = Vec::new();
    for i in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&header(
                Version::V2,
                &format!("192.0.2.1:{}", 1000 + i),
                addr,
            ))
            .await
            .unwrap();
        let mut challenge = [0u8; 40];
        stream.read_exact(&mut challenge).await.unwrap();
        silent.push(stream);
    }
    // A fourth from 192.0.2.1 is refused at once...
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    fourth
        .write_all(&header(Version::V2, "192.0.2.1:2000", addr))
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut got))
        .await
        .expect("the fourth is closed");
    assert!(got.is_empty(), "{read:?}: {got:?}");
    wait_for_log_line(&["too many handshakes in progress", "peer=192.0.2.1:2000"]).await;
    // ...while another real client behind the same balancer gets in.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&header(Version::V2, "192.0.2.2:3000", addr))
        .await
        .unwrap();
    let mut session = linkgate::authenticate(stream, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(echo_once(&mut session, b"ok").await, b"ok");
    assert_eq!(
        admitted.recv().await.unwrap().peer(),
        Some(&Peer::Ip("192.0.2.2:3000".parse().unwrap()))
    );
}
