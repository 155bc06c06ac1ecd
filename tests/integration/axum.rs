//! An axum app behind the gate, reached by a hyper client over `linkgate::connect`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use linkgate::{Admission, Credentials, Gate, GateConfig, GatedListener, Key, Peer};

use crate::support::{key, keyring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

async fn whoami(State(calls): State<Calls>, ConnectInfo(who): ConnectInfo<Admission>) -> String {
    calls.0.fetch_add(1, Ordering::SeqCst);
    let peer = who.peer().map(Peer::to_string).unwrap_or_default();
    format!("hello {} from {peer} ({})", who.key_id(), who.mode())
}

async fn gated_app(keys: &[&Key], config: GateConfig) -> (SocketAddr, Calls) {
    let gate = Gate::with_config(keyring(keys), config).unwrap();
    let listener = GatedListener::bind("127.0.0.1:0", gate).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Calls::default();
    let app = Router::new()
        .route("/", get(whoami))
        .with_state(calls.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<Admission>(),
        )
        .await
    });
    (addr, calls)
}

/// GET / over an authenticated connection with hyper's client; returns status and body.
async fn get_as(addr: SocketAddr, key: &Key) -> (u16, String, SocketAddr) {
    let stream = linkgate::connect(addr, &Credentials::new(key.clone()))
        .await
        .unwrap();
    let local = stream.get_ref().local_addr().unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/")
        .header("host", "gated")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), local)
}

#[tokio::test]
async fn handler_sees_the_callers_key_id() {
    let (alice, bob) = (key("alice"), key("bob"));
    let (addr, calls) = gated_app(&[&alice, &bob], GateConfig::new()).await;

    let (status, body, local) = get_as(addr, &alice).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("hello alice from {local} (sealed-fs)"));
    let (_, body, _) = get_as(addr, &bob).await;
    assert!(body.starts_with("hello bob from 127.0.0.1:"), "{body}");
    assert_eq!(calls.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unauthenticated_http_gets_no_response_and_no_handler_runs() {
    let (addr, calls) = gated_app(&[&key("alice")], GateConfig::new()).await;

    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: gated\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut received))
        .await
        .expect("the gate closes the connection");
    assert!(
        !received.windows(5).any(|w| w == b"HTTP/"),
        "no HTTP response"
    );
    assert_eq!(
        received.len(),
        41,
        "only the challenge and the malformed verdict"
    );

    // An impostor with a key under a known id gets no response either.
    let impostor = linkgate::connect(addr, &Credentials::new(key("alice"))).await;
    assert!(
        matches!(
            impostor,
            Err(linkgate::Error::Rejected(linkgate::Rejection::Denied))
        ),
        "{impostor:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(calls.0.load(Ordering::SeqCst), 0, "the handler never ran");
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_the_app() {
    let alice = key("alice");
    let config = GateConfig::new().with_handshake_timeout(Duration::from_secs(30));
    let (addr, calls) = gated_app(&[&alice], config).await;

    // Connects, gets its challenge, and then says nothing for the rest of the test.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut challenge = [0u8; linkgate::protocol::CHALLENGE_LEN];
    silent.read_exact(&mut challenge).await.unwrap();

    let started = Instant::now();
    for _ in 0..5 {
        let (status, body, _) = get_as(addr, &alice).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("hello alice"), "{body}");
    }
    println!(
        "5 requests served in {:?} while a silent client was connected",
        started.elapsed()
    );
    assert_eq!(calls.0.load(Ordering::SeqCst), 5);

    // The silent client is still waiting: nothing waited for its timeout.
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(1), silent.read(&mut byte))
            .await
            .is_err()
    );
}

/// What a user of `linkgate::testing` writes in their own test: the impostor probe against
/// their app, every impostor examined (no penalties, so none is merely refused at accept), and
/// their handler never run.
#[cfg(feature = "testing")]
#[tokio::test]
async fn the_impostor_probe_passes_against_an_axum_app_and_no_handler_runs() {
    use axum::serve::ListenerExt;
    use linkgate::testing::{Probe, Status, assert_refuses_impostors};
    use linkgate::{ListenerConfig, PenaltyConfig};

    let alice = key("alice");
    let config = GateConfig::new().with_handshake_timeout(Duration::from_millis(500));
    let gate = Gate::with_config(keyring(&[&alice]), config).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let no_penalties = ListenerConfig::new().with_penalties(PenaltyConfig::disabled());
    // Count what the gate lets through to axum: only the probe's legitimate sessions may pass.
    let admitted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&admitted);
    let listener = GatedListener::with_config(tcp, gate, no_penalties).tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let calls = Calls::default();
    // (tap_io hides the Admission from ConnectInfo, so this app's handler does without it.)
    let app = Router::new()
        .route("/", get(hello))
        .with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });

    let report = Probe::new(addr.to_string())
        .with_credentials(Credentials::new(alice.clone()))
        .with_silent_limit(Duration::from_secs(3))
        .run()
        .await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.refused_at_accept(), 0, "{report}");
    assert_eq!(report.findings.len(), 13, "{report}");
    assert!(
        report
            .findings
            .iter()
            .all(|finding| finding.status == Status::Pass),
        "{report}"
    );
    // Three admissions (the legitimate client, the session then tampered with, the one whose
    // RESPONSE was replayed), and no impostor among what reached axum.
    assert_eq!(admitted.load(Ordering::SeqCst), 3, "{report}");
    // The one-liner, without a key: nothing more gets through.
    let keyless = assert_refuses_impostors(addr.to_string()).await;
    assert_eq!(keyless.findings.len(), 9, "{keyless}");
    assert_eq!(admitted.load(Ordering::SeqCst), 3, "{keyless}");
    // The admitted sessions sent no request, so no handler ran.
    assert_eq!(calls.0.load(Ordering::SeqCst), 0);
    // And the app still serves its real client.
    let (status, body, _) = get_as(addr, &alice).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert_eq!(admitted.load(Ordering::SeqCst), 4);
    assert_eq!(calls.0.load(Ordering::SeqCst), 1);
}

#[cfg(feature = "testing")]
async fn hello(State(calls): State<Calls>) -> &'static str {
    calls.0.fetch_add(1, Ordering::SeqCst);
    "hello"
}
