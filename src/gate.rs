//! The server half: [`Gate`] admits or refuses one stream at a time.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::admitted::{Admission, Admitted, ConnectionId};
use crate::error::{Error, Refusal, Result, Timeout, Waiting};
use crate::keys::{Key, KeyId, Keyring, KeyringDiff, fill_random};
use crate::mode::Mode;
use crate::protocol::seed::SeedDigest;
use crate::protocol::{
    self, EphemeralSecret, Judgement, ModePolicy, Protocol, RESPONSE_HEAD_LEN, SessionSecrets,
    VERDICT_MALFORMED,
};
use crate::record::RecordLimits;
use crate::sealed::{SealedState, Side};

/// Settings of a [`Gate`]: the handshake and which modes it admits. (Bounds on concurrent
/// handshakes belong to the listener: [`crate::ListenerConfig`].)
///
/// ```
/// use std::time::Duration;
/// let config = linkgate::GateConfig::new()
///     .with_handshake_timeout(Duration::from_secs(3))
///     .with_forward_secrecy_required(true);
/// assert_eq!(config.handshake_timeout(), Duration::from_secs(3));
/// assert!(!config.plain_allowed());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GateConfig {
    handshake_timeout: Duration,
    protocol: Protocol,
    policy: ModePolicy,
    record_limits: RecordLimits,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            protocol: Protocol::Linkgate1,
            policy: ModePolicy::default(),
            record_limits: RecordLimits::default(),
        }
    }
}

impl GateConfig {
    /// The defaults: 5 s to complete the handshake, linkgate/1, sealed and sealed-fs admitted,
    /// plain refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a client has to complete its handshake.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Which handshake to speak. [`Protocol::Seed`] exists only to admit clients of the
    /// original recipe: no key ids, no server authentication, plain bytes after admission.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The handshake spoken.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Admit clients asking for [`Mode::Plain`] (off by default): for trusted paths only, such
    /// as loopback or a VPN, where the speed of plain forwarding matters.
    pub fn with_plain_allowed(mut self, allowed: bool) -> Self {
        self.policy.plain_allowed = allowed;
        self
    }

    /// Whether plain mode is admitted.
    pub fn plain_allowed(&self) -> bool {
        self.policy.plain_allowed
    }

    /// Refuse [`Mode::Sealed`] (no forward secrecy); only [`Mode::SealedFs`] (and plain, if
    /// allowed) get in.
    pub fn with_forward_secrecy_required(mut self, required: bool) -> Self {
        self.policy.forward_secrecy_required = required;
        self
    }

    /// Whether forward secrecy is required of sealed sessions.
    pub fn forward_secrecy_required(&self) -> bool {
        self.policy.forward_secrecy_required
    }

    /// Admit the multiplexed modes ([`Mode::SealedMux`], [`Mode::SealedFsMux`]) when the sealed
    /// mode underneath is admitted. Off by default: a multiplexed session carries
    /// [`crate::mux`] frames, so only a server that hands such sessions to
    /// [`crate::mux::MuxServer`] may admit them (`linkgate serve` does, unless `--no-mux`).
    pub fn with_multiplexing_allowed(mut self, allowed: bool) -> Self {
        self.policy.multiplexing_allowed = allowed;
        self
    }

    /// Whether the multiplexed modes are admitted.
    pub fn multiplexing_allowed(&self) -> bool {
        self.policy.multiplexing_allowed
    }

    /// The modes admitted, as one policy.
    pub fn mode_policy(&self) -> ModePolicy {
        self.policy
    }

    /// Lower record limits, for tests that exercise key updates.
    pub fn with_record_limits(mut self, limits: RecordLimits) -> Self {
        self.record_limits = limits;
        self
    }

    /// The record limits.
    pub fn record_limits(&self) -> RecordLimits {
        self.record_limits
    }
}

/// The server half of linkgate/1: challenges a stream and admits it only if the client proves
/// a key from the keyring and asks for a mode the gate allows. The `TlsAcceptor` of linkgate.
///
/// Cheap to clone (everything is shared), so one `Gate` serves every connection task. Its
/// keyring can be replaced while it serves ([`Gate::replace_keyring`]); handshakes already
/// running finish under the keyring they started with.
///
/// ```
/// use linkgate::{Credentials, Gate, Key, KeyId, Keyring};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), linkgate::Error> {
/// let key = Key::generate(KeyId::new("alice")?)?;
/// let mut keyring = Keyring::new();
/// keyring.insert(key.clone());
/// let gate = Gate::new(keyring)?;
///
/// let (client_end, server_end) = tokio::io::duplex(4096);
/// let client = tokio::spawn(async move {
///     linkgate::authenticate(client_end, &Credentials::new(key)).await
/// });
/// let admitted = gate.admit(server_end).await?;
/// assert_eq!(admitted.key_id().as_str(), "alice");
/// assert_eq!(admitted.mode(), linkgate::Mode::SealedFs);
/// client.await.expect("client task")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("keyring", &*self.inner.keyring.load().keyring)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct GateInner {
    keyring: ArcSwap<Versioned>,
    config: GateConfig,
    /// Unknown key ids are checked against this random key so they cost the same as wrong proofs.
    dummy_key: Key,
}

/// A keyring and its place in the gate's history: 0 for the one the gate started with, one more
/// for each replacement. Swapped together, so an admission knows which keyring judged it.
struct Versioned {
    generation: u64,
    keyring: Arc<Keyring>,
}

impl Gate {
    /// A gate with the default [`GateConfig`].
    pub fn new(keyring: Keyring) -> Result<Self> {
        Self::with_config(keyring, GateConfig::default())
    }

    /// A gate with the given settings.
    ///
    /// Fails if a key is shorter than 16 bytes and the protocol is linkgate/1 (short keys are
    /// for the seed protocol only).
    pub fn with_config(keyring: Keyring, config: GateConfig) -> Result<Self> {
        check_keyring(&keyring, config.protocol)?;
        let dummy_key = Key::generate(KeyId::new("dummy")?)?;
        Ok(Self {
            inner: Arc::new(GateInner {
                keyring: ArcSwap::from_pointee(Versioned {
                    generation: 0,
                    keyring: Arc::new(keyring),
                }),
                config,
                dummy_key,
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &GateConfig {
        &self.inner.config
    }

    /// The keys this gate accepts now.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.inner.keyring.load().keyring)
    }

    /// Which keyring is in force: 0 for the one this gate started with, one more after each
    /// [`Gate::replace_keyring`]. Each connection's [`Admission::keyring_generation`] says which
    /// one admitted it, so a server that revokes what a replacement removed or changed can tell
    /// a connection admitted before it from one admitted after.
    pub fn keyring_generation(&self) -> u64 {
        self.inner.keyring.load().generation
    }

    /// Replaces the keyring atomically, for every clone of this gate: new handshakes use the new
    /// keys, handshakes in progress finish with the old ones, and admitted connections are not
    /// touched. All or nothing: a keyring this gate could not have started with is refused and
    /// the old one stays. Returns what changed.
    pub fn replace_keyring(&self, keyring: Keyring) -> Result<KeyringDiff> {
        check_keyring(&keyring, self.inner.config.protocol)?;
        let keyring = Arc::new(keyring);
        let old = self.inner.keyring.rcu(|current| Versioned {
            generation: current.generation + 1,
            keyring: Arc::clone(&keyring),
        });
        Ok(old.keyring.diff(&keyring))
    }

    /// Runs the server half of the handshake over `stream`, within the handshake timeout.
    ///
    /// On success the stream is positioned at the first application byte (bytes or records the
    /// client sent right after its RESPONSE are still unread). On failure the client has been
    /// sent what the protocol says (nothing, `denied` or `malformed`) and the error says why,
    /// for the log.
    pub async fn admit<IO>(&self, stream: IO) -> Result<Admitted<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.admit_fallible(stream).await.map_err(|(err, _)| err)
    }

    /// Like [`Gate::admit`], but a refused stream comes back with the error, e.g. to read its
    /// socket options or to reset it rather than close it.
    pub async fn admit_fallible<IO>(&self, mut stream: IO) -> Result<Admitted<IO>, (Error, IO)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let deadline = crate::deadline::deadline_after(self.inner.config.handshake_timeout);
        match self.handshake_until(&mut stream, deadline).await {
            Ok(session) => {
                Ok(session.into_admitted(stream, &self.inner.config, ConnectionId::next()))
            }
            Err(err) => Err((err, stream)),
        }
    }

    /// The handshake, with the deadline set by the caller (a listener that first read a PROXY
    /// protocol header gives the rest of the same deadline).
    pub(crate) async fn handshake_until<IO>(
        &self,
        stream: &mut IO,
        deadline: Instant,
    ) -> Result<ServerSession>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            match self.inner.config.protocol.seed_digest() {
                None => self.handshake(stream).await,
                Some(digest) => self.seed_handshake(stream, digest).await,
            }
        };
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(result) => result,
            Err(_) => {
                Err(Timeout::new(self.inner.config.handshake_timeout, Waiting::Response).into())
            }
        }
    }

    async fn handshake<IO>(&self, stream: &mut IO) -> Result<ServerSession>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
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
                // "PR" of "PROXY " or the start of the v2 signature: a PROXY protocol header
                // from a source not trusted to send one. Named, so a misconfigured balancer
                // (or a spoofing attempt) is obvious in the log.
                if head == *b"PR" || head == *b"\r\n" {
                    return Err(Refusal::ProxyHeader(
                        "sent by a source that is not trusted to send one (see --accept-proxy-from)"
                            .into(),
                    )
                    .into());
                }
                return Err(Refusal::Malformed(malformed).into());
            }
        };
        let response = &mut response[..RESPONSE_HEAD_LEN + remaining];
        read_exact_or_closed(stream, &mut response[RESPONSE_HEAD_LEN..]).await?;

        let inner = &self.inner;
        // The keyring is let go before any await: a guard is for short reads.
        let (judged, keyring_generation) = {
            let versioned = inner.keyring.load();
            let judged = protocol::judge(
                response,
                &server_nonce,
                &versioned.keyring,
                &inner.dummy_key,
                &inner.config.policy,
                EphemeralSecret::generate,
            )?;
            (judged, versioned.generation)
        };
        match judged {
            Judgement::Admitted(admitted) => {
                stream.write_all(admitted.verdict()).await?;
                stream.flush().await?;
                let (key_id, mode, secrets) = admitted.into_parts();
                Ok(ServerSession {
                    key_id,
                    mode,
                    secrets,
                    keyring_generation,
                })
            }
            refused => {
                send_refusal(stream, refused.verdict()).await;
                match refused {
                    Judgement::Refused(reason) => Err(reason.into()),
                    Judgement::Admitted(_) => unreachable!("matched above"),
                }
            }
        }
    }

    /// The original recipe's server half: 32 random bytes out, their HMAC back, compared in
    /// constant time; a wrong answer is closed without a message.
    async fn seed_handshake<IO>(&self, stream: &mut IO, digest: SeedDigest) -> Result<ServerSession>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut nonce = [0u8; protocol::seed::CHALLENGE_LEN];
        fill_random(&mut nonce)?;
        stream.write_all(&nonce).await?;
        stream.flush().await?;
        let mut answer = [0u8; protocol::seed::MAX_ANSWER_LEN];
        let answer = &mut answer[..digest.answer_len()];
        read_exact_or_closed(stream, answer).await?;
        let versioned = self.inner.keyring.load_full();
        match protocol::seed::judge(digest, answer, &nonce, &versioned.keyring) {
            Some(key_id) => Ok(ServerSession {
                key_id,
                mode: Mode::Plain,
                secrets: None,
                keyring_generation: versioned.generation,
            }),
            None => {
                send_refusal(stream, &[]).await;
                Err(Refusal::SeedMismatch.into())
            }
        }
    }
}

fn check_keyring(keyring: &Keyring, protocol: Protocol) -> Result<()> {
    if protocol == Protocol::Linkgate1 {
        for key in keyring.keys() {
            key.check_linkgate1_length()?;
        }
    }
    Ok(())
}

/// What the server learned from a successful handshake.
pub(crate) struct ServerSession {
    pub(crate) key_id: KeyId,
    pub(crate) mode: Mode,
    secrets: Option<SessionSecrets>,
    /// Which keyring judged it ([`Gate::keyring_generation`]).
    keyring_generation: u64,
}

impl ServerSession {
    pub(crate) fn into_admitted<IO>(
        self,
        stream: IO,
        config: &GateConfig,
        id: ConnectionId,
    ) -> Admitted<IO> {
        let sealed = self
            .secrets
            .map(|secrets| SealedState::new(&secrets, Side::Server, config.record_limits));
        let admission = Admission::new(self.key_id, self.mode, id)
            .with_keyring_generation(self.keyring_generation);
        Admitted::new(stream, sealed, admission)
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

/// Sends a refusal and shuts down our side. Best effort: the peer may already be gone, and the
/// refusal itself is what gets logged.
async fn send_refusal<S>(stream: &mut S, verdict: &[u8])
where
    S: AsyncWrite + Unpin,
{
    let _ = stream.write_all(verdict).await;
    let _ = stream.shutdown().await;
}
