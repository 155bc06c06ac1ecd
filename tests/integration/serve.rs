//! `serve_until`'s bound on open connections, kept by one loop or shared by several.

use std::future::pending;
use std::time::Duration;

use linkgate::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::loopback_listener;

/// Serves `listener` with `options`: each connection is greeted with "hi", then held until its
/// client closes.
async fn greeting_loop(listener: TcpListener, options: ServeOptions) {
    let connections = futures_util::stream::unfold(listener, |listener| async move {
        let (stream, _) = listener.accept().await.ok()?;
        Some((stream, listener))
    });
    linkgate::serve_until(
        Box::pin(connections),
        options,
        pending(),
        pending(),
        |mut stream: TcpStream| async move {
            let _ = stream.write_all(b"hi").await;
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        },
    )
    .await;
}

/// Whether a client of `addr` is greeted within `wait`; the client is returned to keep it open.
async fn greeted(addr: std::net::SocketAddr, wait: Duration) -> (TcpStream, bool) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut hi = [0u8; 2];
    let got = tokio::time::timeout(wait, client.read_exact(&mut hi)).await;
    let greeted = matches!(got, Ok(Ok(_))) && &hi == b"hi";
    (client, greeted)
}

/// Each loop takes a slot before it accepts, so the shared bound of three is reached with two
/// connections to A and one to B; a fourth waits for a free slot, on whichever loop it comes;
/// with bounds of their own, B serves it at once.
#[tokio::test]
async fn loops_with_a_shared_bound_count_each_others_connections() {
    for shared in [false, true] {
        let mut options = ServeOptions::new().with_max_connections(3);
        if shared {
            options = options.with_shared_bound();
        }
        let (a, a_addr) = loopback_listener().await;
        let (b, b_addr) = loopback_listener().await;
        let loops = [
            tokio::spawn(greeting_loop(a, options.clone())),
            tokio::spawn(greeting_loop(b, options.clone())),
        ];
        let mut open = Vec::new();
        for addr in [a_addr, a_addr, b_addr] {
            let (client, was_greeted) = greeted(addr, Duration::from_secs(5)).await;
            assert!(was_greeted, "shared {shared}: three connections are served");
            open.push(client);
        }
        let (mut fourth, fourth_greeted) = greeted(b_addr, Duration::from_millis(300)).await;
        if shared {
            assert!(
                !fourth_greeted,
                "B took a fourth connection past a shared bound of three"
            );
            // The others end: B serves the fourth. (Not necessarily after the first ends: an
            // idle loop holds the slot it will accept with, and A asked for one first.)
            drop(open);
            let mut hi = [0u8; 2];
            tokio::time::timeout(Duration::from_secs(5), fourth.read_exact(&mut hi))
                .await
                .expect("B serves once a slot is free")
                .unwrap();
            assert_eq!(&hi, b"hi");
        } else {
            // Each loop has a bound of three of its own.
            assert!(fourth_greeted, "an unshared bound held B back");
        }
        for running in loops {
            running.abort();
        }
    }
}
