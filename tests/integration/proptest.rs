//! Arbitrary bytes as a RESPONSE never panic the server and always end in a rejection: first
//! straight into the I/O-free protocol module, then a few cases over real sockets.

use linkgate::protocol::{self, ClientHello, EphemeralSecret, Judgement, ModePolicy};
use linkgate::{Error, Gate, GateConfig, Key, Mode, Refusal};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{key, keyring};

fn judge(response: &[u8], nonce: &[u8; 32], ring: &linkgate::Keyring, dummy: &Key) -> Judgement {
    protocol::judge(
        response,
        nonce,
        ring,
        dummy,
        &ModePolicy::new(true, false),
        EphemeralSecret::generate,
    )
    .expect("randomness")
}

fn fixtures() -> (linkgate::Keyring, Key) {
    (keyring(&[&key("alice"), &key("bob")]), key("dummy"))
}

proptest! {
    #[test]
    fn judge_rejects_arbitrary_responses(
        response in proptest::collection::vec(any::<u8>(), 0..300),
        nonce in any::<[u8; 32]>(),
    ) {
        let (ring, dummy) = fixtures();
        let judged = judge(&response, &nonce, &ring, &dummy);
        let refused = !matches!(judged, Judgement::Admitted(_));
        prop_assert!(refused);
        prop_assert!(judged.verdict() == [protocol::VERDICT_DENIED] || judged.verdict() == [protocol::VERDICT_MALFORMED]);
    }

    /// Well-formed headers with known ids but arbitrary nonce/proof bytes: still denied.
    #[test]
    fn judge_denies_well_formed_guesses(
        id in prop_oneof![Just("alice"), Just("bob"), Just("carol")],
        tail in any::<[u8; 64]>(),
        nonce in any::<[u8; 32]>(),
    ) {
        let (ring, dummy) = fixtures();
        let mut response = vec![0u8, id.len() as u8];
        response.extend_from_slice(id.as_bytes());
        response.extend_from_slice(&tail);
        let judged = judge(&response, &nonce, &ring, &dummy);
        prop_assert!(matches!(judged, Judgement::Refused(Refusal::WrongProof(_) | Refusal::UnknownKeyId(_))));
        prop_assert_eq!(judged.verdict(), [protocol::VERDICT_DENIED]);
    }

    #[test]
    fn head_never_panics(head in any::<[u8; 2]>()) {
        if let Ok(remaining) = protocol::response_remaining_len(head) {
            prop_assert!((65..=160).contains(&remaining));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn gate_rejects_arbitrary_bytes_over_tcp(junk in proptest::collection::vec(any::<u8>(), 0..200)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (received, reason) = runtime.block_on(async move {
            let (ring, _) = fixtures();
            let config = GateConfig::new().with_handshake_timeout(std::time::Duration::from_millis(300));
            let gate = Gate::with_config(ring, config).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                gate.admit(stream).await.map(|admitted| admitted.key_id().clone())
            });
            let mut client = TcpStream::connect(addr).await.unwrap();
            let mut challenge = [0u8; protocol::CHALLENGE_LEN];
            client.read_exact(&mut challenge).await.unwrap();
            let _ = client.write_all(&junk).await;
            // Half-close so a short RESPONSE ends in "closed early", not a timeout.
            let _ = client.shutdown().await;
            let mut received = Vec::new();
            let _ = client.read_to_end(&mut received).await;
            (received, server.await.unwrap())
        });
        let reason = match reason {
            Ok(id) => return Err(TestCaseError::fail(format!("admitted {id} for junk"))),
            Err(reason) => reason,
        };
        prop_assert!(matches!(
            reason,
            Error::ClosedEarly | Error::Refused(_)
        ), "{}", reason);
        // The client saw at most one refusal byte, never a proof.
        prop_assert!(received.is_empty() || received == [protocol::VERDICT_DENIED] || received == [protocol::VERDICT_MALFORMED]);
    }
}

proptest! {
    /// Any single flipped bit in an honest RESPONSE, in any mode, is refused: the proof covers
    /// every byte.
    #[test]
    fn a_flipped_bit_in_any_response_is_refused(
        mode in prop_oneof![Just(Mode::Plain), Just(Mode::Sealed), Just(Mode::SealedFs)],
        position in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let alice = key("alice");
        let ring = keyring(&[&alice]);
        let nonce = [0x11; 32];
        let hello = ClientHello::new(&alice, alice.id(), mode, &nonce, [0x22; 32], None).unwrap();
        let mut response = hello.response().encode();
        let i = position.index(response.len());
        response[i] ^= 1 << bit;
        let judged = judge(&response, &nonce, &ring, &key("dummy"));
        prop_assert!(!matches!(judged, Judgement::Admitted(_)), "byte {} bit {}", i, bit);
    }
}
