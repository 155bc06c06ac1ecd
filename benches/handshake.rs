//! CPU cost of each half of the linkgate/1 handshake (issue: server half at most 5 µs).
//!
//! `cargo bench --bench handshake`. The halves are measured I/O-free, exactly the work
//! `Gate::admit` and `authenticate` do besides moving bytes; the full handshake is also measured
//! over an in-memory `tokio::io::duplex` stream, both halves on one current-thread runtime.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use linkgate::protocol::{self, Judgement};
use linkgate::{Credentials, Gate, Key, KeyId, Keyring};
use rand::TryRng;
use rand::rngs::SysRng;

fn nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    SysRng.try_fill_bytes(&mut nonce).expect("OS randomness");
    nonce
}

fn handshake_halves(c: &mut Criterion) {
    let key = Key::generate(KeyId::new("alice").unwrap()).unwrap();
    let dummy = Key::generate(KeyId::new("dummy").unwrap()).unwrap();
    let mut keyring = Keyring::new();
    keyring.insert(key.clone());
    for i in 0..100 {
        keyring.insert(Key::generate(KeyId::new(format!("client-{i}")).unwrap()).unwrap());
    }

    // Server half: a nonce from the OS, the CHALLENGE, judging a valid RESPONSE (verify the
    // client proof, compute the server proof).
    c.bench_function("server_half/nonce+challenge+judge", |b| {
        b.iter_batched(
            || {
                let client_nonce = nonce();
                let fixed_server_nonce = [7u8; 32];
                let response =
                    protocol::respond(&key, key.id(), &fixed_server_nonce, &client_nonce);
                (fixed_server_nonce, response.encode())
            },
            |(server_nonce, response)| {
                let fresh = nonce();
                black_box(protocol::encode_challenge(&fresh));
                let judged = protocol::judge(&response, &server_nonce, &keyring, &dummy);
                assert!(matches!(judged, Judgement::Admitted { .. }));
                judged
            },
            BatchSize::SmallInput,
        )
    });

    // Client half: a nonce from the OS, the RESPONSE, checking the server's proof.
    let server_nonce = nonce();
    c.bench_function("client_half/nonce+respond+verify", |b| {
        b.iter(|| {
            let client_nonce = nonce();
            let response = protocol::respond(&key, key.id(), &server_nonce, &client_nonce);
            black_box(response.encode());
            let proof = protocol::server_proof(&key, &server_nonce, &client_nonce, key.id());
            black_box(protocol::verify_server_proof(
                &key,
                key.id(),
                &server_nonce,
                &client_nonce,
                &proof,
            ))
        })
    });

    c.bench_function("parts/os_nonce_32_bytes", |b| b.iter(nonce));

    // Both halves over an in-memory stream: the whole Gate::admit + authenticate path.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gate = Gate::new(keyring.clone()).unwrap();
    let credentials = Credentials::new(key.clone());
    c.bench_function("full_handshake/duplex", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (client_end, server_end) = tokio::io::duplex(256);
                let (admitted, authenticated) = tokio::join!(
                    gate.admit(server_end),
                    linkgate::authenticate(client_end, &credentials)
                );
                admitted.expect("admitted");
                authenticated.expect("authenticated");
            })
        })
    });
}

criterion_group!(benches, handshake_halves);
criterion_main!(benches);
