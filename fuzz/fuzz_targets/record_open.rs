//! The sealed record layer.
//!
//! - Raw: the input as a stream of records for an `Opener` under a fixed secret, walked as a
//!   receiver does (`Opener::record_len` on what is buffered, then `open_in_place` on each whole
//!   record, stopping at the first error). Nothing panics and nothing opens: no tag can verify
//!   without the secret. The whole input as one record (`open_in_place` on a slice of any
//!   length) is refused too.
//! - Structured round trip, from the same bytes read as a plan: chunks of data sealed with a
//!   `Sealer` (through `seal`, `seal_in_place` with the caller's key updates, explicit
//!   KeyUpdates, large chunks that `seal` splits), optionally a small key update interval (the
//!   opener then allows exactly that many records per key), optionally close_notify, optionally
//!   `release_key` between records, then at most one flipped bit. An untouched stream opens to
//!   exactly the data sealed (and close_notify if sent, and nothing after it); a touched stream
//!   fails (an error, or a record cut short at the end) after giving only a prefix of the data.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use linkgate::RecordError;
use linkgate::record::{
    HEADER_LEN, MAX_DATA_LEN, MAX_RECORD_LEN, OVERHEAD, Opened, Opener, RecordLimits, Sealer,
    TrafficSecret,
};

/// The raw walk's secret: never used to seal anything, here or in the seeds.
const RAW_SECRET: [u8; 32] = [0x42; 32];
/// The round trip's secret.
const ROUND_TRIP_SECRET: [u8; 32] = [0x07; 32];
/// The round trip stops adding steps past this many bytes, to keep executions fast.
const MAX_SENT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    raw_stream(data);
    if let Ok(plan) = Plan::arbitrary_take_rest(Unstructured::new(data)) {
        round_trip(&plan);
    }
});

/// How a receiver's walk over a buffer ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte was in a record that opened.
    Clean,
    /// The buffer ends inside a record (a receiver would report `Truncated` at EOF).
    CutShort,
    /// A record (or its header) was refused.
    Refused(RecordError),
}

/// What a receiver got out of a buffer.
#[derive(Debug, Default)]
struct Received {
    data: Vec<u8>,
    key_updates: usize,
    close_notify: bool,
}

/// Walks `wire` as a receiver does: the length from the buffered header, then the whole record.
fn walk(opener: &mut Opener, wire: &mut [u8], release_keys: bool) -> (Received, End) {
    let mut received = Received::default();
    let mut pos = 0;
    while pos < wire.len() {
        let len = match Opener::record_len(&wire[pos..]) {
            Ok(Some(len)) => len,
            Ok(None) => {
                assert!(wire.len() - pos < HEADER_LEN);
                return (received, End::CutShort);
            }
            Err(err) => return (received, End::Refused(err)),
        };
        assert!(
            (OVERHEAD..=MAX_RECORD_LEN).contains(&len),
            "record_len {len}"
        );
        if pos + len > wire.len() {
            return (received, End::CutShort);
        }
        let record = &mut wire[pos..pos + len];
        match opener.open_in_place(record) {
            Ok(Opened::Data(range)) => {
                assert!(!received.close_notify, "data opened after close_notify");
                assert!(range.start == HEADER_LEN && range.end <= len - 1 - 16);
                assert!((1..=MAX_DATA_LEN).contains(&range.len()));
                received.data.extend_from_slice(&record[range]);
            }
            Ok(Opened::KeyUpdate) => received.key_updates += 1,
            Ok(Opened::CloseNotify) => {
                assert!(!received.close_notify, "two close_notify opened");
                assert!(opener.is_closed());
                received.close_notify = true;
            }
            Err(err) => return (received, End::Refused(err)),
        }
        if release_keys {
            opener.release_key();
        }
        pos += len;
    }
    (received, End::Clean)
}

fn raw_stream(data: &[u8]) {
    let secret = TrafficSecret::from_bytes_for_tests(RAW_SECRET);
    let mut wire = data.to_vec();
    let (received, end) = walk(&mut Opener::new(&secret), &mut wire, false);
    assert!(
        received.data.is_empty() && received.key_updates == 0 && !received.close_notify,
        "a record opened without the secret: {received:?}"
    );
    // The first record's header was fine, so its tag is what failed.
    assert!(
        matches!(
            end,
            End::CutShort
                | End::Clean
                | End::Refused(
                    RecordError::BadTag | RecordError::BadHeader | RecordError::BadLength(_)
                )
        ),
        "{end:?}"
    );
    if !data.is_empty() {
        assert_ne!(end, End::Clean, "a non-empty stream opened cleanly");
    }

    // The whole input as one record: open_in_place checks the length itself.
    let mut whole = data.to_vec();
    let opened = Opener::new(&secret).open_in_place(&mut whole);
    assert!(
        opened.is_err(),
        "a record opened without the secret: {opened:?}"
    );
}

/// A plan for the round trip, read from the input by `arbitrary`.
#[derive(Debug, Arbitrary)]
struct Plan {
    /// `RecordLimits::with_key_update_interval` (clamped by the library to at least 2).
    key_update_interval: Option<u8>,
    release_keys: bool,
    close: bool,
    /// (byte index, bit): one bit of the sealed stream flipped.
    flip: Option<(u32, u8)>,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// `Sealer::seal`.
    Seal(Vec<u8>),
    /// `Sealer::seal_in_place`, with the KeyUpdate the caller must send first when due.
    SealInPlace(Vec<u8>),
    /// `Sealer::seal_key_update`.
    KeyUpdate,
    /// `Sealer::seal` of `len` copies of `byte`, to cross the 16384-byte record limit.
    Large { len: u16, byte: u8 },
}

fn round_trip(plan: &Plan) {
    let secret = TrafficSecret::from_bytes_for_tests(ROUND_TRIP_SECRET);
    let (mut sealer, mut opener) = match plan.key_update_interval {
        None => (Sealer::new(&secret), Opener::new(&secret)),
        Some(interval) => {
            let limits = RecordLimits::new().with_key_update_interval(u64::from(interval));
            // The opener accepts exactly as many records per key as the sealer sends.
            let opener_limits =
                RecordLimits::new().with_max_records_per_key(limits.key_update_interval());
            (
                Sealer::with_limits(&secret, limits),
                Opener::with_limits(&secret, opener_limits),
            )
        }
    };

    let mut wire = Vec::new();
    let mut sent = Vec::new();
    for step in plan.steps.iter().take(64) {
        if sent.len() >= MAX_SENT {
            break;
        }
        match step {
            Step::Seal(data) => {
                sealer.seal(data, &mut wire).expect("seal");
                sent.extend_from_slice(data);
            }
            Step::Large { len, byte } => {
                let data = vec![*byte; usize::from(*len)];
                sealer.seal(&data, &mut wire).expect("seal");
                sent.extend_from_slice(&data);
            }
            Step::SealInPlace(data) => {
                let mut slot = vec![0u8; data.len() + OVERHEAD];
                slot[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
                if data.is_empty() || data.len() > MAX_DATA_LEN {
                    let refused = sealer.seal_in_place(&mut slot, data.len());
                    assert_eq!(refused, Err(RecordError::BadLength(data.len())));
                    continue;
                }
                if sealer.needs_key_update() {
                    sealer.seal_key_update(&mut wire).expect("seal_key_update");
                }
                let len = sealer
                    .seal_in_place(&mut slot, data.len())
                    .expect("seal_in_place");
                assert_eq!(len, data.len() + OVERHEAD);
                wire.extend_from_slice(&slot[..len]);
                sent.extend_from_slice(data);
            }
            Step::KeyUpdate => sealer.seal_key_update(&mut wire).expect("seal_key_update"),
        }
        if plan.release_keys {
            sealer.release_key();
        }
    }
    if plan.close {
        sealer
            .seal_close_notify(&mut wire)
            .expect("seal_close_notify");
    }

    let touched = match plan.flip {
        Some((index, bit)) if !wire.is_empty() => {
            let at = index as usize % wire.len();
            wire[at] ^= 1 << (bit % 8);
            Some(at)
        }
        _ => None,
    };

    let (received, end) = walk(&mut opener, &mut wire, plan.release_keys);
    assert!(
        sent.starts_with(&received.data),
        "opened data that was never sent (touched at {touched:?}, {end:?})"
    );
    match touched {
        None => {
            assert_eq!(end, End::Clean, "an untouched stream failed to open");
            assert_eq!(received.data.len(), sent.len(), "data missing");
            assert_eq!(received.close_notify, plan.close);
            assert_eq!(opener.is_closed(), plan.close);
        }
        Some(at) => {
            assert_ne!(end, End::Clean, "a bit flipped at byte {at} went unnoticed");
        }
    }
}
