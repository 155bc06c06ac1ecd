//! The server half: [`Gate`] admits or refuses one stream at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::keys::{Key, KeyId, Keyring, fill_random};
use crate::protocol::{
    self, Judgement, Protocol, RESPONSE_HEAD_LEN, VERDICT_DENIED, VERDICT_MALFORMED,
};

/// Settings of a [`Gate`] and of a [`crate::GatedListener`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_handshakes: usize,
    pub(crate) max_handshakes_per_ip: usize,
    pub(crate) protocol: Protocol,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 1024,
            max_handshakes_per_ip: 64,
            protocol: Protocol::Linkgate1,
        }
    }
}

impl Config {
    /// The defaults: 5 s handshake timeout, 1024 handshakes in progress, 64 per source IP.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a client has to complete its handshake (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// At most this many handshakes in progress at once in a [`crate::GatedListener`]
    /// (default 1024); past it, new connections are closed at once.
    pub fn max_handshakes(mut self, max: usize) -> Self {
        self.max_handshakes = max;
        self
    }

    /// At most this many handshakes in progress from one source IP (default 64, because a
    /// client-side forwarder puts many honest clients behind one address).
    pub fn max_handshakes_per_ip(mut self, max: usize) -> Self {
        self.max_handshakes_per_ip = max;
        self
    }

    /// Which handshake to speak (default linkgate/1). [`Protocol::Seed`] exists only to admit
    /// clients of the original recipe; it has no key ids and no server authentication.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The handshake timeout in force.
    pub fn get_handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

/// The server half of linkgate/1: challenges a stream and admits it only if the client proves
/// a key from the keyring.
///
/// Cheap to clone (the keyring is shared), so one `Gate` can serve every connection task.
#[derive(Clone, Debug)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    keyring: Keyring,
    config: Config,
    /// Unknown key ids are checked against this random key so they cost the same as wrong proofs.
    dummy_key: Key,
}

impl Gate {
    /// A gate with the default [`Config`].
    pub fn new(keyring: Keyring) -> Result<Self> {
        Self::with_config(keyring, Config::default())
    }

    /// A gate with the given settings.
    ///
    /// Fails if a key is shorter than 16 bytes and the protocol is linkgate/1 (short keys are
    /// for the seed protocol only).
    pub fn with_config(keyring: Keyring, config: Config) -> Result<Self> {
        if config.protocol == Protocol::Linkgate1 {
            for key in keyring.keys() {
                key.check_linkgate1_length()?;
            }
        }
        let dummy_key = Key::generate(KeyId::new("dummy")?)?;
        Ok(Gate {
            inner: Arc::new(GateInner {
                keyring,
                config,
                dummy_key,
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The keys this gate accepts.
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    /// Runs the server half of the handshake over `stream`, within the handshake timeout.
    ///
    /// On success returns the stream, positioned at the first application byte (any bytes the
    /// client sent right after its RESPONSE are still unread), and the authenticated key id.
    /// On failure the client has been sent what the protocol says (nothing, `denied` or
    /// `malformed`) and the error says why, for the log.
    pub async fn admit<S>(&self, mut stream: S) -> Result<(S, KeyId)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let timeout = self.inner.config.handshake_timeout;
        let handshake = async {
            match self.inner.config.protocol {
                Protocol::Linkgate1 => self.handshake(&mut stream).await,
                Protocol::Seed => self.seed_handshake(&mut stream).await,
            }
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(key_id)) => Ok((stream, key_id)),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    async fn handshake<S>(&self, stream: &mut S) -> Result<KeyId>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut server_nonce = [0u8; protocol::NONCE_LEN];
        fill_random(&mut server_nonce)?;
        stream
            .write_all(&protocol::encode_challenge(&server_nonce))
            .await?;
        stream.flush().await?;

        // Read exactly the RESPONSE: its 2-byte head says how long the rest is.
        let mut response = [0u8; RESPONSE_HEAD_LEN + protocol::MAX_RESPONSE_TAIL_LEN];
        read_exact_or_closed(stream, &mut response[..RESPONSE_HEAD_LEN]).await?;
        let head = [response[0], response[1]];
        let remaining = match protocol::response_remaining_len(head) {
            Ok(remaining) => remaining,
            Err(malformed) => {
                send_refusal(stream, &[VERDICT_MALFORMED]).await;
                return Err(Error::MalformedResponse(malformed));
            }
        };
        let response = &mut response[..RESPONSE_HEAD_LEN + remaining];
        read_exact_or_closed(stream, &mut response[RESPONSE_HEAD_LEN..]).await?;

        let inner = &self.inner;
        let (verdict, reason) =
            match protocol::judge(response, &server_nonce, &inner.keyring, &inner.dummy_key) {
                Judgement::Admitted { key_id, verdict } => {
                    stream.write_all(&verdict).await?;
                    stream.flush().await?;
                    return Ok(key_id);
                }
                Judgement::UnknownKeyId(id) => (VERDICT_DENIED, Error::UnknownKeyId(id)),
                Judgement::WrongProof(id) => (VERDICT_DENIED, Error::WrongProof(id)),
                Judgement::Malformed(malformed) => {
                    (VERDICT_MALFORMED, Error::MalformedResponse(malformed))
                }
            };
        send_refusal(stream, &[verdict]).await;
        Err(reason)
    }
}

impl Gate {
    /// The original recipe's server half: 32 random bytes out, their HMAC back, compared in
    /// constant time; a wrong answer is closed without a message.
    async fn seed_handshake<S>(&self, stream: &mut S) -> Result<KeyId>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut nonce = [0u8; protocol::seed::CHALLENGE_LEN];
        fill_random(&mut nonce)?;
        stream.write_all(&nonce).await?;
        stream.flush().await?;
        let mut answer = [0u8; protocol::seed::ANSWER_LEN];
        read_exact_or_closed(stream, &mut answer).await?;
        match protocol::seed::judge(&answer, &nonce, &self.inner.keyring) {
            Some(key_id) => Ok(key_id),
            None => {
                send_refusal(stream, &[]).await;
                Err(Error::SeedMismatch)
            }
        }
    }
}

/// `read_exact`, with a clean EOF reported as the peer closing during the handshake.
pub(crate) async fn read_exact_or_closed<S>(stream: &mut S, buf: &mut [u8]) -> Result<()>
where
    S: AsyncRead + Unpin,
{
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::ClosedEarly),
        Err(err) => Err(Error::Io(err)),
    }
}

/// Sends a one-byte refusal and shuts down our side. Best effort: the peer may already be gone,
/// and the refusal itself is what gets logged.
async fn send_refusal<S>(stream: &mut S, verdict: &[u8])
where
    S: AsyncWrite + Unpin,
{
    let _ = stream.write_all(verdict).await;
    let _ = stream.shutdown().await;
}
