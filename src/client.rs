//! The client half: [`authenticate`] a stream, or [`connect`] and authenticate in one call.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::Instant;

use crate::admitted::{Admission, Admitted, ConnectionId};
use crate::error::{Error, Rejection, Result, Timeout, Waiting};
use crate::gate::read_exact_or_closed;
use crate::keys::{Key, KeyId, fill_random};
use crate::mode::Mode;
use crate::protocol::seed::SeedDigest;
use crate::protocol::{self, CHALLENGE_LEN, ClientHello, Protocol};
use crate::record::RecordLimits;
use crate::sealed::{SealedState, Side};

/// What a client presents and asks for: a key, the id to present it under, the mode, and how
/// long to wait. The `TlsConnector` of linkgate: build once, use for every connection.
///
/// ```
/// use std::time::Duration;
/// use linkgate::{Credentials, Key, KeyId, Mode};
/// let key = Key::generate(KeyId::new("alice")?)?;
/// let credentials = Credentials::new(key)
///     .with_mode(Mode::Sealed)
///     .with_timeout(Duration::from_secs(2));
/// assert_eq!(credentials.mode(), Mode::Sealed);
/// assert_eq!(credentials.key_id().as_str(), "alice");
/// # Ok::<_, linkgate::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Credentials {
    key: Key,
    timeout: Duration,
    protocol: Protocol,
    mode: Mode,
    record_limits: RecordLimits,
}

impl Credentials {
    /// Presents `key` under its own id, asks for [`Mode::SealedFs`], with a 5 s timeout.
    pub fn new(key: Key) -> Self {
        Self {
            key,
            timeout: Duration::from_secs(5),
            protocol: Protocol::Linkgate1,
            mode: Mode::default(),
            record_limits: RecordLimits::default(),
        }
    }

    /// Presents the key under another id than its own (e.g. not its file's stem).
    pub fn with_id(mut self, id: KeyId) -> Self {
        self.key = self.key.with_id(id);
        self
    }

    /// The key presented (for the impostor probe, which builds handshakes by hand).
    #[cfg(feature = "testing")]
    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    /// The id presented to the server.
    pub fn key_id(&self) -> &KeyId {
        self.key.id()
    }

    /// How long the whole handshake (and, for [`connect`], the TCP connect) may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The mode to ask for (default [`Mode::SealedFs`]). The client never accepts a session in
    /// another mode: the mode byte is covered by both proofs.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The mode asked for ([`Mode::Plain`] under the seed protocol, which has no other).
    pub fn mode(&self) -> Mode {
        if self.protocol.is_seed() {
            Mode::Plain
        } else {
            self.mode
        }
    }

    /// Which handshake to speak (default linkgate/1).
    ///
    /// With [`Protocol::Seed`] (the original recipe, for compatibility) [`authenticate`] returns
    /// as soon as the answer is sent, in plain mode: the protocol has no verdict, no server
    /// proof and no sealing, so a wrong key only shows as the server closing the connection, and
    /// any server can pose as the real one.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Lower record limits, for tests that exercise key updates.
    pub fn with_record_limits(mut self, limits: RecordLimits) -> Self {
        self.record_limits = limits;
        self
    }
}

/// Runs the client half of the handshake over `stream` and hands back the admitted stream,
/// sealed in the mode asked for.
///
/// Succeeds only once the server has proved that it holds the same key; a server that admits
/// without a valid proof is reported as [`Rejection::ImpostorServer`].
pub async fn authenticate<IO>(stream: IO, credentials: &Credentials) -> Result<Admitted<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = crate::deadline::deadline_after(credentials.timeout);
    authenticate_until(stream, credentials, deadline).await
}

async fn authenticate_until<IO>(
    mut stream: IO,
    credentials: &Credentials,
    deadline: Instant,
) -> Result<Admitted<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let secrets = match credentials.protocol.seed_digest() {
        Some(digest) => {
            let answered = seed_handshake(&mut stream, &credentials.key, digest);
            within(deadline, credentials, Waiting::Challenge, answered).await?;
            None
        }
        None => handshake(&mut stream, credentials, deadline).await?,
    };
    let sealed =
        secrets.map(|secrets| SealedState::new(&secrets, Side::Client, credentials.record_limits));
    let admission = Admission::new(
        credentials.key_id().clone(),
        credentials.mode(),
        ConnectionId::next(),
    );
    Ok(Admitted::new(stream, sealed, admission))
}

/// Connects over TCP and authenticates; the timeout covers both.
///
/// ```no_run
/// # async fn run() -> Result<(), linkgate::Error> {
/// use tokio::io::AsyncWriteExt;
/// let credentials = linkgate::Credentials::new(linkgate::Key::from_file("alice.key")?);
/// let mut stream = linkgate::connect("gate.example:7700", &credentials).await?;
/// stream.write_all(b"PING\r\n").await?; // sealed with forward secrecy by default
/// # Ok(()) }
/// ```
pub async fn connect(
    addr: impl ToSocketAddrs,
    credentials: &Credentials,
) -> Result<Admitted<TcpStream>> {
    let deadline = crate::deadline::deadline_after(credentials.timeout);
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| Timeout::new(credentials.timeout, Waiting::Connect))??;
    // Authentication is one round trip of small messages: don't let Nagle hold them back.
    stream.set_nodelay(true)?;
    let mut admitted = authenticate_until(stream, credentials, deadline).await?;
    if let Ok(addr) = admitted.get_ref().peer_addr() {
        let peer = Some(addr.into());
        let admission = admitted.admission_mut();
        *admission = admission.clone().with_peers(peer, None);
    }
    Ok(admitted)
}

async fn handshake<IO>(
    stream: &mut IO,
    credentials: &Credentials,
    deadline: Instant,
) -> Result<Option<protocol::SessionSecrets>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let key = &credentials.key;
    key.check_linkgate1_length()?;
    let challenge = within(
        deadline,
        credentials,
        Waiting::Challenge,
        read_challenge(stream),
    )
    .await?;
    let server_nonce = protocol::decode_challenge(&challenge)
        .ok_or_else(|| Rejection::NotLinkgate(describe_greeting(&challenge)))?;
    let mut client_nonce = [0u8; protocol::NONCE_LEN];
    fill_random(&mut client_nonce)?;
    let hello = ClientHello::new(
        key,
        key.id(),
        credentials.mode,
        &server_nonce,
        client_nonce,
        None,
    )?;
    let mut verdict = [0u8; protocol::ADMITTED_FS_LEN];
    let exchange = async {
        stream.write_all(&hello.response().encode()).await?;
        stream.flush().await?;
        read_verdict(stream, &mut verdict[..hello.admitted_verdict_len()]).await
    };
    let len = within(deadline, credentials, Waiting::Verdict, exchange).await?;
    Ok(hello.finish(&verdict[..len])?.into_secrets())
}

/// Runs one step of the handshake before the deadline; past it, a timeout that says what the
/// client was waiting for.
async fn within<T>(
    deadline: Instant,
    credentials: &Credentials,
    waiting: Waiting,
    step: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout_at(deadline, step)
        .await
        .map_err(|_| Timeout::new(credentials.timeout, waiting))?
}

/// Reads the VERDICT, usually in one system call: a refusing server sends one byte and
/// closes, an admitting one sends exactly the admitted VERDICT before any application byte, so
/// reading up to its length never takes application data. Returns how many bytes came.
async fn read_verdict<S>(stream: &mut S, verdict: &mut [u8]) -> Result<usize>
where
    S: AsyncRead + Unpin,
{
    let mut filled = 0;
    while filled < verdict.len() {
        let n = stream.read(&mut verdict[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Err(Error::ClosedEarly)
            } else {
                // A refusal byte, or an admission cut short (judged by `finish`).
                Ok(filled)
            };
        }
        filled += n;
        if verdict[0] != protocol::VERDICT_ADMITTED {
            return Ok(filled);
        }
    }
    Ok(filled)
}

/// The original recipe's client half: read 32 bytes, answer with their HMAC.
async fn seed_handshake<S>(stream: &mut S, key: &Key, digest: SeedDigest) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce = [0u8; protocol::seed::CHALLENGE_LEN];
    read_exact_or_closed(stream, &mut nonce).await?;
    // A random nonce starts with these 8 bytes once in 2^64 times; a linkgate/1 gate always.
    if nonce.starts_with(&protocol::MAGIC) {
        return Err(Rejection::SpeaksLinkgate1.into());
    }
    stream
        .write_all(protocol::seed::answer(digest, key, &nonce).as_ref())
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
                    Rejection::NotLinkgate(describe_greeting(&challenge[..filled])).into()
                },
            );
        }
        filled += n;
        if !protocol::greeting_matches_so_far(&challenge[..filled]) {
            return Err(Rejection::NotLinkgate(describe_greeting(&challenge[..filled])).into());
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
