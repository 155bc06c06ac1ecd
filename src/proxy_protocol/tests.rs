use super::*;

/// Reads a header from `wire` and returns it with the bytes left unread.
async fn read_from(wire: &[u8]) -> (Result<Received, HeaderError>, Vec<u8>) {
    let mut rest = wire;
    let received = read_header(&mut rest).await;
    (received, rest.to_vec())
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn v1_lines_are_read_exactly_and_nothing_after_them() {
    for (line, expected) in [
        (
            "PROXY TCP4 192.0.2.10 198.51.100.1 51234 443\r\n",
            Received::Proxied {
                source: addr("192.0.2.10:51234"),
                destination: addr("198.51.100.1:443"),
            },
        ),
        (
            "PROXY TCP4 1.1.1.1 1.1.1.1 0 0\r\n",
            Received::Proxied {
                source: addr("1.1.1.1:0"),
                destination: addr("1.1.1.1:0"),
            },
        ),
        (
            "PROXY TCP6 2001:db8::1 2001:db8::2 51234 443\r\n",
            Received::Proxied {
                source: addr("[2001:db8::1]:51234"),
                destination: addr("[2001:db8::2]:443"),
            },
        ),
        (
            "PROXY TCP6 :: :: 0 0\r\n",
            Received::Proxied {
                source: addr("[::]:0"),
                destination: addr("[::]:0"),
            },
        ),
        ("PROXY UNKNOWN\r\n", Received::Unknown),
        ("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", Received::Unknown),
    ] {
        let mut wire = line.as_bytes().to_vec();
        wire.extend_from_slice(b"\x02\x05alice and the rest");
        let (received, rest) = read_from(&wire).await;
        assert_eq!(received, Ok(expected), "{line:?}");
        assert_eq!(
            rest, b"\x02\x05alice and the rest",
            "{line:?}: the RESPONSE is left alone"
        );
    }
}

#[tokio::test]
async fn v2_headers_round_trip_with_their_tlvs() {
    let (source, gate) = (addr("192.0.2.10:51234"), addr("198.51.100.1:7700"));
    let tlvs = Tlvs::new("alice", "0123456789abcdef", true);
    let header = encode(Version::V2, Some((source, gate)), &[tlvs]).unwrap();
    assert_eq!(&header[..12], &V2_SIGNATURE);
    let mut wire = header.clone();
    wire.extend_from_slice(b"after");
    let (received, rest) = read_from(&wire).await;
    assert_eq!(
        received,
        Ok(Received::Proxied {
            source,
            destination: gate
        })
    );
    assert_eq!(rest, b"after");
    assert_eq!(key_id_of(&header).as_deref(), Some("alice"));
    let (parsed, _) = ProxyHeader::parse(&header, ParseConfig::default()).unwrap();
    assert_eq!(parsed.unique_id(), Some(&b"0123456789abcdef"[..]));
    assert_eq!(parsed.authority(), Some("alice"));

    // Mixed families go out as IPv6.
    let header = encode(Version::V2, Some((addr("[2001:db8::5]:1"), gate)), &[]).unwrap();
    let (received, _) = read_from(&header).await;
    assert_eq!(
        received,
        Ok(Received::Proxied {
            source: addr("[2001:db8::5]:1"),
            destination: addr("[::ffff:198.51.100.1]:7700")
        })
    );
    // v1 has no TLVs, and unknown addresses go out as UNKNOWN / LOCAL.
    assert_eq!(
        encode(Version::V1, Some((source, gate)), &[tlvs]).unwrap(),
        b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 7700\r\n"
    );
    assert_eq!(
        encode(Version::V1, None, &[]).unwrap(),
        b"PROXY UNKNOWN\r\n"
    );
    let local = encode(Version::V2, None, &[tlvs]).unwrap();
    assert_eq!(read_from(&local).await.0, Ok(Received::Local));
}

#[tokio::test]
async fn a_v2_local_header_is_a_health_check() {
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    assert_eq!(read_from(local).await.0, Ok(Received::Local));
}

#[tokio::test]
async fn bad_headers_are_refused_with_a_reason() {
    let (source, gate) = (addr("192.0.2.10:51234"), addr("198.51.100.1:7700"));
    let good = encode(
        Version::V2,
        Some((source, gate)),
        &[Tlvs::new("alice", "1", false)],
    )
    .unwrap();
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let mut huge = V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let long_line = format!("PROXY TCP4 1.1.1.1 1.1.1.1 1 2{}\r\n", " ".repeat(100));
    for (wire, why) in [
        (bad_crc, "CRC32C does not match"),
        (huge, "more than"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "no PROXY protocol header",
        ),
        (b"PROXY TCP4 1.2.3.4".to_vec(), "ended inside the header"),
        (long_line.into_bytes(), "107"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 0080 443\r\n".to_vec(),
            "not a port number",
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n ".to_vec(), ""),
        (b"PROXY TCP4 ::1 ::1 80 443\r\n".to_vec(), "invalid"),
    ] {
        let (received, _) = read_from(&wire).await;
        let err = received.expect_err(&format!(
            "{:?} should be refused",
            String::from_utf8_lossy(&wire)
        ));
        assert!(
            err.to_string().contains(why),
            "{err} for {:?}",
            String::from_utf8_lossy(&wire)
        );
    }
}

#[test]
fn the_v1_lower_bound_never_passes_the_line() {
    // For every prefix of valid lines, the bound is at most what is left.
    for line in [
        "PROXY TCP4 192.0.2.10 198.51.100.1 51234 443\r\n",
        "PROXY TCP4 1.1.1.1 1.1.1.1 0 0\r\n",
        "PROXY TCP6 :: :: 0 0\r\n",
        "PROXY UNKNOWN\r\n",
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    ] {
        for cut in 6..line.len() {
            let bound = v1_min_remaining(&line.as_bytes()[..cut]);
            assert!(
                bound <= line.len() - cut,
                "{line:?} cut at {cut}: bound {bound}"
            );
        }
    }
}

proptest::proptest! {
    /// Arbitrary bytes never panic the reader and end in a refusal.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (received, _) = runtime.block_on(read_from(&bytes));
        proptest::prop_assert!(received.is_err(), "{:?}", received);
    }

    /// Arbitrary bytes after a valid signature: still never a panic.
    #[test]
    fn arbitrary_v2_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut wire = V2_SIGNATURE.to_vec();
        wire.extend_from_slice(&body);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _ = runtime.block_on(read_from(&wire));
        let _ = parse(&wire);
    }
}

#[test]
fn parse_refuses_what_read_header_would_never_return() {
    // An LF inside a v1 line ends it for read_header, so parse must not accept it as one line.
    assert!(parse(b"PROXY UNKNOWN \nmore\r\n").is_err());
    assert!(parse(b"PROXY UNKNOWN\r\n").is_ok());
    // A v2 header over the limit read_header enforces.
    let mut huge = V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x20, 0x00, 0xff, 0xff]);
    huge.resize(16 + 0xffff, 0);
    let err = parse(&huge).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
}
