//! The client SDK: [`authenticate`] a stream, or [`connect`] and authenticate in one call.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::error::{Error, Result};
use crate::keys::{Key, KeyId, fill_random};
use crate::protocol::{self, CHALLENGE_LEN, Protocol};
use crate::server::read_exact_or_closed;

/// What a client presents: a key, the id to present it under, and how long to wait.
#[derive(Clone, Debug)]
pub struct Credentials {
    key: Key,
    timeout: Duration,
    protocol: Protocol,
}

impl Credentials {
    /// Presents `key` under its own id, with a 5 s timeout.
    pub fn new(key: Key) -> Self {
        Credentials {
            key,
            timeout: Duration::from_secs(5),
            protocol: Protocol::Linkgate1,
        }
    }

    /// Presents the key under another id than its own (e.g. not its file's stem).
    pub fn with_id(mut self, id: KeyId) -> Self {
        self.key = self.key.with_id(id);
        self
    }

    /// How long the whole handshake (and, for [`connect`], the TCP connect) may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Which handshake to speak (default linkgate/1).
    ///
    /// With [`Protocol::Seed`] (the original recipe, for compatibility) [`authenticate`] returns
    /// as soon as the answer is sent: the protocol has no verdict and no server proof, so a
    /// wrong key only shows as the server closing the connection, and any server can pose as
    /// the real one.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The protocol in force.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The id presented to the server.
    pub fn key_id(&self) -> &KeyId {
        self.key.id()
    }

    /// The timeout in force.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Runs the client half of linkgate/1 over `stream` and hands the stream back ready for
/// application bytes.
///
/// Succeeds only once the server has proved that it holds the same key; a server that admits
/// without a valid proof is reported as [`Error::ImpostorServer`].
pub async fn authenticate<S>(mut stream: S, credentials: &Credentials) -> Result<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = credentials.timeout;
    let handshake = async {
        match credentials.protocol {
            Protocol::Linkgate1 => handshake(&mut stream, credentials).await,
            Protocol::Seed => seed_handshake(&mut stream, &credentials.key).await,
        }
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(Error::Timeout(timeout)),
    }
}

/// Connects over TCP and authenticates; the timeout covers both.
pub async fn connect(addr: impl ToSocketAddrs, credentials: &Credentials) -> Result<TcpStream> {
    let timeout = credentials.timeout;
    let started = tokio::time::Instant::now();
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Timeout(timeout))??;
    // Authentication is one round trip of small messages: don't let Nagle hold them back.
    stream.set_nodelay(true)?;
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, authenticate(stream, credentials)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(timeout)),
    }
}

async fn handshake<S>(stream: &mut S, credentials: &Credentials) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    credentials.key.check_linkgate1_length()?;
    let challenge = read_challenge(stream).await?;
    let server_nonce = protocol::decode_challenge(&challenge)
        .ok_or_else(|| Error::NotLinkgate(describe_greeting(&challenge)))?;
    let mut client_nonce = [0u8; protocol::NONCE_LEN];
    fill_random(&mut client_nonce)?;

    let key = &credentials.key;
    let response = protocol::respond(key, key.id(), &server_nonce, &client_nonce);
    stream.write_all(&response.encode()).await?;
    stream.flush().await?;

    let verdict = read_verdict(stream).await?;
    let server_proof = &verdict[1..];
    if protocol::verify_server_proof(key, key.id(), &server_nonce, &client_nonce, server_proof) {
        Ok(())
    } else {
        Err(Error::ImpostorServer)
    }
}

/// Reads the VERDICT, usually in one system call: a refusing server sends one byte and
/// closes, an admitting one sends exactly 33 bytes before any application byte, so reading up
/// to 33 bytes never takes application data.
async fn read_verdict<S>(stream: &mut S) -> Result<[u8; protocol::ADMITTED_LEN]>
where
    S: AsyncRead + Unpin,
{
    let mut verdict = [0u8; protocol::ADMITTED_LEN];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut verdict[filled..]).await?;
        if n == 0 {
            // An "admission" cut short of its proof is no better than a wrong one.
            return Err(match (filled, verdict[0]) {
                (0, _) => Error::ClosedEarly,
                (_, protocol::VERDICT_ADMITTED) => Error::ImpostorServer,
                _ => refusal(verdict[0]),
            });
        }
        filled += n;
        if verdict[0] != protocol::VERDICT_ADMITTED {
            return Err(refusal(verdict[0]));
        }
        if filled == protocol::ADMITTED_LEN {
            return Ok(verdict);
        }
    }
}

fn refusal(verdict: u8) -> Error {
    match verdict {
        protocol::VERDICT_DENIED => Error::Denied,
        protocol::VERDICT_MALFORMED => Error::RefusedAsMalformed,
        other => Error::MalformedVerdict(other),
    }
}

/// The original recipe's client half: read 32 bytes, answer with their HMAC.
async fn seed_handshake<S>(stream: &mut S, key: &Key) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce = [0u8; protocol::seed::CHALLENGE_LEN];
    read_exact_or_closed(stream, &mut nonce).await?;
    stream
        .write_all(&protocol::seed::answer(key, &nonce))
        .await?;
    stream.flush().await?;
    Ok(())
}

/// Reads the 40-byte CHALLENGE, giving up as soon as the greeting differs from `LGATE/1\n`, so a
/// server that speaks first with something else (SSH, SMTP, an HTTP response) is named at once
/// rather than after a timeout. Never reads past the CHALLENGE.
async fn read_challenge<S>(stream: &mut S) -> Result<[u8; CHALLENGE_LEN]>
where
    S: AsyncRead + Unpin,
{
    let mut challenge = [0u8; CHALLENGE_LEN];
    let mut filled = 0;
    while filled < CHALLENGE_LEN {
        let n = stream.read(&mut challenge[filled..]).await?;
        if n == 0 {
            return Err(
                if filled == 0 || protocol::greeting_matches_so_far(&challenge[..filled]) {
                    Error::ClosedEarly
                } else {
                    Error::NotLinkgate(describe_greeting(&challenge[..filled]))
                },
            );
        }
        filled += n;
        if !protocol::greeting_matches_so_far(&challenge[..filled]) {
            return Err(Error::NotLinkgate(describe_greeting(&challenge[..filled])));
        }
    }
    Ok(challenge)
}

/// What a non-linkgate server sent, for the error message: quoted text when it is printable
/// (an SSH or HTTP banner), otherwise a byte count.
fn describe_greeting(bytes: &[u8]) -> String {
    let text = bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n' | b'\t'));
    if text {
        format!("{:?}", String::from_utf8_lossy(bytes).trim_end())
    } else {
        format!("{} bytes that are not text", bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::describe_greeting;

    #[test]
    fn greetings_are_described_safely() {
        assert_eq!(
            describe_greeting(b"SSH-2.0-OpenSSH_9.2\r\n"),
            "\"SSH-2.0-OpenSSH_9.2\""
        );
        assert_eq!(
            describe_greeting(&[0xff, 0x00, 0x10]),
            "3 bytes that are not text"
        );
    }
}
