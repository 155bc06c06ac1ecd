//! A gated Unix domain socket listener: admits a key holder over a socket path, refuses an
//! impostor, and knows the peer by its user id.

use linkgate::{Credentials, Error, GatedListener, Peer, Rejection};
use tokio::net::UnixStream;

use crate::support::{capture_logs, echo_once, gate, key, wait_for_log_line};

#[tokio::test]
async fn a_unix_socket_listener_admits_a_key_holder_and_refuses_an_impostor() {
    capture_logs();
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("gate.sock");
    let alice = key("alice");
    let mut listener = GatedListener::bind_unix(&path, gate(&[&alice])).unwrap();
    let (tx, mut admitted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let stream = listener.accept().await;
            let _ = tx.send(stream.admission().clone());
            tokio::spawn(crate::support::echo(stream));
        }
    });

    let stream = UnixStream::connect(&path).await.unwrap();
    let mut client = linkgate::authenticate(stream, &Credentials::new(alice))
        .await
        .unwrap();
    assert_eq!(
        echo_once(&mut client, b"over a socket path").await,
        b"over a socket path"
    );
    let who = admitted.recv().await.unwrap();
    assert_eq!(who.key_id().as_str(), "alice");
    let Some(Peer::Unix(peer)) = who.peer() else {
        panic!("{who:?}")
    };
    let me = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(peer.uid(), me, "the peer is this process's user");
    assert_eq!(peer.pid(), Some(std::process::id() as i32));

    let impostor = UnixStream::connect(&path).await.unwrap();
    let refused = linkgate::authenticate(impostor, &Credentials::new(key("alice"))).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejection::Denied))),
        "{refused:?}"
    );
    let line = wait_for_log_line(&[
        "connection rejected",
        "wrong proof for key id alice",
        "unix:uid=",
    ])
    .await;
    assert!(line.contains(&format!("unix:uid={me}")), "{line}");
    assert!(
        admitted.try_recv().is_err(),
        "only alice came out of accept"
    );
}
