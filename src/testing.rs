//! Impostors, to prove that a gate refuses them (feature `testing`).
//!
//! [`Probe`] runs a battery of attempts against a gate's address, each on a connection of its
//! own, one after the other, and reports what the gate did and whether that was right: clients
//! that speak another protocol (an HTTP request, a Redis `PING`), an unknown key id, a wrong key
//! for a real id, a RESPONSE replayed from an earlier session, a reflection attempt, truncated and
//! oversized RESPONSEs, every reserved mode byte, a client that stays silent, and, given a key, a
//! legitimate admission, a plain-mode request and a tampered record after admission.
//!
//! Use it from a test of your own server (and check there that your handler never ran), or run
//! `linkgate probe ADDR` against a deployed gate.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use linkgate::testing::{Probe, Status};
//! use linkgate::{Gate, GateConfig, GatedListener, Key, KeyId, Keyring};
//!
//! // A gate with a short handshake timeout, so the silent client is closed quickly.
//! let mut keyring = Keyring::new();
//! keyring.insert(Key::generate(KeyId::new("alice")?)?);
//! let config = GateConfig::new().with_handshake_timeout(Duration::from_millis(300));
//! let listener = GatedListener::bind("127.0.0.1:0", Gate::with_config(keyring, config)?).await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(linkgate::serve_with(listener, |stream| async move { drop(stream) }));
//!
//! let report = Probe::new(addr.to_string()).run().await;
//! assert!(report.passed(), "{report}");
//! assert!(report.findings.iter().any(|f| f.check == "unknown-id" && f.status == Status::Pass));
//! // or, in one line: linkgate::testing::assert_refuses_impostors(addr.to_string()).await;
//! # Ok(())
//! # }
//! ```
//!
//! A gate with per-source penalties (the default of `linkgate serve` and of
//! [`crate::ListenerConfig`]) starts refusing the probe's address at accept after a few failed
//! attempts; the later impostors are then refused before any CHALLENGE, which is right but does
//! not test them. Such findings are marked ([`Finding::refused_at_accept`]); run the probe from an
//! address the gate exempts (`--penalty-exempt`) to test every impostor itself.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use crate::client::Credentials;
use crate::error::{Error, Rejection};
use crate::keys::{Key, KeyId, fill_random};
use crate::mode::Mode;
use crate::protocol::{
    self, CHALLENGE_LEN, ClientHello, Nonce, VERDICT_ADMITTED, VERDICT_DENIED, VERDICT_MALFORMED,
};
use crate::record::{Opened, Opener, Sealer, TrafficSecret};

/// Whether a check came out as it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The gate did what a correct gate does.
    Pass,
    /// It did not: the detail says what it did instead.
    Fail,
    /// Not run (the probe's key asks for plain mode, so there is no record to tamper with).
    Skipped,
}

impl Status {
    /// `PASS`, `FAIL` or `SKIP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skipped => "SKIP",
        }
    }
}

/// One check and what the gate did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// The check's name, e.g. `unknown-id`.
    pub check: &'static str,
    /// Whether that was right.
    pub status: Status,
    /// What the gate did, in words.
    pub detail: String,
    /// The gate closed the connection before any CHALLENGE (a penalty or a bound on its side):
    /// a refusal, but the impostor itself was not examined.
    pub refused_at_accept: bool,
}

impl Finding {
    fn new(check: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check,
            status,
            detail: detail.into(),
            refused_at_accept: false,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_str(),
            self.check,
            self.detail
        )
    }
}

/// Every finding of a [`Probe::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// In the order the checks ran.
    pub findings: Vec<Finding>,
}

impl Report {
    /// No check failed, and at least one impostor got past accept to be examined (a target
    /// that closes every connection at once proves nothing).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none() && !self.inconclusive()
    }

    /// Every check that passed was only refused at accept: nothing was examined.
    pub fn inconclusive(&self) -> bool {
        !self.findings.iter().any(|finding| {
            finding.status == Status::Pass
                && !finding.refused_at_accept
                && finding.check != "legitimate"
        })
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|finding| finding.status == Status::Fail)
    }

    /// How many checks were answered only by a refusal at accept.
    pub fn refused_at_accept(&self) -> usize {
        self.findings
            .iter()
            .filter(|finding| finding.refused_at_accept)
            .count()
    }

    /// One line: how many checks passed, failed and were skipped.
    pub fn summary(&self) -> String {
        let count = |status| {
            self.findings
                .iter()
                .filter(|finding| finding.status == status)
                .count()
        };
        let verdict = if self.passed() {
            "ok"
        } else if self.failures().next().is_none() {
            "INCONCLUSIVE (every connection was closed at accept, before a CHALLENGE)"
        } else {
            "FAILED"
        };
        let mut line = format!(
            "{verdict}: {} passed, {} failed, {} skipped",
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skipped),
        );
        let at_accept = self.refused_at_accept();
        if at_accept > 0 {
            line.push_str(&format!(
                "; {at_accept} answered only by a refusal at accept (the gate penalizes this source: probe from an address it exempts to test those impostors themselves)"
            ));
        }
        line
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        write!(f, "{}", self.summary())
    }
}

/// What a gate did with one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Closed (or reset) before sending anything: refused at accept.
    ClosedAtAccept,
    /// Sent nothing within the wait.
    Nothing,
    /// Sent bytes that are not a linkgate CHALLENGE (the first of them).
    NotLinkgate(Vec<u8>),
    /// Sent the CHALLENGE, then closed without a VERDICT.
    ClosedAfterChallenge,
    /// Sent the CHALLENGE, then neither a VERDICT nor a close within the wait.
    NoVerdict,
    /// Sent the CHALLENGE and a VERDICT starting with `byte`, then `more` bytes before closing
    /// or the wait ending.
    Verdict {
        /// The VERDICT's first byte.
        byte: u8,
        /// Bytes after it.
        more: usize,
    },
}

impl Reply {
    /// A refusal: closed at accept, or after the CHALLENGE with at most a one-byte refusal.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::ClosedAtAccept | Self::ClosedAfterChallenge => true,
            Self::Verdict { byte, more: 0 } => {
                *byte == VERDICT_DENIED || *byte == VERDICT_MALFORMED
            }
            _ => false,
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClosedAtAccept => f.write_str("closed before the CHALLENGE (refused at accept)"),
            Self::Nothing => f.write_str("sent nothing (not a linkgate gate?)"),
            Self::NotLinkgate(bytes) => write!(
                f,
                "answered with {:?}, not a linkgate CHALLENGE: not a linkgate gate, or nothing stands in front of this service",
                String::from_utf8_lossy(bytes)
            ),
            Self::ClosedAfterChallenge => f.write_str("closed after the CHALLENGE"),
            Self::NoVerdict => f.write_str("neither answered nor closed after the CHALLENGE"),
            Self::Verdict { byte, more: 0 } if *byte == VERDICT_DENIED => {
                f.write_str("denied (VERDICT 0x01)")
            }
            Self::Verdict { byte, more: 0 } if *byte == VERDICT_MALFORMED => {
                f.write_str("refused as malformed (VERDICT 0x02)")
            }
            Self::Verdict { byte, more } if *byte == VERDICT_ADMITTED => {
                write!(f, "ADMITTED it (VERDICT 0x00 and {more} more bytes)")
            }
            Self::Verdict { byte, more } => {
                write!(f, "sent VERDICT byte {byte:#04x} and {more} more bytes")
            }
        }
    }
}

/// Longest wait the probe accepts (a longer one could overflow the clock's arithmetic).
const LONGEST_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Runs impostors (and, with a key, legitimate clients) against a gate.
#[derive(Debug, Clone)]
pub struct Probe {
    addr: String,
    credentials: Option<Credentials>,
    wait: Duration,
    silent_limit: Duration,
}

impl Probe {
    /// A probe of the gate at `addr` (`HOST:PORT`), without a key: impostors only.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            credentials: None,
            wait: Duration::from_secs(2),
            silent_limit: Duration::from_secs(10),
        }
    }

    /// Adds a real key: the probe then checks that its holder is admitted (in the credentials'
    /// mode), tries plain mode, replays a real RESPONSE, presents the real id with a wrong key,
    /// and tampers with a record after admission.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        // The seed scheme has no verdict: any server that sends 32 bytes would "admit" it.
        self.credentials = Some(credentials.with_protocol(crate::Protocol::Linkgate1));
        self
    }

    /// How long to wait for each reply (default 2 s; at most a day).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait.min(LONGEST_WAIT);
        self
    }

    /// How long a silent client may stay connected before the probe calls it a failure (default
    /// 10 s: twice the default handshake timeout).
    pub fn with_silent_limit(mut self, limit: Duration) -> Self {
        self.silent_limit = limit.min(LONGEST_WAIT);
        self
    }

    /// Every check, in an order that puts those needing admission first (before a penalty can
    /// start): at most about 265 connections, one at a time.
    pub async fn run(&self) -> Report {
        let mut findings = Vec::new();
        if let Some(credentials) = &self.credentials {
            findings.push(self.legitimate(credentials).await);
            findings.push(self.tampered_record(credentials).await);
            findings.push(self.replayed_response(credentials).await);
            findings.push(self.plain_mode(credentials).await);
        }
        findings.push(self.wrong_key().await);
        findings.push(self.unknown_id().await);
        findings.push(self.reflection().await);
        findings.push(self.http_request().await);
        findings.push(self.redis_ping().await);
        findings.push(self.truncated_response().await);
        findings.push(self.oversized_response().await);
        findings.push(self.reserved_modes().await);
        findings.push(self.silent_client().await);
        Report { findings }
    }

    async fn connect(&self) -> Result<TcpStream, Finding> {
        match timeout(self.wait, TcpStream::connect(self.addr.as_str())).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(err)) => Err(Finding::new(
                "connect",
                Status::Fail,
                format!("cannot connect to {}: {err}", self.addr),
            )),
            Err(_) => Err(Finding::new(
                "connect",
                Status::Fail,
                format!("connecting to {} timed out", self.addr),
            )),
        }
    }

    /// Runs one single-connection impostor and judges it: right if it is refused the way
    /// `expected` says (any refusal when `None`).
    async fn single(
        &self,
        check: &'static str,
        impostor: Impostor,
        expected: Option<u8>,
    ) -> Finding {
        let stream = match self.connect().await {
            Ok(stream) => stream,
            Err(finding) => return Finding { check, ..finding },
        };
        let reply = try_impostor(stream, &impostor, self.wait).await;
        judge_refusal(check, &reply, expected)
    }

    /// A client that sends an HTTP request without waiting for anything.
    pub async fn http_request(&self) -> Finding {
        let request = b"GET / HTTP/1.1\r\nHost: linkgate-probe\r\n\r\n".to_vec();
        self.single("http-request", Impostor::Raw(request), None)
            .await
    }

    /// A client that sends a Redis `PING` without waiting for anything.
    pub async fn redis_ping(&self) -> Finding {
        let ping = b"*1\r\n$4\r\nPING\r\n".to_vec();
        self.single("redis-ping", Impostor::Raw(ping), None).await
    }

    /// A well-formed RESPONSE under a key id the gate cannot know.
    pub async fn unknown_id(&self) -> Finding {
        let Some(id) = made_up_id() else {
            return no_id("unknown-id");
        };
        self.single("unknown-id", Impostor::WrongKey(id), Some(VERDICT_DENIED))
            .await
    }

    /// The real key id (with a key; else a made-up one) with a random key.
    pub async fn wrong_key(&self) -> Finding {
        let Some(id) = self.id_to_claim() else {
            return no_id("wrong-key");
        };
        self.single("wrong-key", Impostor::WrongKey(id), Some(VERDICT_DENIED))
            .await
    }

    /// Half a RESPONSE, then the client's end of the connection shut.
    pub async fn truncated_response(&self) -> Finding {
        self.single("truncated-response", Impostor::Truncated, None)
            .await
    }

    /// A RESPONSE whose key id length (200) is past the 64-byte limit, with 300 bytes after it.
    pub async fn oversized_response(&self) -> Finding {
        let mut response = vec![Mode::SealedFs.wire_byte(), 200];
        response.extend(std::iter::repeat_n(b'a', 300));
        self.single(
            "oversized-response",
            Impostor::Response(response),
            Some(VERDICT_MALFORMED),
        )
        .await
    }

    /// A RESPONSE with each mode byte the protocol reserves (0x03–0xff), one connection each;
    /// stops at the first wrong answer.
    pub async fn reserved_modes(&self) -> Finding {
        let check = "reserved-modes";
        let (mut malformed, mut at_accept) = (0usize, 0usize);
        let reserved = (0..=u8::MAX).filter(|byte| Mode::from_wire_byte(*byte).is_none());
        for mode in reserved {
            let stream = match self.connect().await {
                Ok(stream) => stream,
                Err(finding) => return Finding { check, ..finding },
            };
            let mut response = vec![mode, 5];
            response.extend_from_slice(b"probe");
            response.extend_from_slice(&[0u8; 64]);
            let reply = try_impostor(stream, &Impostor::Response(response), self.wait).await;
            match reply {
                Reply::Verdict {
                    byte: VERDICT_MALFORMED,
                    more: 0,
                } => malformed += 1,
                Reply::ClosedAtAccept => at_accept += 1,
                wrong => {
                    return Finding::new(
                        check,
                        Status::Fail,
                        format!("mode byte {mode:#04x}: {wrong}"),
                    );
                }
            }
        }
        let total = malformed + at_accept;
        let mut finding = Finding::new(
            check,
            Status::Pass,
            format!(
                "{total} reserved mode bytes: {malformed} refused as malformed, {at_accept} refused at accept"
            ),
        );
        finding.refused_at_accept = malformed == 0;
        finding
    }

    /// A RESPONSE on a second connection whose client nonce is the first connection's server
    /// nonce, trying to make the gate prove something for the first connection. The gate must
    /// deny it without a proof.
    pub async fn reflection(&self) -> Finding {
        let check = "reflection";
        let mut first = match self.connect().await {
            Ok(stream) => stream,
            Err(finding) => return Finding { check, ..finding },
        };
        let first_nonce = match read_challenge(&mut first, self.wait).await {
            Ok(nonce) => nonce,
            Err(reply) => return judge_refusal(check, &reply, Some(VERDICT_DENIED)),
        };
        let second = match self.connect().await {
            Ok(stream) => stream,
            Err(finding) => return Finding { check, ..finding },
        };
        let Some(id) = self.id_to_claim() else {
            return no_id(check);
        };
        let impostor = Impostor::Reflect {
            id,
            client_nonce: first_nonce,
        };
        let reply = try_impostor(second, &impostor, self.wait).await;
        drop(first);
        judge_refusal(check, &reply, Some(VERDICT_DENIED))
    }

    /// A client that reads the CHALLENGE and then says nothing: the gate must close it by its
    /// handshake deadline.
    pub async fn silent_client(&self) -> Finding {
        let check = "silent-client";
        let mut stream = match self.connect().await {
            Ok(stream) => stream,
            Err(finding) => return Finding { check, ..finding },
        };
        let started = Instant::now();
        if let Err(reply) = read_challenge(&mut stream, self.wait).await {
            return judge_refusal(check, &reply, None);
        }
        let mut buf = [0u8; 64];
        let closed = timeout_at(started + self.silent_limit, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => {
                        if let Some(byte) = buf[..n].first() {
                            return Some(*byte);
                        }
                    }
                }
            }
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        match closed {
            Ok(None) => Finding::new(check, Status::Pass, format!("closed after {seconds:.1} s")),
            Ok(Some(byte)) if byte != VERDICT_ADMITTED => Finding::new(
                check,
                Status::Pass,
                format!("refused after {seconds:.1} s (VERDICT {byte:#04x})"),
            ),
            Ok(Some(_)) => Finding::new(check, Status::Fail, "ADMITTED a client that said nothing"),
            Err(_) => Finding::new(
                check,
                Status::Fail,
                format!(
                    "still open after {:.0} s: a silent client holds a handshake slot at least that long (a handshake timeout longer than this limit, or none)",
                    self.silent_limit.as_secs_f64()
                ),
            ),
        }
    }

    /// The key's holder is admitted in the credentials' mode.
    pub async fn legitimate(&self, credentials: &Credentials) -> Finding {
        let check = "legitimate";
        let credentials = credentials.clone().with_timeout(self.wait);
        match crate::connect(self.addr.as_str(), &credentials).await {
            Ok(mut admitted) => {
                // End the session properly (close_notify), so the gate logs a clean close.
                let _ = admitted.shutdown().await;
                let mut rest = Vec::new();
                let ended = timeout(self.wait, admitted.read_to_end(&mut rest)).await;
                let after = match ended {
                    Ok(Err(_)) => ", then reset (is the gate's upstream reachable?)",
                    _ => "",
                };
                Finding::new(
                    check,
                    Status::Pass,
                    format!(
                        "admitted as {} (mode {}){after}",
                        credentials.key_id(),
                        admitted.mode()
                    ),
                )
            }
            Err(err) => {
                let hint = if self.refuses_at_accept().await {
                    " (the gate refuses this address at accept: a penalty for earlier failures? wait for it to run out, or probe from an address the gate exempts)"
                } else {
                    ""
                };
                Finding::new(
                    check,
                    Status::Fail,
                    format!(
                        "the key's holder ({}) was not admitted: {err}{hint}",
                        credentials.key_id()
                    ),
                )
            }
        }
    }

    /// Whether a new connection is closed before the CHALLENGE.
    async fn refuses_at_accept(&self) -> bool {
        match self.connect().await {
            Ok(mut stream) => matches!(
                read_challenge(&mut stream, self.wait).await,
                Err(Reply::ClosedAtAccept)
            ),
            Err(_) => false,
        }
    }

    /// Whether the gate admits plain mode: refused is right; allowed is right only on a
    /// loopback address (anywhere else the bytes after admission travel unprotected).
    pub async fn plain_mode(&self, credentials: &Credentials) -> Finding {
        let check = "plain-mode";
        let credentials = credentials
            .clone()
            .with_mode(Mode::Plain)
            .with_timeout(self.wait);
        match crate::connect(self.addr.as_str(), &credentials).await {
            Ok(admitted) => {
                let peer = admitted.get_ref().peer_addr().ok();
                // Only as seen from here: through a port forward (ssh -L, kubectl
                // port-forward) a remote gate looks local.
                if peer.is_some_and(|addr: SocketAddr| addr.ip().to_canonical().is_loopback()) {
                    Finding::new(
                        check,
                        Status::Pass,
                        "allowed, on a loopback address (never protected after admission)",
                    )
                } else {
                    Finding::new(
                        check,
                        Status::Fail,
                        "allowed on a non-loopback address: bytes after admission travel unencrypted and unauthenticated (drop --allow-plain unless the path is protected otherwise)",
                    )
                }
            }
            Err(
                err @ (Error::Rejected(Rejection::RefusedAsMalformed(_) | Rejection::Denied)
                | Error::ClosedEarly),
            ) => Finding::new(check, Status::Pass, format!("refused ({err})")),
            Err(err) => Finding::new(
                check,
                Status::Fail,
                format!("no verdict on plain mode: {err}"),
            ),
        }
    }

    /// After a legitimate admission in a sealed mode, a record with one bit flipped: the gate
    /// must end the connection.
    pub async fn tampered_record(&self, credentials: &Credentials) -> Finding {
        let check = "tampered-record";
        if !credentials.mode().is_sealed() {
            return Finding::new(
                check,
                Status::Skipped,
                "the probe's key asks for plain mode",
            );
        }
        let mut stream = match self.connect().await {
            Ok(stream) => stream,
            Err(finding) => return Finding { check, ..finding },
        };
        let session = match handshake_by_hand(&mut stream, credentials, self.wait).await {
            Ok((session, _)) => session,
            Err(detail) => {
                return Finding::new(
                    check,
                    Status::Fail,
                    format!("not admitted, so nothing to tamper with: {detail}"),
                );
            }
        };
        let Some(secrets) = session.secrets() else {
            return Finding::new(check, Status::Fail, "admitted without session secrets");
        };
        // A session the gate ends by itself (its upstream unreachable, say) proves nothing
        // about tampering: make sure this one is still open first. Records the upstream sends
        // (a banner) are fine, and kept to be opened below.
        let mut received = Vec::new();
        let mut buf = vec![0u8; 4096];
        let settle = self.wait.min(Duration::from_millis(200));
        match timeout(settle, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                return Finding::new(
                    check,
                    Status::Fail,
                    "the gate ended the admitted session before anything was tampered with (is its upstream reachable?)",
                );
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let mut record = Vec::new();
        if Sealer::new(secrets.client_to_server())
            .seal(TAMPERED_TEXT, &mut record)
            .is_err()
        {
            return Finding::new(check, Status::Fail, "could not seal a record");
        }
        // Flip one bit of the ciphertext, past the 5-byte header.
        record[8] ^= 0x01;
        if stream.write_all(&record).await.is_err() {
            return Finding::new(
                check,
                Status::Fail,
                "inconclusive: the connection closed before the tampered record could be sent",
            );
        }
        let ended = timeout(self.wait, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return "closed",
                    Err(_) => return "reset",
                    // Records the upstream sent may arrive first: keep them and read on.
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let Ok(how) = ended else {
            return Finding::new(
                check,
                Status::Fail,
                "the connection stayed open after a tampered record",
            );
        };
        // What the gate sent back, opened: the tampered bytes must not have reached the
        // upstream (and come back from an echoing one), and the end must be an error, not a
        // clean close_notify.
        let (data, close_notify) = open_all(secrets.server_to_client(), &mut received);
        if data
            .windows(TAMPERED_TEXT.len())
            .any(|window| window == TAMPERED_TEXT)
        {
            return Finding::new(
                check,
                Status::Fail,
                "the tampered record's bytes came back: the gate passed them to its upstream",
            );
        }
        if close_notify {
            return Finding::new(
                check,
                Status::Fail,
                "the gate ended the session cleanly (close_notify) after a tampered record: it must be an error",
            );
        }
        Finding::new(
            check,
            Status::Pass,
            format!("the gate {how} the connection after a tampered record"),
        )
    }

    /// A RESPONSE recorded from an admitted session, sent again on a new connection: the new
    /// CHALLENGE's nonce makes it worthless, and the gate must deny it.
    pub async fn replayed_response(&self, credentials: &Credentials) -> Finding {
        let check = "replayed-response";
        let mut first = match self.connect().await {
            Ok(stream) => stream,
            Err(finding) => return Finding { check, ..finding },
        };
        let recorded = match handshake_by_hand(&mut first, credentials, self.wait).await {
            Ok((session, response)) => {
                close_by_hand(&mut first, &session).await;
                response
            }
            Err(detail) => {
                return Finding::new(
                    check,
                    Status::Fail,
                    format!("could not record a RESPONSE to replay: {detail}"),
                );
            }
        };
        drop(first);
        let second = match self.connect().await {
            Ok(stream) => stream,
            Err(finding) => return Finding { check, ..finding },
        };
        let reply = try_impostor(second, &Impostor::Response(recorded), self.wait).await;
        judge_refusal(check, &reply, Some(VERDICT_DENIED))
    }

    fn id_to_claim(&self) -> Option<KeyId> {
        match &self.credentials {
            Some(credentials) => Some(credentials.key_id().clone()),
            None => made_up_id(),
        }
    }
}

/// Runs [`Probe::run`] against `addr` without a key and panics with the report unless every
/// impostor was refused.
pub async fn assert_refuses_impostors(addr: impl Into<String>) -> Report {
    let report = Probe::new(addr).run().await;
    assert!(
        report.passed(),
        "the gate let an impostor through:\n{report}"
    );
    report
}

/// A single-connection impostor, for [`try_impostor`] on a stream of your own.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Impostor {
    /// Sends these bytes at once, without waiting for the CHALLENGE (another protocol).
    Raw(Vec<u8>),
    /// Reads the CHALLENGE, then sends these bytes as the RESPONSE.
    Response(Vec<u8>),
    /// Reads the CHALLENGE, then answers well-formed under this id with a random key.
    WrongKey(KeyId),
    /// Reads the CHALLENGE, then answers under this id with this client nonce and a random key.
    Reflect {
        /// The id to claim.
        id: KeyId,
        /// The client nonce to send (another connection's server nonce).
        client_nonce: Nonce,
    },
    /// Reads the CHALLENGE, sends half a RESPONSE and shuts its end.
    Truncated,
}

/// Runs `impostor` on `stream` (a fresh connection to a gate) and reports what the gate did,
/// waiting at most `wait` for each reply.
pub async fn try_impostor<S>(mut stream: S, impostor: &Impostor, wait: Duration) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Impostor::Raw(bytes) = impostor {
        // A peer that closed at once makes this fail; reading tells what it did.
        let _ = timeout(wait, stream.write_all(bytes)).await;
    }
    let server_nonce = match read_challenge(&mut stream, wait).await {
        Ok(nonce) => nonce,
        Err(reply) => return reply,
    };
    let wrong_answer = |id: &KeyId, client_nonce: Nonce| {
        let key = random_key(id)?;
        // Sealed-fs: the one mode every gate admits, so the answer can only be a denial.
        ClientHello::new(&key, id, Mode::SealedFs, &server_nonce, client_nonce, None)
            .ok()
            .map(|hello| hello.response().encode())
    };
    let answer = match impostor {
        Impostor::Raw(_) => None,
        Impostor::Response(bytes) => Some(bytes.clone()),
        Impostor::WrongKey(id) => wrong_answer(id, random_nonce()),
        Impostor::Reflect { id, client_nonce } => wrong_answer(id, *client_nonce),
        Impostor::Truncated => made_up_id()
            .and_then(|id| wrong_answer(&id, random_nonce()))
            .map(|mut bytes| {
                bytes.truncate(bytes.len() / 2);
                bytes
            }),
    };
    if let Some(answer) = answer {
        let _ = timeout(wait, stream.write_all(&answer)).await;
    }
    if matches!(impostor, Impostor::Truncated) {
        let _ = timeout(wait, stream.shutdown()).await;
    }
    read_verdict(&mut stream, wait).await
}

/// Reads the CHALLENGE; anything else is the reply to report.
async fn read_challenge<S>(stream: &mut S, wait: Duration) -> Result<Nonce, Reply>
where
    S: AsyncRead + Unpin,
{
    let mut challenge = [0u8; CHALLENGE_LEN];
    let mut filled = 0;
    let deadline = crate::deadline::deadline_after(wait);
    while filled < CHALLENGE_LEN {
        let read = timeout_at(deadline, stream.read(&mut challenge[filled..])).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) if filled == 0 => return Err(Reply::ClosedAtAccept),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Reply::NotLinkgate(challenge[..filled].to_vec())),
            Ok(Ok(n)) => filled += n,
            Err(_) if filled == 0 => return Err(Reply::Nothing),
            Err(_) => return Err(Reply::NotLinkgate(challenge[..filled].to_vec())),
        }
        if !protocol::greeting_matches_so_far(&challenge[..filled]) {
            return Err(Reply::NotLinkgate(challenge[..filled].to_vec()));
        }
    }
    protocol::decode_challenge(&challenge).ok_or_else(|| Reply::NotLinkgate(challenge.to_vec()))
}

/// Reads what follows the CHALLENGE until the gate closes or `wait` passes.
async fn read_verdict<S>(stream: &mut S, wait: Duration) -> Reply
where
    S: AsyncRead + Unpin,
{
    let deadline = crate::deadline::deadline_after(wait);
    let mut buf = [0u8; 256];
    let mut first = None;
    let mut more = 0usize;
    loop {
        match timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) if first.is_some() => break,
            Ok(Ok(0)) | Ok(Err(_)) => return Reply::ClosedAfterChallenge,
            Err(_) => return Reply::NoVerdict,
            Ok(Ok(n)) => {
                let got = &buf[..n];
                match first {
                    None => {
                        first = got.first().copied();
                        more += n - 1;
                    }
                    Some(_) => more += n,
                }
            }
        }
    }
    Reply::Verdict {
        byte: first.unwrap_or_default(),
        more,
    }
}

/// The client half of a real handshake, done by hand so the probe keeps the RESPONSE it sent
/// and the session's secrets.
async fn handshake_by_hand(
    stream: &mut TcpStream,
    credentials: &Credentials,
    wait: Duration,
) -> Result<(protocol::ClientSession, Vec<u8>), String> {
    let server_nonce = read_challenge(stream, wait)
        .await
        .map_err(|reply| reply.to_string())?;
    let hello = ClientHello::new(
        credentials.key(),
        credentials.key_id(),
        credentials.mode(),
        &server_nonce,
        random_nonce(),
        None,
    )
    .map_err(|err| err.to_string())?;
    let response = hello.response().encode();
    stream
        .write_all(&response)
        .await
        .map_err(|err| format!("sending the RESPONSE failed: {err}"))?;
    let mut verdict = vec![0u8; hello.admitted_verdict_len()];
    let mut filled = 0;
    let deadline = crate::deadline::deadline_after(wait);
    while filled < verdict.len() {
        match timeout_at(deadline, stream.read(&mut verdict[filled..])).await {
            Ok(Ok(0)) | Ok(Err(_)) if filled == 0 => {
                return Err(Reply::ClosedAfterChallenge.to_string());
            }
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => filled += n,
        }
        if verdict[0] != VERDICT_ADMITTED {
            break;
        }
    }
    let session = hello
        .finish(&verdict[..filled])
        .map_err(|err| err.to_string())?;
    Ok((session, response))
}

/// What the tampered record carries (and what must never come back).
const TAMPERED_TEXT: &[u8] = b"linkgate probe: this record was tampered with";

/// Opens the records in `wire` under `secret` as far as they go: the application data, and
/// whether a close_notify came.
fn open_all(secret: &TrafficSecret, wire: &mut [u8]) -> (Vec<u8>, bool) {
    let mut opener = Opener::new(secret);
    let (mut data, mut start) = (Vec::new(), 0);
    while let Ok(Some(len)) = Opener::record_len(&wire[start..]) {
        let Some(record) = wire.get_mut(start..start + len) else {
            break;
        };
        match opener.open_in_place(record) {
            Ok(Opened::Data(range)) => data.extend_from_slice(&record[range]),
            Ok(Opened::KeyUpdate) => {}
            Ok(Opened::CloseNotify) => return (data, true),
            Err(_) => break,
        }
        start += len;
    }
    (data, false)
}

/// Ends a session opened by [`handshake_by_hand`] cleanly: close_notify in the sealed modes,
/// then the write half shut.
async fn close_by_hand(stream: &mut TcpStream, session: &protocol::ClientSession) {
    if let Some(secrets) = session.secrets() {
        let mut close = Vec::new();
        if Sealer::new(secrets.client_to_server())
            .seal_close_notify(&mut close)
            .is_ok()
        {
            let _ = stream.write_all(&close).await;
        }
    }
    let _ = stream.shutdown().await;
}

fn judge_refusal(check: &'static str, reply: &Reply, expected: Option<u8>) -> Finding {
    let right = match (reply, expected) {
        (Reply::ClosedAtAccept, _) => true,
        // The gate read a whole RESPONSE: it owes a VERDICT, and exactly this one.
        (Reply::Verdict { byte, more: 0 }, Some(expected)) => *byte == expected,
        (_, Some(_)) => false,
        (reply, None) => reply.is_refusal(),
    };
    let mut detail = reply.to_string();
    if !right && expected == Some(VERDICT_DENIED) && reply.is_refusal() {
        detail.push_str(
            ": a well-formed RESPONSE with an unknown id or a wrong proof must be denied (0x01), the same way whichever it was",
        );
    }
    Finding {
        check,
        status: if right { Status::Pass } else { Status::Fail },
        detail,
        refused_at_accept: *reply == Reply::ClosedAtAccept,
    }
}

fn random_nonce() -> Nonce {
    let mut nonce = [0u8; protocol::NONCE_LEN];
    // Without OS randomness any fixed nonce serves an impostor equally well.
    let _ = fill_random(&mut nonce);
    nonce
}

fn random_key(id: &KeyId) -> Option<Key> {
    Key::generate(id.clone()).ok()
}

/// A key id no gate will know: `probe-` and 12 random hex digits (always a valid id).
fn made_up_id() -> Option<KeyId> {
    let mut bytes = [0u8; 6];
    let _ = fill_random(&mut bytes);
    KeyId::new(format!("probe-{}", hex::encode(bytes))).ok()
}

fn no_id(check: &'static str) -> Finding {
    Finding::new(check, Status::Fail, "could not make a key id to present")
}
