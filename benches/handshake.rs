//! CPU cost of each half of the linkgate/1 handshake, per mode (target for plain: the server
//! half at most 5 µs).
//!
//! `cargo bench --bench handshake`. The halves are measured I/O-free, exactly the work
//! `Gate::admit` and `authenticate` do besides moving bytes; the full handshake is also measured
//! over an in-memory `tokio::io::duplex` stream, both halves on one current-thread runtime.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use linkgate::protocol::{self, ClientHello, EphemeralSecret, Judgement, ModePolicy};
use linkgate::{Credentials, Gate, Key, KeyId, Keyring, Mode};
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

    // Server half per mode: a nonce from the OS, the CHALLENGE, judging a valid RESPONSE
    // (verify the client proof, compute the server proof; in the sealed modes the key schedule,
    // and in sealed-fs an X25519 key pair and exchange).
    let policy = ModePolicy::new(true, false);
    for mode in Mode::ALL {
        c.bench_function(&format!("server_half/{mode}"), |b| {
            b.iter_batched(
                || {
                    let fixed_server_nonce = [7u8; 32];
                    let hello =
                        ClientHello::new(&key, key.id(), mode, &fixed_server_nonce, nonce(), None)
                            .unwrap();
                    (fixed_server_nonce, hello.response().encode())
                },
                |(server_nonce, response)| {
                    let fresh = nonce();
                    black_box(protocol::encode_challenge(&fresh));
                    let judged = protocol::judge(
                        &response,
                        &server_nonce,
                        &keyring,
                        &dummy,
                        &policy,
                        EphemeralSecret::generate,
                    )
                    .unwrap();
                    assert!(matches!(judged, Judgement::Admitted(_)));
                    judged
                },
                BatchSize::SmallInput,
            )
        });
    }

    // Client half: a nonce from the OS, the RESPONSE (plain mode), checking the server's proof.
    let server_nonce = nonce();
    c.bench_function("client_half/plain", |b| {
        b.iter(|| {
            let client_nonce = nonce();
            let hello = ClientHello::new(
                &key,
                key.id(),
                Mode::Plain,
                &server_nonce,
                client_nonce,
                None,
            )
            .unwrap();
            black_box(hello.response().encode());
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
