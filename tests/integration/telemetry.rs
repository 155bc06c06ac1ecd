//! The listener's telemetry counts what happened, and never carries a claimed key id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkgate::telemetry::{Event, Telemetry};
use linkgate::{Credentials, Gate, GateConfig, GatedListener, ListenerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{echo, key, keyring};

#[derive(Default)]
struct Counts(Mutex<HashMap<String, u64>>);

impl Telemetry for Counts {
    fn event(&self, event: &Event<'_>) {
        let name = match event {
            Event::Accepted => "accepted".to_owned(),
            Event::Refused(bound) => format!("refused:{}", bound.as_str()),
            Event::HandshakeStarted => "started".to_owned(),
            Event::HandshakeFinished {
                outcome, admitted, ..
            } => match admitted {
                Some((id, mode)) => format!("{outcome}:{id}:{mode}"),
                None => outcome.to_string(),
            },
            _ => "other".to_owned(),
        };
        *self.0.lock().unwrap().entry(name).or_default() += 1;
    }
}

impl Counts {
    fn get(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

#[tokio::test]
async fn every_way_in_is_counted_once() {
    let alice = key("alice");
    let gate = Gate::with_config(
        keyring(&[&alice]),
        GateConfig::new().with_handshake_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let counts = Arc::new(Counts::default());
    let config = ListenerConfig::new()
        .with_max_handshakes_per_source(1)
        .with_telemetry(counts.clone());
    let mut listener = GatedListener::with_config(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        gate,
        config,
    );
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            tokio::spawn(echo(listener.accept().await));
        }
    });

    let _admitted = linkgate::connect(addr, &Credentials::new(alice))
        .await
        .unwrap();
    let denied = linkgate::connect(addr, &Credentials::new(key("mallory"))).await;
    assert!(denied.is_err());
    // A silent client holds the source's only slot; the next one from 127.0.0.1 is refused.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    silent.read_exact(&mut [0u8; 40]).await.unwrap();
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let _ = refused.read_to_end(&mut Vec::new()).await;
    let _ = silent.read_to_end(&mut Vec::new()).await; // closed at the 300 ms timeout
    // The timeout is reported as the listener drops the connection, maybe a moment after the
    // client sees it close: wait for it, then check that nothing else came.
    tokio::time::timeout(Duration::from_secs(5), async {
        while counts.get("timeout") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the silent client's timeout is counted");

    assert_eq!(counts.get("accepted"), 4);
    assert_eq!(counts.get("started"), 3, "the refused one never started");
    assert_eq!(counts.get("admitted:alice:sealed-fs"), 1);
    assert_eq!(
        counts.get("denied"),
        1,
        "no key id for a refusal: {:?}",
        counts.0.lock().unwrap()
    );
    assert_eq!(counts.get("timeout"), 1);
    assert_eq!(counts.get("refused:per_source"), 1);
    let all = format!("{:?}", counts.0.lock().unwrap());
    assert!(
        !all.contains("mallory"),
        "a claimed id never reaches telemetry: {all}"
    );
}
