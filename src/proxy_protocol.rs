//! The PROXY protocol (haproxy's v1 text and v2 binary headers), both ways: a
//! [`crate::GatedListener`] reads one from trusted load balancers before the CHALLENGE, and a
//! proxy in front of an upstream writes one after admission, carrying the authenticated key id.
//!
//! Parsing and encoding are `proxy-header`'s; this module adds what that crate leaves out:
//! reading with exact reads (so no application byte is consumed and the stream stays a bare
//! socket), the v1 line limit (107 bytes), a cap on the v2 length, a strict walk over the v2 TLVs,
//! and the v2 CRC32C check when a header carries one.
//!
//! ```
//! use linkgate::proxy_protocol::{self, Received, Version};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let source = "192.0.2.10:51234".parse().unwrap();
//! let gate = "198.51.100.1:7700".parse().unwrap();
//! let header = proxy_protocol::encode(Version::V2, Some((source, gate)), &[]).unwrap();
//! let mut wire = &header[..];
//! let received = proxy_protocol::read_header(&mut wire).await.unwrap();
//! assert_eq!(received, Received::Proxied { source, destination: gate });
//! # }
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use proxy_header::{ParseConfig, ProxiedAddress, ProxyHeader, Tlv};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted: 16 fixed bytes and up to 2048 bytes of addresses and TLVs
/// (haproxy sends far less).
pub const V2_MAX_LEN: usize = 16 + 2048;
/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// TLV type (in the application-specific range 0xE0..=0xEF) for the authenticated key id, in
/// ASCII.
pub const TLV_KEY_ID: u8 = 0xE0;
/// `PP2_TYPE_UNIQUE_ID`: the gate's connection id.
pub const TLV_UNIQUE_ID: u8 = 0x05;
/// `PP2_TYPE_AUTHORITY`.
pub const TLV_AUTHORITY: u8 = 0x02;
const TLV_CRC32C: u8 = 0x03;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`): reading this many bytes first
/// never takes a byte past a header.
const MIN_HEADER_LEN: usize = 15;

/// Which PROXY protocol version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text header.
    V1,
    /// The binary header, with TLVs.
    V2,
}

impl FromStr for Version {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "v1" | "1" => Ok(Self::V1),
            "v2" | "2" => Ok(Self::V2),
            _ => Err(format!(
                "{text:?} is not a PROXY protocol version (use v1 or v2)"
            )),
        }
    }
}

/// What a PROXY protocol header said.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// The balancer relays a client: the real source and the address it connected to.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to (on the balancer).
        destination: SocketAddr,
    },
    /// A v2 LOCAL header: the balancer's own connection, such as a health check.
    Local,
    /// A relayed connection whose addresses the balancer did not know (`PROXY UNKNOWN`, or v2
    /// with an unspecified or Unix family): use the connection's own endpoints.
    Unknown,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(String);

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeaderError {}

fn bad(reason: impl Into<String>) -> HeaderError {
    HeaderError(reason.into())
}

/// Reads exactly one header from `stream` (no byte more) and parses it. The caller bounds the
/// time it may take.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Received, HeaderError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    read_more(stream, &mut buf, MIN_HEADER_LEN).await?;
    if buf.starts_with(b"PROXY ") {
        // v1: read until LF, never more than the line could still need.
        while buf.last() != Some(&b'\n') {
            if buf.len() >= V1_MAX_LEN {
                return Err(bad("a v1 header longer than 107 bytes"));
            }
            let need = v1_min_remaining(&buf).clamp(1, V1_MAX_LEN - buf.len());
            read_more(stream, &mut buf, need).await?;
        }
    } else if V2_SIGNATURE.starts_with(&buf[..12.min(buf.len())]) {
        read_more(stream, &mut buf, 1).await?;
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > V2_MAX_LEN {
            return Err(bad(format!(
                "a v2 header of {len} bytes (more than {V2_MAX_LEN})"
            )));
        }
        let rest = len - buf.len();
        read_more(stream, &mut buf, rest).await?;
    } else {
        return Err(bad(
            "no PROXY protocol header (the connection did not start with one)",
        ));
    }
    parse(&buf)
}

/// Reads exactly `n` more bytes onto `buf`.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<(), HeaderError> {
    let start = buf.len();
    buf.resize(start + n, 0);
    stream.read_exact(&mut buf[start..]).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            bad("the connection ended inside the header")
        } else {
            bad(format!("reading the header failed: {err}"))
        }
    })?;
    Ok(())
}

/// The fewest bytes a v1 line that starts with `so_far` can still need: one per field still to
/// come, the spaces between them, and the CRLF. Lets the reader take several bytes per read
/// without ever reading past the line.
fn v1_min_remaining(so_far: &[u8]) -> usize {
    // "PROXY" PROTO SRC DST SPORT DPORT, or "PROXY UNKNOWN ..." which may end at any field.
    let line = so_far.strip_suffix(b"\r").unwrap_or(so_far);
    if so_far.ends_with(b"\r") {
        return 1;
    }
    let spaces = line.iter().filter(|&&b| b == b' ').count();
    if spaces == 1 {
        // Still in the protocol field, which may yet be UNKNOWN (then CRLF may follow at once).
        let typed = &line[6..];
        if b"UNKNOWN".starts_with(typed) {
            return "UNKNOWN".len() - typed.len() + 2;
        }
    }
    let unknown = line.starts_with(b"PROXY UNKNOWN");
    if unknown || spaces >= 5 {
        return 2;
    }
    // Fields after the one being read, each at least one byte and a space before it.
    let fields_after = 5 - spaces;
    let current_empty = line.ends_with(b" ");
    2 * fields_after + usize::from(current_empty) + 2
}

/// Parses one complete header (exactly its bytes).
pub fn parse(bytes: &[u8]) -> Result<Received, HeaderError> {
    if bytes.starts_with(b"PROXY ") {
        // Exactly what `read_header` takes: up to the first LF, which must end the line.
        let first_lf = bytes.iter().position(|&b| b == b'\n');
        if bytes.len() > V1_MAX_LEN
            || !bytes.ends_with(b"\r\n")
            || first_lf != Some(bytes.len() - 1)
        {
            return Err(bad("a v1 header must end with CRLF within 107 bytes"));
        }
        // proxy-header is lenient about port spellings; the line's fields must be canonical.
        check_v1_fields(bytes)?;
    } else if bytes.starts_with(&V2_SIGNATURE) {
        check_v2(bytes)?;
    } else {
        return Err(bad("not a PROXY protocol header"));
    }
    let (header, used) = ProxyHeader::parse(bytes, ParseConfig::default())
        .map_err(|err| bad(format!("invalid header: {err:?}")))?;
    if used != bytes.len() {
        return Err(bad("bytes after the header's end"));
    }
    if bytes.starts_with(&V2_SIGNATURE) && bytes[12] & 0x0f == 0 {
        return Ok(Received::Local);
    }
    Ok(match header.proxied_address() {
        Some(address) => Received::Proxied {
            source: address.source,
            destination: address.destination,
        },
        None => Received::Unknown,
    })
}

fn check_v1_fields(line: &[u8]) -> Result<(), HeaderError> {
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| bad("a v1 header that is not text"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    if fields.get(1) == Some(&"UNKNOWN") {
        return Ok(());
    }
    if fields.len() != 6 {
        return Err(bad("a v1 header needs 6 fields"));
    }
    for port in &fields[4..] {
        let canonical = port.parse::<u16>().is_ok_and(|p| p.to_string() == *port);
        if !canonical {
            return Err(bad(format!("{port:?} is not a port number")));
        }
    }
    Ok(())
}

/// The v2 checks proxy-header leaves out: a strict TLV walk, and the CRC32C if one is there.
fn check_v2(header: &[u8]) -> Result<(), HeaderError> {
    if header.len() > V2_MAX_LEN {
        return Err(bad(format!(
            "a v2 header of {} bytes (more than {V2_MAX_LEN})",
            header.len()
        )));
    }
    if header.len() < 16
        || header.len() != 16 + usize::from(u16::from_be_bytes([header[14], header[15]]))
    {
        return Err(bad("a v2 header whose length does not match"));
    }
    let addresses = match header[13] >> 4 {
        0x0 => 0,
        0x1 => 12,
        0x2 => 36,
        0x3 => 216,
        _ => return Err(bad("a v2 header with an unknown address family")),
    };
    let local = header[12] & 0x0f == 0;
    if !local && header.len() < 16 + addresses {
        return Err(bad("a v2 header too short for its addresses"));
    }
    let mut pos = (16 + addresses).min(header.len());
    let mut crc_at = None;
    while pos < header.len() {
        let (kind, rest) = (header[pos], &header[pos + 1..]);
        let [hi, lo, ..] = *rest else {
            return Err(bad("a v2 TLV cut short"));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value = pos + 3;
        if value + len > header.len() {
            return Err(bad("a v2 TLV runs past the header"));
        }
        if kind == TLV_CRC32C {
            if len != 4 || crc_at.is_some() {
                return Err(bad("a v2 CRC32C TLV that is not one 4-byte value"));
            }
            crc_at = Some(value);
        }
        pos = value + len;
    }
    if let Some(at) = crc_at {
        let stated =
            u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let mut zeroed = header.to_vec();
        zeroed[at..at + 4].fill(0);
        if crc32c(&zeroed) != stated {
            return Err(bad("a v2 header whose CRC32C does not match"));
        }
    }
    Ok(())
}

fn crc32c(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(bytes)
}

/// The TLVs of a header a gate sends upstream.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Tlvs<'a> {
    /// The authenticated key id (TLV 0xE0, and `PP2_TYPE_AUTHORITY` if `key_id_as_authority`).
    pub key_id: Option<&'a str>,
    /// The connection id (`PP2_TYPE_UNIQUE_ID`).
    pub unique_id: Option<&'a str>,
    /// Also put the key id in `PP2_TYPE_AUTHORITY` (haproxy before 2.9 reads only that one).
    pub key_id_as_authority: bool,
}

impl<'a> Tlvs<'a> {
    /// TLVs carrying `key_id` and `unique_id`.
    pub fn new(key_id: &'a str, unique_id: &'a str, key_id_as_authority: bool) -> Self {
        Self {
            key_id: Some(key_id),
            unique_id: Some(unique_id),
            key_id_as_authority,
        }
    }
}

/// Encodes a header: `addresses` is (source, destination), or `None` for a connection whose
/// addresses are not IP ones (v1 `UNKNOWN`, v2 `LOCAL`). Mixed families are sent as IPv6 (IPv4
/// addresses mapped). v2 headers carry the TLVs and a CRC32C; v1 has no TLVs.
pub fn encode(
    version: Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: &[Tlvs<'_>],
) -> Result<Vec<u8>, HeaderError> {
    let address = addresses.map(|(source, destination)| {
        let (source, destination) = same_family(source, destination);
        ProxiedAddress::stream(source, destination)
    });
    let mut out = Vec::with_capacity(64);
    match version {
        Version::V1 => {
            let header = match address {
                Some(address) => ProxyHeader::with_address(address),
                None => ProxyHeader::with_local(),
            };
            header
                .encode_v1(&mut out)
                .map_err(|err| bad(format!("cannot encode: {err:?}")))?;
        }
        Version::V2 => {
            let mut list = vec![Tlv::Crc32c(0)];
            for tlv in tlvs {
                if let Some(key_id) = tlv.key_id {
                    list.push(Tlv::Custom(TLV_KEY_ID, key_id.as_bytes().into()));
                    if tlv.key_id_as_authority {
                        list.push(Tlv::Authority(key_id.into()));
                    }
                }
                if let Some(id) = tlv.unique_id {
                    list.push(Tlv::UniqueId(id.as_bytes().into()));
                }
            }
            ProxyHeader::with_tlvs(address, list)
                .encode_v2(&mut out)
                .map_err(|err| bad(format!("cannot encode: {err:?}")))?;
            // The CRC32C TLV comes first after the addresses, with its value zeroed.
            let addresses = match out[13] >> 4 {
                0x1 => 12,
                0x2 => 36,
                _ => 0,
            };
            let at = 16 + addresses + 3;
            let crc = crc32c(&out);
            out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        }
    }
    Ok(out)
}

/// Both addresses in one family: IPv4 pairs stay IPv4, anything mixed becomes IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The key id a v2 header carries in TLV 0xE0, if any (for tests and upstreams in Rust).
pub fn key_id_of(header: &[u8]) -> Option<String> {
    let (parsed, _) = ProxyHeader::parse(header, ParseConfig::default()).ok()?;
    parsed.tlvs().find_map(|tlv| match tlv {
        Ok(Tlv::Custom(TLV_KEY_ID, value)) => String::from_utf8(value.into_owned()).ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
