//! Behind and in front of real load balancers: haproxy (v2, with health checks) and nginx stream
//! (v1) in front of gates started with --accept-proxy-from, and gates that send a PROXY header
//! to an haproxy or nginx upstream. Loopback only; clients bind 127.0.0.2, 127.0.0.3 as distinct
//! sources.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use linkgate::{Credentials, Key};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::process::{Linkgate, keygen, start_serve};
use crate::support::{echo_upstream, start_connect};

/// Whether `program` runs here. Without it the test says it was skipped, unless the CI run asks
/// for every peer (LINKGATE_REQUIRE_PEERS=1), where a missing peer is a failure.
fn have(program: &str, version_flag: &str) -> bool {
    let found = Command::new(program)
        .arg(version_flag)
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var_os("LINKGATE_REQUIRE_PEERS").is_none(),
            "{program} is required (LINKGATE_REQUIRE_PEERS is set) but not installed"
        );
        println!("skipped: {program} is not installed (apt-get install {program})");
    }
    found
}

/// Waits (up to 10 s) until something accepts on `port`.
async fn wait_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port}");
}

async fn connect_from(source: Ipv4Addr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// haproxy with `config`, logging to its stdout, killed when dropped.
fn haproxy(dir: &Path, config: &str) -> Linkgate {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new("haproxy");
    command.args(["-db", "-f", path.to_str().unwrap()]);
    Linkgate::spawn_command(command)
}

/// nginx with a stream `block`, logging to a file in `dir`, killed when dropped.
fn nginx(dir: &Path, block: &str) -> Linkgate {
    let config = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
stream {{
{block}
}}
",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new("nginx");
    command.args([
        "-p",
        dir.to_str().unwrap(),
        "-c",
        path.to_str().unwrap(),
        "-e",
        "stderr",
        "-g",
        "daemon off; master_process off;",
    ]);
    Linkgate::spawn_command(command)
}

/// Authenticates through the balancer at `port` from `source` and echoes one message.
async fn through(source: Ipv4Addr, port: u16, key: &Key) {
    let stream = connect_from(source, port).await;
    let mut session = linkgate::authenticate(stream, &Credentials::new(key.clone()))
        .await
        .unwrap();
    session.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    session.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    session.shutdown().await.unwrap();
    session.read_to_end(&mut Vec::new()).await.unwrap();
}

/// Two gates trusting 127.0.0.1, echoing, with small per-source bounds and long timeouts.
async fn two_gates(keys: &Path) -> [(Linkgate, SocketAddr); 2] {
    let flags = [
        "-v",
        "--accept-proxy-from",
        "127.0.0.1/32",
        "--max-handshakes-per-source",
        "16",
        "--handshake-timeout",
        "30s",
    ];
    [
        start_serve(keys, None, &flags).await,
        start_serve(keys, None, &flags).await,
    ]
}

fn either_log(gates: &[(Linkgate, SocketAddr); 2]) -> String {
    format!("{}{}", gates[0].0.stderr(), gates[1].0.stderr())
}

async fn wait_either(gates: &[(Linkgate, SocketAddr); 2], needles: &[&str]) -> String {
    for _ in 0..200 {
        let log = either_log(gates);
        if let Some(line) = log
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no line with {needles:?} in:\n{}", either_log(gates));
}

/// What a balancer in front of two gates must give: the real client in each gate's log,
/// per-source bounds that count real clients, and quiet health checks.
async fn check_gates_behind(gates: &[(Linkgate, SocketAddr); 2], port: u16, key: &Key) {
    check_gates_behind_with(gates, port, key, None).await;
}

async fn check_gates_behind_excluding(
    gates: &[(Linkgate, SocketAddr); 2],
    port: u16,
    key: &Key,
    probe: &str,
) {
    check_gates_behind_with(gates, port, key, Some(probe)).await;
}

async fn check_gates_behind_with(
    gates: &[(Linkgate, SocketAddr); 2],
    port: u16,
    key: &Key,
    probe: Option<&str>,
) {
    through(Ipv4Addr::new(127, 0, 0, 2), port, key).await;
    through(Ipv4Addr::new(127, 0, 0, 3), port, key).await;
    let line = wait_either(gates, &["admitted", "peer=127.0.0.2:", "via=127.0.0.1:"]).await;
    assert!(line.contains("key_id=alice"), "{line}");
    wait_either(gates, &["admitted", "peer=127.0.0.3:", "via=127.0.0.1:"]).await;

    // 64 silent clients from 127.0.0.2 (32 per gate, 16 allowed per source per gate)...
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(connect_from(Ipv4Addr::new(127, 0, 0, 2), port).await);
    }
    wait_either(
        gates,
        &["too many handshakes in progress", "peer=127.0.0.2:"],
    )
    .await;
    // ...do not stop a legitimate client from 127.0.0.3 through the same balancer.
    for _ in 0..4 {
        through(Ipv4Addr::new(127, 0, 0, 3), port, key).await;
    }
    let log = either_log(gates);
    assert!(
        !log.lines()
            .any(|line| line.contains("too many handshakes") && line.contains("peer=127.0.0.3:")),
        "the legitimate source was never bounded:\n{log}"
    );
    // Nothing so far was a refusal (the silent clients are still waiting; the balancer's
    // health checks, if any, were closed quietly), but for the readiness probe, if any.
    let refused: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("connection rejected"))
        .filter(|line| probe.is_none_or(|probe| !line.contains(probe)))
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_v2_in_front_of_two_gates() {
    if !have("haproxy", "-v") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let gates = two_gates(dir.path()).await;
    let port = crate::support::free_port().await;
    let _haproxy = haproxy(
        dir.path(),
        &format!(
            "global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend gates
    bind 127.0.0.1:{port}
    default_backend gates
backend gates
    balance roundrobin
    server g1 {} send-proxy-v2 check inter 300ms
    server g2 {} send-proxy-v2 check inter 300ms
",
            gates[0].1, gates[1].1
        ),
    );
    // haproxy's health checks arrive as v2 LOCAL headers and are closed quietly; seeing one
    // also means haproxy is up (probing its port would make a connection of our own).
    wait_either(&gates, &["LOCAL header", "health check"]).await;
    check_gates_behind(&gates, port, &key).await;
    // The checks go on (every 300 ms per gate), and none of them is ever logged as a refusal.
    let mut checks = 0;
    for _ in 0..100 {
        checks = either_log(&gates)
            .lines()
            .filter(|line| line.contains("health check"))
            .count();
        if checks >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = either_log(&gates);
    assert!(
        checks >= 6,
        "both gates were checked repeatedly ({checks}):\n{log}"
    );
    assert!(
        !log.lines().any(|line| line.contains("rejected")
                // One by one (peer=) or in the log limiter's summary (source=).
                && !line.contains("peer=127.0.0.2:")
                && !line.contains("source=127.0.0.2:")),
        "no refusal but the silent clients' (dropped at the end):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_v1_in_front_of_two_gates() {
    if !have("nginx", "-v") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let gates = two_gates(dir.path()).await;
    let port = crate::support::free_port().await;
    let _nginx = nginx(
        dir.path(),
        &format!(
            "upstream gates {{ server {}; server {}; }}
server {{ listen 127.0.0.1:{port}; proxy_pass gates; proxy_protocol on; proxy_half_close on; }}",
            gates[0].1, gates[1].1
        ),
    );
    // Probe nginx's port from 127.0.0.9, so the probe's own (refused) connection is not
    // mistaken for one of the test's.
    for _ in 0..200 {
        if TcpSocket::new_v4()
            .and_then(|s| s.bind("127.0.0.9:0".parse().unwrap()).map(|()| s))
            .unwrap()
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_either(&gates, &["connection rejected", "peer=127.0.0.9:"]).await;
    check_gates_behind_excluding(&gates, port, &key, "peer=127.0.0.9:").await;
}

/// Reads a v2 PROXY header from `stream` and returns its bytes.
pub(crate) async fn read_v2_header(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = vec![0u8; 16];
    stream.read_exact(&mut head).await.unwrap();
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await.unwrap();
    head.extend_from_slice(&rest);
    head
}

#[tokio::test(flavor = "multi_thread")]
async fn send_proxy_v2_carries_the_client_and_the_key_id_upstream() {
    // A Rust upstream that reads the header itself.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        let header = read_v2_header(&mut stream).await;
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).await.unwrap();
        let _ = tx.send((header, first));
    });
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "alice");
    let (serve, gate) = start_serve(dir.path(), Some(upstream_addr), &["--send-proxy", "v2"]).await;
    let (_connect, local) = start_connect(gate, &key, &[]).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
    let mut client = socket.connect(local).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let (header, first) = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &first, b"hello",
        "the header came before any forwarded byte"
    );
    assert_eq!(
        linkgate::proxy_protocol::key_id_of(&header).as_deref(),
        Some("alice")
    );
    let received = linkgate::proxy_protocol::parse(&header).unwrap();
    let linkgate::proxy_protocol::Received::Proxied {
        source,
        destination,
    } = received
    else {
        panic!("{received:?}")
    };
    // The gate's client is `connect` on 127.0.0.1; the destination is the gate's address.
    assert_eq!(source.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(destination, gate);
    let admitted = serve.wait_for_log(&["admitted", "key_id=alice"]).await;
    let conn = admitted
        .split_whitespace()
        .find_map(|f| f.strip_prefix("conn="))
        .unwrap();
    let text = String::from_utf8_lossy(&header);
    assert!(
        text.contains(conn),
        "UNIQUE_ID is the gate's connection id {conn}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_upstream_logs_the_real_client_and_the_key_id() {
    if !have("haproxy", "-v") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let echo = echo_upstream().await;
    let port = crate::support::free_port().await;
    let haproxy = haproxy(
        dir.path(),
        &format!(
            "global
    log stdout format raw local0
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend behind_the_gate
    bind 127.0.0.1:{port} accept-proxy
    log-format \"client=%ci authority=%[fc_pp_authority] unique=%[fc_pp_unique_id]\"
    default_backend echo
backend echo
    server echo {}
",
            echo.addr
        ),
    );
    wait_port(port).await;
    let upstream: SocketAddr = ([127, 0, 0, 1], port).into();
    let (serve, gate) = start_serve(
        dir.path(),
        Some(upstream),
        &["--send-proxy", "v2", "--send-proxy-key-id-as", "authority"],
    )
    .await;
    // The gate's client: a library client bound to 127.0.0.7.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.7:0".parse().unwrap()).unwrap();
    let stream = socket.connect(gate).await.unwrap();
    let mut session = linkgate::authenticate(stream, &Credentials::new(key))
        .await
        .unwrap();
    session.write_all(b"ping").await.unwrap();
    session.read_exact(&mut [0u8; 4]).await.unwrap();
    session.shutdown().await.unwrap();
    session.read_to_end(&mut Vec::new()).await.unwrap();
    let admitted = serve.wait_for_log(&["admitted", "key_id=alice"]).await;
    let conn = admitted
        .split_whitespace()
        .find_map(|f| f.strip_prefix("conn="))
        .unwrap();
    haproxy
        .wait_for_stdout(&[
            "client=127.0.0.7",
            "authority=alice",
            &format!("unique={conn}"),
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_upstream_logs_the_real_client_from_send_proxy_v1() {
    if !have("nginx", "-v") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let key = Key::from_file(keygen(dir.path(), "alice")).unwrap();
    let echo = echo_upstream().await;
    let port = crate::support::free_port().await;
    let log = dir.path().join("access.log");
    let _nginx = nginx(
        dir.path(),
        &format!(
            "log_format pp 'client=$proxy_protocol_addr:$proxy_protocol_port';
server {{ listen 127.0.0.1:{port} proxy_protocol; proxy_pass {}; access_log {} pp; }}",
            echo.addr,
            log.display()
        ),
    );
    wait_port(port).await;
    let (_serve, gate) = start_serve(
        dir.path(),
        Some(([127, 0, 0, 1], port).into()),
        &["--send-proxy", "v1"],
    )
    .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.8:0".parse().unwrap()).unwrap();
    let stream = socket.connect(gate).await.unwrap();
    let client_port = stream.local_addr().unwrap().port();
    let mut session = linkgate::authenticate(stream, &Credentials::new(key))
        .await
        .unwrap();
    session.write_all(b"ping").await.unwrap();
    session.read_exact(&mut [0u8; 4]).await.unwrap();
    session.shutdown().await.unwrap();
    session.read_to_end(&mut Vec::new()).await.unwrap();
    let expected = format!("client=127.0.0.8:{client_port}");
    for _ in 0..100 {
        if std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&expected)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "nginx never logged {expected}: {:?}",
        std::fs::read_to_string(&log)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_missing_or_broken_headers_never_reach_the_upstream() {
    let dir = TempDir::new().unwrap();
    keygen(dir.path(), "alice");
    let upstream = echo_upstream().await;
    let (serve, gate) = start_serve(
        dir.path(),
        Some(upstream.addr),
        &[
            "--accept-proxy-from",
            "127.0.0.1",
            "--handshake-timeout",
            "700ms",
        ],
    )
    .await;
    let header = linkgate::proxy_protocol::encode(
        linkgate::proxy_protocol::Version::V1,
        Some(("192.0.2.1:1".parse().unwrap(), gate)),
        &[],
    )
    .unwrap();
    let mut huge = linkgate::proxy_protocol::V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    for (source, bytes, reason) in [
        (Ipv4Addr::new(127, 0, 0, 2), &header[..], "not trusted"),
        (
            Ipv4Addr::LOCALHOST,
            &b""[..],
            "waiting for a PROXY protocol header",
        ),
        (
            Ipv4Addr::LOCALHOST,
            &header[..10],
            "waiting for a PROXY protocol header",
        ),
        (Ipv4Addr::LOCALHOST, &huge[..], "more than"),
    ] {
        let mut stream = connect_from(source, gate.port()).await;
        let port = stream.local_addr().unwrap().port();
        stream.write_all(bytes).await.unwrap();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("closed by the gate");
        assert!(read.is_ok(), "{reason}: {read:?}");
        // The client's side: from an untrusted source the header is taken for a RESPONSE
        // (CHALLENGE, then VERDICT malformed); from the balancer a bad header gets nothing.
        if source == Ipv4Addr::LOCALHOST {
            assert!(got.is_empty(), "{reason}: the client got {got:?}");
        } else {
            assert_eq!((got.len(), got.get(40)), (41, Some(&0x02)), "{reason}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "within the deadline"
        );
        serve
            .wait_for_log(&["connection rejected", reason, &format!(":{port}")])
            .await;
    }
    assert_eq!(
        upstream.accepts.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
