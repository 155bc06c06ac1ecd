//! `linkgate demo`: the whole story on loopback in a few seconds, with real sockets.

use crate::output::say;
use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use linkgate::{
    Credentials, Error, Gate, GateConfig, GatedListener, Key, KeyId, Keyring, ListenerConfig,
    PenaltyConfig, Rejection, ServeOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

use crate::args::DemoArgs;
use crate::proxy::{self, ConnectContext, ServeContext};
use crate::upstream::Upstream;

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    // A temporary key file, written and loaded exactly as `keygen` and `serve` do.
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let key_path = dir.path().join("demo.key");
    Key::generate(KeyId::new("demo")?)?.write_new_file(&key_path)?;
    let keyring = Keyring::load(dir.path())?;
    let key = Key::from_file(&key_path)?;

    let config = GateConfig::new().with_handshake_timeout(args.handshake_timeout);
    // Every client here, impostors included, comes from 127.0.0.1: with per-source penalties
    // the gate would soon refuse them all at accept (and warn), which is right for a real gate
    // but would hide what the demo shows.
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let no_penalties = ListenerConfig::new().with_penalties(PenaltyConfig::disabled());
    let gate_listener =
        GatedListener::with_config(tcp, Gate::with_config(keyring, config)?, no_penalties);
    let gate = gate_listener.local_addr()?;
    let serve = Arc::new(ServeContext {
        service: "demo".into(),
        upstream: Upstream::Echo,
        connect_timeout: Duration::from_secs(5),
        send_proxy: None,
        revoked: crate::revocations::Revocations::new(false),
        metrics: None,
        draining: tokio_util::sync::CancellationToken::new(),
        stream_slots: Arc::new(tokio::sync::Semaphore::new(1024)),
        per_key: None,
        mux: linkgate::mux::MuxConfig::default(),
        tunnel_threads: Arc::new(crate::threads::Threads::start(1)?),
        cut_off: proxy::CutOff::default(),
        on_threads: tokio_util::task::TaskTracker::new(),
    });
    tokio::spawn(linkgate::serve_with(gate_listener, move |admitted| {
        proxy::serve_one(admitted, Arc::clone(&serve))
    }));

    let local = TcpListener::bind("127.0.0.1:0").await?;
    let local_addr = local.local_addr()?;
    let connect = Arc::new(ConnectContext {
        server: gate.to_string(),
        credentials: arc_swap::ArcSwap::from_pointee(Credentials::new(key.clone())),
    });
    let accepted = tokio_stream::StreamExt::filter_map(TcpListenerStream::new(local), |accepted| {
        let stream = accepted.ok()?;
        let peer = stream.peer_addr().ok()?;
        Some((stream, crate::connect::LocalPeer::Tcp(peer)))
    });
    tokio::spawn(linkgate::serve_with_shutdown(
        Box::pin(accepted),
        ServeOptions::new(),
        pending(),
        move |(stream, peer)| proxy::connect_one(stream, peer, Arc::clone(&connect)),
    ));

    say!(
        "linkgate demo: gated echo server on {gate}, client-side `connect` on {local_addr}, key id \"demo\""
    )?;

    // 1. An unmodified TCP client, through `connect` → `serve` → echo, sealed with forward
    //    secrecy on the way.
    let message = b"hello through linkgate";
    let mut client = TcpStream::connect(local_addr).await?;
    client.write_all(message).await?;
    let mut echoed = vec![0u8; message.len()];
    client
        .read_exact(&mut echoed)
        .await
        .context("the legitimate client got no echo")?;
    ensure!(echoed == message, "the echo differs from what was sent");
    say!(
        "  admitted  plain client via `connect` (key \"demo\", sealed-fs between the two): sent {:?}, got it back",
        String::from_utf8_lossy(message)
    )?;

    // 2. An impostor: right id, wrong key.
    let impostor = Credentials::new(Key::generate(KeyId::new("demo")?)?);
    match linkgate::connect(gate, &impostor).await {
        Err(Error::Rejected(Rejection::Denied)) => {
            say!("  refused   impostor with a wrong key for \"demo\": denied by the server")?;
        }
        Err(other) => bail!("the impostor failed for the wrong reason: {other}"),
        Ok(_) => bail!("the impostor was admitted"),
    }

    // 3. A client that skips the handshake and talks HTTP straight at the gate.
    let mut plain = TcpStream::connect(gate).await?;
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    ensure!(
        answer.len() == 41,
        "the plain client got {} bytes",
        answer.len()
    );
    say!(
        "  refused   plain HTTP client that skips the handshake: got only the challenge and a \"malformed\" verdict, the service never saw it"
    )?;

    // 4. A client that connects and says nothing.
    let started = Instant::now();
    let mut silent = TcpStream::connect(gate).await?;
    let mut received = Vec::new();
    let _ = silent.read_to_end(&mut received).await;
    ensure!(
        received.len() == 40,
        "the silent client got {} bytes",
        received.len()
    );
    say!(
        "  refused   silent client: got only the 40-byte challenge, closed after {:.1} s (the handshake timeout)",
        started.elapsed().as_secs_f64()
    )?;

    // The legitimate client is still connected and served.
    client.write_all(b"bye").await?;
    let mut bye = [0u8; 3];
    client.read_exact(&mut bye).await?;
    ensure!(&bye == b"bye", "the legitimate connection broke");
    say!("demo ok: 1 client admitted, 3 refused")?;
    Ok(())
}
