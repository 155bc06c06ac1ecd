use super::*;

fn pair(limits: RecordLimits) -> (Sealer, Opener) {
    let secret = TrafficSecret::from_bytes_for_tests([0x42; 32]);
    (
        Sealer::with_limits(&secret, limits),
        Opener::with_limits(&secret, limits),
    )
}

/// Splits a byte stream into whole records.
fn records(mut wire: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let len = Opener::record_len(wire).unwrap().unwrap();
        out.push(wire[..len].to_vec());
        wire = &wire[len..];
    }
    out
}

/// Opens every record, collecting the data, and returns what each one was.
fn open_all(
    opener: &mut Opener,
    records: &mut [Vec<u8>],
) -> Result<(Vec<u8>, Vec<Opened>), RecordError> {
    let mut data = Vec::new();
    let mut kinds = Vec::new();
    for record in records {
        let opened = opener.open_in_place(record)?;
        if let Opened::Data(range) = &opened {
            data.extend_from_slice(&record[range.clone()]);
        }
        kinds.push(opened);
    }
    Ok((data, kinds))
}

#[test]
fn round_trip_splits_at_16384_and_ends_with_close_notify() {
    let (mut sealer, mut opener) = pair(RecordLimits::new());
    let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut wire = Vec::new();
    sealer.seal(&data, &mut wire).unwrap();
    sealer.seal_close_notify(&mut wire).unwrap();
    let mut recs = records(&wire);
    assert_eq!(recs.len(), 4, "16384 + 16384 + 7232, then close_notify");
    assert_eq!(recs[0].len(), MAX_RECORD_LEN);
    assert_eq!(&recs[0][..3], &[0x17, 0x03, 0x03]);
    let (got, kinds) = open_all(&mut opener, &mut recs).unwrap();
    assert_eq!(got, data);
    assert_eq!(kinds.last(), Some(&Opened::CloseNotify));
    assert!(opener.is_closed());
}

#[test]
fn seal_in_place_matches_seal() {
    let secret = TrafficSecret::from_bytes_for_tests([9; 32]);
    let (mut a, mut b) = (Sealer::new(&secret), Sealer::new(&secret));
    let mut appended = Vec::new();
    a.seal(b"hello", &mut appended).unwrap();
    let mut slot = vec![0u8; 5 + OVERHEAD + 10];
    slot[HEADER_LEN..HEADER_LEN + 5].copy_from_slice(b"hello");
    let len = b.seal_in_place(&mut slot, 5).unwrap();
    assert_eq!(&slot[..len], &appended[..]);
    assert_eq!(
        b.seal_in_place(&mut slot, 0),
        Err(RecordError::BadLength(0))
    );
    assert_eq!(
        b.seal_in_place(&mut slot, 20),
        Err(RecordError::BadLength(20)),
        "slot too small"
    );
}

#[test]
fn a_flipped_bit_anywhere_is_refused() {
    let (mut sealer, _) = pair(RecordLimits::new());
    let mut wire = Vec::new();
    sealer.seal(b"attack at dawn", &mut wire).unwrap();
    for i in 0..wire.len() {
        for bit in [0x01u8, 0x80] {
            let secret = TrafficSecret::from_bytes_for_tests([0x42; 32]);
            let mut opener = Opener::new(&secret);
            let mut tampered = wire.clone();
            tampered[i] ^= bit;
            let result = match Opener::record_len(&tampered) {
                Ok(Some(len)) if len == tampered.len() => opener.open_in_place(&mut tampered),
                Ok(_) => Err(RecordError::BadLength(0)),
                Err(err) => Err(err),
            };
            assert!(result.is_err(), "byte {i} bit {bit:#x} went unnoticed");
        }
    }
}

#[test]
fn reordered_dropped_and_replayed_records_are_refused() {
    let (mut sealer, _) = pair(RecordLimits::new());
    let mut wire = Vec::new();
    for word in [&b"one"[..], b"two", b"three"] {
        sealer.seal(word, &mut wire).unwrap();
    }
    let recs = records(&wire);
    let fresh = || Opener::new(&TrafficSecret::from_bytes_for_tests([0x42; 32]));

    let mut swapped = vec![recs[1].clone(), recs[0].clone()];
    assert_eq!(
        open_all(&mut fresh(), &mut swapped),
        Err(RecordError::BadTag)
    );
    let mut dropped = vec![recs[0].clone(), recs[2].clone()];
    assert_eq!(
        open_all(&mut fresh(), &mut dropped),
        Err(RecordError::BadTag)
    );
    let mut replayed = vec![recs[0].clone(), recs[0].clone()];
    assert_eq!(
        open_all(&mut fresh(), &mut replayed),
        Err(RecordError::BadTag)
    );
}

#[test]
fn key_updates_every_four_records_and_the_receiver_follows() {
    let limits = RecordLimits::new().with_key_update_interval(4);
    let (mut sealer, mut opener) = pair(limits);
    let data = vec![0xab; 20 * MAX_DATA_LEN];
    let mut wire = Vec::new();
    sealer.seal(&data, &mut wire).unwrap();
    sealer.seal_close_notify(&mut wire).unwrap();
    let mut recs = records(&wire);
    let (got, kinds) = open_all(&mut opener, &mut recs).unwrap();
    assert_eq!(got, data);
    let updates = kinds.iter().filter(|k| **k == Opened::KeyUpdate).count();
    // 20 data records, 3 per key plus the KeyUpdate: updates after records 3, 6, …, 18.
    assert_eq!(updates, 6, "{kinds:?}");
    // Every 4th record under a key is the KeyUpdate.
    for (i, kind) in kinds.iter().enumerate() {
        assert_eq!(
            *kind == Opened::KeyUpdate,
            i % 4 == 3,
            "record {i}: {kind:?}"
        );
    }
}

#[test]
fn a_receiver_refuses_too_many_records_under_one_key() {
    let secret = TrafficSecret::from_bytes_for_tests([1; 32]);
    let mut sealer = Sealer::new(&secret);
    let mut opener = Opener::with_limits(&secret, RecordLimits::new().with_max_records_per_key(3));
    let mut wire = Vec::new();
    for _ in 0..4 {
        sealer.seal(b"x", &mut wire).unwrap();
    }
    let mut recs = records(&wire);
    for record in &mut recs[..3] {
        assert!(matches!(opener.open_in_place(record), Ok(Opened::Data(_))));
    }
    assert_eq!(
        opener.open_in_place(&mut recs[3]),
        Err(RecordError::TooManyRecords)
    );
}

#[test]
fn headers_and_lengths_are_checked_before_the_body() {
    assert_eq!(Opener::record_len(&[0x17, 0x03]), Ok(None));
    assert_eq!(
        Opener::record_len(&[0x16, 0x03, 0x03, 0x00, 0x20]),
        Err(RecordError::BadHeader)
    );
    assert_eq!(
        Opener::record_len(&[0x17, 0x03, 0x01, 0x00, 0x20]),
        Err(RecordError::BadHeader)
    );
    assert_eq!(
        Opener::record_len(&[0x17, 0x03, 0x03, 0x40, 0x12]),
        Err(RecordError::BadLength(16402))
    );
    assert_eq!(
        Opener::record_len(&[0x17, 0x03, 0x03, 0x00, 0x10]),
        Err(RecordError::BadLength(16))
    );
    assert_eq!(
        Opener::record_len(&[0x17, 0x03, 0x03, 0x40, 0x11]),
        Ok(Some(MAX_RECORD_LEN))
    );
}

#[test]
fn anything_after_close_notify_is_refused() {
    let (mut sealer, mut opener) = pair(RecordLimits::new());
    let mut wire = Vec::new();
    sealer.seal_close_notify(&mut wire).unwrap();
    sealer.seal(b"late", &mut wire).unwrap();
    let mut recs = records(&wire);
    assert_eq!(opener.open_in_place(&mut recs[0]), Ok(Opened::CloseNotify));
    assert_eq!(
        opener.open_in_place(&mut recs[1]),
        Err(RecordError::DataAfterClose)
    );
}

#[test]
fn only_the_allowed_messages_are_accepted() {
    // Records the sealer never makes: empty data, another alert, KeyUpdate asking for an
    // update, an unknown type, and a padded one (TLS 1.3 padding is not allowed here).
    for (body, content_type) in [
        (&b""[..], TYPE_APPLICATION_DATA),
        (&[0x02, 0x28], TYPE_ALERT),
        (&[0x18, 0x00, 0x00, 0x01, 0x01], TYPE_HANDSHAKE),
        (&b"hi"[..], 0x18),
        (&b"hi\x17"[..], 0x00),
    ] {
        let (mut sealer, mut opener) = pair(RecordLimits::new());
        let mut wire = Vec::new();
        sealer.append(body, content_type, &mut wire).unwrap();
        assert_eq!(
            opener.open_in_place(&mut wire),
            Err(RecordError::UnexpectedMessage),
            "{body:?} {content_type:#x}"
        );
    }
}

#[test]
fn released_keys_are_rebuilt_transparently() {
    let (mut sealer, mut opener) = pair(RecordLimits::new());
    let mut wire = Vec::new();
    sealer.seal(b"a", &mut wire).unwrap();
    sealer.release_key();
    sealer.seal(b"b", &mut wire).unwrap();
    let mut recs = records(&wire);
    assert!(matches!(
        opener.open_in_place(&mut recs[0]),
        Ok(Opened::Data(_))
    ));
    opener.release_key();
    assert!(matches!(
        opener.open_in_place(&mut recs[1]),
        Ok(Opened::Data(_))
    ));
}

#[test]
fn debug_shows_no_secret() {
    let secret = TrafficSecret::from_bytes_for_tests([0x42; 32]);
    assert_eq!(format!("{secret:?}"), "TrafficSecret(..)");
    let shown = format!("{:?} {:?}", Sealer::new(&secret), Opener::new(&secret));
    assert!(!shown.contains("42") && !shown.contains("66"), "{shown}");
}

proptest::proptest! {
    /// Arbitrary bytes never panic the opener and never come out as data.
    #[test]
    fn arbitrary_records_are_refused(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let mut opener = Opener::new(&TrafficSecret::from_bytes_for_tests([3; 32]));
        proptest::prop_assert!(opener.open_in_place(&mut bytes).is_err());
    }
}

proptest::proptest! {
    /// Gathering pieces seals exactly what sealing their concatenation does (same records, same
    /// key updates), up to the limit, whatever the split.
    #[test]
    fn seal_gathered_matches_seal_of_the_joined_bytes(
        sizes in proptest::collection::vec(0usize..40_000, 0..6),
        limit in 0usize..120_000,
    ) {
        let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| i as u8).collect();
        let mut pieces = Vec::new();
        let mut at = 0;
        for size in &sizes {
            pieces.push(&data[at..at + size]);
            at += size;
        }
        let limits = RecordLimits::new().with_key_update_interval(3);
        let (mut gathered_sealer, mut opener) = pair(limits);
        let (mut joined_sealer, _) = pair(limits);
        let mut gathered = Vec::new();
        let taken = gathered_sealer.seal_gathered(&pieces, limit, &mut gathered).unwrap();
        proptest::prop_assert_eq!(taken, data.len().min(limit));
        let mut joined = Vec::new();
        joined_sealer.seal(&data[..taken], &mut joined).unwrap();
        proptest::prop_assert_eq!(&gathered, &joined);
        let (opened, _) = open_all(&mut opener, &mut records(&gathered)).unwrap();
        proptest::prop_assert_eq!(&opened[..], &data[..taken]);
    }
}
