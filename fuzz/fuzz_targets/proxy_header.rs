//! The PROXY protocol header (haproxy's v1 text and v2 binary), both ways.
//!
//! - Raw: the input into `proxy_protocol::parse` (as one whole header) and into
//!   `proxy_protocol::read_header` (as a stream: a `&[u8]` reader, on a current-thread tokio
//!   runtime built once). Neither panics. When `read_header` succeeds, the bytes it consumed
//!   `parse` to the same value, and it never consumed more than the largest header. When the
//!   input starts with a complete header that `parse` accepts (v1: up to the first LF; v2: 16
//!   bytes plus its stated length, at most `V2_MAX_LEN`), `read_header` returns the same value
//!   and consumes exactly that header, however many bytes follow it.
//! - Round trip, from the same bytes read by `arbitrary`: `proxy_protocol::encode` of
//!   fuzzer-chosen addresses (IPv4, IPv6, mixed, or none) and TLV strings (at most 4 sets, each
//!   string at most 64 bytes) parses back to the same addresses (mixed families as IPv6, none as
//!   v1 `UNKNOWN` or v2 `LOCAL`), reads back from a stream with trailing bytes the same way, and
//!   a v2 header carries the first key id in TLV 0xE0 (`key_id_of`).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use linkgate::proxy_protocol::{
    self, HeaderError, Received, Tlvs, V1_MAX_LEN, V2_MAX_LEN, V2_SIGNATURE, Version,
};
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// `read_header` over `bytes`: the result and how many bytes it took from the stream.
fn read(bytes: &[u8]) -> (Result<Received, HeaderError>, usize) {
    let mut stream = bytes;
    let result = runtime().block_on(proxy_protocol::read_header(&mut stream));
    (result, bytes.len() - stream.len())
}

fuzz_target!(|data: &[u8]| {
    raw(data);
    if let Ok(input) = EncodeInput::arbitrary_take_rest(Unstructured::new(data)) {
        round_trip(&input);
    }
});

fn raw(data: &[u8]) {
    let _ = proxy_protocol::parse(data);
    let (read_result, consumed) = read(data);
    if let Ok(received) = &read_result {
        assert!(
            consumed <= V2_MAX_LEN.max(V1_MAX_LEN),
            "consumed {consumed}"
        );
        assert_eq!(
            proxy_protocol::parse(&data[..consumed]).as_ref(),
            Ok(received),
            "read_header accepted {consumed} bytes that parse refuses"
        );
    }

    // The header a reader that never over-reads must stop at.
    let header_end = if data.starts_with(b"PROXY ") {
        data.iter()
            .position(|&b| b == b'\n')
            .map(|lf| lf + 1)
            .filter(|&end| end <= V1_MAX_LEN)
    } else if data.starts_with(&V2_SIGNATURE) && data.len() >= 16 {
        Some(16 + usize::from(u16::from_be_bytes([data[14], data[15]])))
            .filter(|&end| end <= V2_MAX_LEN && end <= data.len())
    } else {
        None
    };
    if let Some(end) = header_end
        && let Ok(parsed) = proxy_protocol::parse(&data[..end])
    {
        assert_eq!(
            read_result.as_ref(),
            Ok(&parsed),
            "parse accepts the first {end} bytes, read_header does not agree"
        );
        assert_eq!(consumed, end, "read_header took bytes past the header");
    }
}

#[derive(Debug, Arbitrary)]
enum Address {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl Address {
    fn socket_addr(&self) -> SocketAddr {
        match *self {
            Self::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
            Self::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct TlvInput {
    key_id: Option<String>,
    unique_id: Option<String>,
    key_id_as_authority: bool,
}

#[derive(Debug, Arbitrary)]
struct EncodeInput {
    v2: bool,
    addresses: Option<(Address, Address)>,
    tlvs: Vec<TlvInput>,
    trailing: Vec<u8>,
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn round_trip(input: &EncodeInput) {
    const MAX_TLV_SETS: usize = 4;
    const MAX_STRING: usize = 64;
    let version = if input.v2 { Version::V2 } else { Version::V1 };
    let addresses = input
        .addresses
        .as_ref()
        .map(|(source, destination)| (source.socket_addr(), destination.socket_addr()));
    let tlvs: Vec<Tlvs<'_>> = input
        .tlvs
        .iter()
        .take(MAX_TLV_SETS)
        .map(|tlv| {
            let mut out = Tlvs::default();
            out.key_id = tlv.key_id.as_deref().map(|s| bounded(s, MAX_STRING));
            out.unique_id = tlv.unique_id.as_deref().map(|s| bounded(s, MAX_STRING));
            out.key_id_as_authority = tlv.key_id_as_authority;
            out
        })
        .collect();

    let header = proxy_protocol::encode(version, addresses, &tlvs)
        .unwrap_or_else(|err| panic!("encode refused {input:?}: {err}"));

    let expected = match (addresses, version) {
        (None, Version::V1) => Received::Unknown,
        (None, Version::V2) => Received::Local,
        (Some((source, destination)), _) if source.is_ipv4() == destination.is_ipv4() => {
            Received::Proxied {
                source,
                destination,
            }
        }
        // Mixed families travel as IPv6, IPv4 addresses mapped.
        (Some((source, destination)), _) => Received::Proxied {
            source: mapped(source),
            destination: mapped(destination),
        },
    };
    assert_eq!(
        proxy_protocol::parse(&header),
        Ok(expected.clone()),
        "{header:02x?}"
    );

    let mut stream = header.clone();
    stream.extend_from_slice(&input.trailing);
    let (read_result, consumed) = read(&stream);
    assert_eq!(read_result, Ok(expected), "{header:02x?}");
    assert_eq!(
        consumed,
        header.len(),
        "read_header took bytes past the header"
    );

    let first_key_id = match version {
        Version::V1 => None,
        Version::V2 => tlvs.iter().find_map(|tlv| tlv.key_id),
    };
    assert_eq!(
        proxy_protocol::key_id_of(&header).as_deref(),
        first_key_id,
        "{header:02x?}"
    );
}

fn mapped(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), address.port()),
        IpAddr::V6(_) => address,
    }
}
