//! The soak of RELIABILITY.md: many connections of mixed sizes through every mode's `connect`
//! entry, a few through an impostor's, and an upstream that resets some of them on request.
//! Every transfer is checked end to end by SHA-256; every reset must reach the client as a
//! reset, never as a clean end.
//!
//! The wire between the soak client and its upstream (through the gates, unchanged):
//!
//! ```text
//! client → upstream: "SOAK" | flags u32 | request_len u64 | response_len u64 | seed u64 | request
//! upstream → client: SHA-256(request) | response_len bytes of the pattern of `seed`, then FIN
//! ```
//!
//! With flag RESET the upstream reads half the request and resets the connection instead. A
//! header "STAT" (4 bytes, straight to the upstream) answers with the upstream's counts.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const MAGIC: &[u8; 4] = b"SOAK";
const STAT: &[u8; 4] = b"STAT";
const FLAG_RESET: u32 = 1;
const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8;
const CHUNK: usize = 64 * 1024;

/// A small deterministic generator (xorshift64*): the payloads only need to be reproducible on
/// both ends and unlike each other, not unpredictable. As a byte stream it does not depend on
/// how it is cut up: `fill` continues where the last call stopped.
#[derive(Clone)]
struct Pattern {
    state: u64,
    /// Bytes of the last word not handed out yet: `word[8 - left..]`.
    word: [u8; 8],
    left: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            left: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            if self.left == 0 {
                self.word = self.next_u64().to_le_bytes();
                self.left = 8;
            }
            let n = self.left.min(buf.len());
            let start = 8 - self.left;
            buf[..n].copy_from_slice(&self.word[start..start + n]);
            self.left -= n;
            buf = &mut buf[n..];
        }
    }
}

/// What the upstream has seen since it started.
#[derive(Default)]
struct UpstreamCounts {
    connections: AtomicU64,
    completed: AtomicU64,
    reset: AtomicU64,
    bad: AtomicU64,
    /// Connections that ended before their first byte (port probes).
    empty: AtomicU64,
}

/// The soak's upstream: answers each request with its hash and a patterned response, or resets
/// it halfway when asked to.
pub(crate) async fn upstream(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("soak upstream: listening on {}", listener.local_addr()?);
    let counts = Arc::new(UpstreamCounts::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            if let Err(err) = answer(stream, &counts).await {
                counts.bad.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak upstream: {err:#}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, counts: &UpstreamCounts) -> Result<()> {
    let mut head = [0u8; 4];
    if stream.read(&mut head[..1]).await? == 0 {
        // A probe that only checked the port (or a gate's connection that carried nothing).
        counts.empty.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    stream.read_exact(&mut head[1..]).await.context("header")?;
    if &head == STAT {
        let reply = format!(
            "connections={} completed={} reset={} bad={} empty={}\n",
            counts.connections.load(Ordering::Relaxed),
            counts.completed.load(Ordering::Relaxed),
            counts.reset.load(Ordering::Relaxed),
            counts.bad.load(Ordering::Relaxed),
            counts.empty.load(Ordering::Relaxed),
        );
        stream.write_all(reply.as_bytes()).await?;
        return Ok(());
    }
    counts.connections.fetch_add(1, Ordering::Relaxed);
    ensure!(&head == MAGIC, "not a soak connection");
    let mut rest = [0u8; HEADER_LEN - 4];
    stream.read_exact(&mut rest).await.context("header")?;
    let word = |at: usize| u64::from_be_bytes(rest[at..at + 8].try_into().unwrap_or_default());
    let flags = u32::from_be_bytes(rest[..4].try_into().unwrap_or_default());
    let (request_len, response_len, seed) = (word(4), word(12), word(20));
    let reset_after = (flags & FLAG_RESET != 0).then_some(request_len / 2);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < request_len {
        if reset_after.is_some_and(|after| got >= after) {
            break;
        }
        let want = (request_len - got).min(CHUNK as u64) as usize;
        let n = stream.read(&mut buf[..want]).await?;
        ensure!(
            n > 0,
            "the request ended after {got} of {request_len} bytes"
        );
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    if reset_after.is_some() {
        counts.reset.fetch_add(1, Ordering::Relaxed);
        // SO_LINGER 0: closing sends RST, not FIN.
        stream.set_zero_linger()?;
        drop(stream);
        return Ok(());
    }
    stream.write_all(&hasher.finalize()).await?;
    let mut pattern = Pattern::new(seed);
    let mut sent = 0u64;
    while sent < response_len {
        let n = (response_len - sent).min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    stream.shutdown().await?;
    // The client closes once it has everything: nothing more may come.
    let n = stream.read(&mut buf[..1]).await?;
    ensure!(n == 0, "bytes after the request");
    counts.completed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Where the soak's connections go, and in what share.
pub(crate) struct Entries {
    /// `(mode name, connect entry)`: the honest ones, used in turn.
    pub(crate) honest: Vec<(String, String)>,
    /// A `connect` holding a key the gate does not know.
    pub(crate) impostor: String,
}

pub(crate) struct SoakPlan {
    pub(crate) connections: usize,
    pub(crate) concurrency: usize,
    /// Percent of honest connections the upstream is asked to reset.
    pub(crate) reset_pct: u64,
    /// Percent of all connections made through the impostor.
    pub(crate) impostor_pct: u64,
    pub(crate) upstream: String,
    pub(crate) seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Honest,
    Reset,
    Impostor,
}

#[derive(Default)]
struct SoakCounts {
    verified: AtomicU64,
    resets_seen: AtomicU64,
    impostors_refused: AtomicU64,
    failures: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// Runs the soak and prints one line of counts; fails if anything was lost, corrupted, or
/// reported complete when it was not.
pub(crate) async fn run(entries: Entries, plan: SoakPlan) -> Result<()> {
    ensure!(!entries.honest.is_empty(), "no honest entry");
    let before = upstream_stat(&plan.upstream).await?;
    let counts = Arc::new(SoakCounts::default());
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let entries = Arc::new(entries);
    let started = Instant::now();
    let mut rng = Pattern::new(plan.seed);
    let mut tasks = tokio::task::JoinSet::new();
    let (mut expected_upstream, mut per_mode) = (0u64, vec![0u64; entries.honest.len()]);
    let failures_shown = Arc::new(AtomicU64::new(0));
    for index in 0..plan.connections {
        let roll = rng.next_u64() % 10_000;
        let kind = if roll < plan.impostor_pct * 100 {
            Kind::Impostor
        } else if rng.next_u64() % 100 < plan.reset_pct {
            Kind::Reset
        } else {
            Kind::Honest
        };
        let (request_len, response_len) = (size(&mut rng), size(&mut rng));
        let entry = if kind == Kind::Impostor {
            entries.impostor.clone()
        } else {
            let which = index % entries.honest.len();
            per_mode[which] += 1;
            expected_upstream += 1;
            entries.honest[which].1.clone()
        };
        let seed = rng.next_u64();
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let (counts, failures_shown) = (Arc::clone(&counts), Arc::clone(&failures_shown));
        tasks.spawn(async move {
            let result = tokio::time::timeout(
                Duration::from_secs(120),
                one(&entry, kind, request_len, response_len, seed),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no end within 120 s")));
            match (kind, result) {
                (Kind::Honest, Ok(())) => {
                    counts.verified.fetch_add(1, Ordering::Relaxed);
                    counts.bytes_up.fetch_add(request_len, Ordering::Relaxed);
                    counts.bytes_down.fetch_add(response_len, Ordering::Relaxed);
                }
                (Kind::Reset, Ok(())) => {
                    counts.resets_seen.fetch_add(1, Ordering::Relaxed);
                }
                (Kind::Impostor, Ok(())) => {
                    counts.impostors_refused.fetch_add(1, Ordering::Relaxed);
                }
                (_, Err(err)) => {
                    counts.failures.fetch_add(1, Ordering::Relaxed);
                    if failures_shown.fetch_add(1, Ordering::Relaxed) < 10 {
                        eprintln!(
                            "connection {index} ({kind:?}, {request_len} B up, {response_len} B down): {err:#}"
                        );
                    }
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let after = upstream_stat(&plan.upstream).await?;
    // What the upstream saw during this run.
    let stat: Vec<(String, u64)> = after
        .iter()
        .map(|(name, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == name)
                .map_or(0, |(_, n)| *n);
            (name.clone(), n.saturating_sub(was))
        })
        .collect();
    let upstream = |name: &str| stat.iter().find(|(n, _)| n == name).map_or(0, |(_, n)| *n);
    let c = &counts;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let modes: Vec<String> = entries
        .honest
        .iter()
        .zip(&per_mode)
        .map(|((mode, _), n)| format!("{mode}:{n}"))
        .collect();
    let upstream_text: Vec<String> = stat
        .iter()
        .map(|(name, n)| format!("upstream_{name}={n}"))
        .collect();
    println!(
        "connections={} seconds={elapsed:.1} verified={} resets_seen={} impostors_refused={} failures={} mib_up={:.0} mib_down={:.0} per_mode={} {}",
        plan.connections,
        load(&c.verified),
        load(&c.resets_seen),
        load(&c.impostors_refused),
        load(&c.failures),
        load(&c.bytes_up) as f64 / 1048576.0,
        load(&c.bytes_down) as f64 / 1048576.0,
        modes.join(","),
        upstream_text.join(" "),
    );
    ensure!(
        load(&c.failures) == 0,
        "{} connections failed",
        load(&c.failures)
    );
    ensure!(
        upstream("connections") == expected_upstream,
        "the upstream saw {} connections, {expected_upstream} expected (impostors must reach nothing)",
        upstream("connections")
    );
    ensure!(
        upstream("bad") == 0,
        "the upstream saw {} malformed or cut-off requests",
        upstream("bad")
    );
    Ok(())
}

/// Transfer sizes: mostly small, some large (0 B to 4 MiB).
fn size(rng: &mut Pattern) -> u64 {
    match rng.next_u64() % 100 {
        0..=39 => rng.next_u64() % 1024,
        40..=74 => 1024 + rng.next_u64() % (63 * 1024),
        75..=96 => 64 * 1024 + rng.next_u64() % (960 * 1024),
        _ => 1024 * 1024 + rng.next_u64() % (3 * 1024 * 1024),
    }
}

/// One connection, checked for what its kind must see.
async fn one(
    entry: &str,
    kind: Kind,
    request_len: u64,
    response_len: u64,
    seed: u64,
) -> Result<()> {
    let mut stream = match TcpStream::connect(entry).await {
        Ok(stream) => stream,
        // The entry reset the connection before the connect call saw it established.
        Err(err) if kind != Kind::Honest && err.kind() == io::ErrorKind::ConnectionReset => {
            return Ok(());
        }
        Err(err) => return Err(err).context("connect"),
    };
    let flags = if kind == Kind::Reset { FLAG_RESET } else { 0 };
    let mut head = Vec::with_capacity(HEADER_LEN);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&flags.to_be_bytes());
    for word in [request_len, response_len, seed] {
        head.extend_from_slice(&word.to_be_bytes());
    }
    let (mut reader, mut writer) = stream.split();
    let sending = async {
        writer.write_all(&head).await?;
        let mut pattern = Pattern::new(seed ^ 0x5555);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < request_len {
            let n = (request_len - sent).min(CHUNK as u64) as usize;
            pattern.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).await?;
            hasher.update(&buf[..n]);
            sent += n as u64;
        }
        writer.shutdown().await?;
        Ok::<_, io::Error>(hasher.finalize())
    };
    let receiving = async {
        let mut received = Vec::with_capacity(32);
        let mut pattern = Pattern::new(seed);
        let mut expected = vec![0u8; CHUNK];
        let mut buf = vec![0u8; CHUNK];
        let mut body = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>((received, body));
            }
            let mut data = &buf[..n];
            if received.len() < 32 {
                let take = (32 - received.len()).min(data.len());
                received.extend_from_slice(&data[..take]);
                data = &data[take..];
            }
            if !data.is_empty() {
                pattern.fill(&mut expected[..data.len()]);
                if data != &expected[..data.len()] {
                    return Err(io::Error::other(format!(
                        "the response differs from its pattern near byte {body}"
                    )));
                }
                body += data.len() as u64;
            }
        }
    };
    let (sent, received) = tokio::join!(sending, receiving);
    match kind {
        Kind::Honest => {
            let sent_hash = sent.context("sending")?;
            let (hash, body) = received.context("receiving")?;
            ensure!(
                hash.as_slice() == sent_hash.as_slice(),
                "the upstream's hash of the request differs"
            );
            ensure!(
                body == response_len,
                "a clean end after {body} of {response_len} response bytes"
            );
            Ok(())
        }
        Kind::Reset | Kind::Impostor => {
            // Must end in a reset; a clean end would pass a cut-off transfer as complete. The
            // kernel reports a reset once, to whichever call comes first: the other direction
            // may then see a plain end of stream.
            let is_reset = |err: &io::Error| err.kind() == io::ErrorKind::ConnectionReset;
            let received_reset = received.as_ref().err().is_some_and(is_reset);
            let sent_reset = sent.as_ref().err().is_some_and(is_reset);
            if received_reset || sent_reset {
                if kind == Kind::Impostor
                    && let Ok((hash, _)) = &received
                {
                    ensure!(hash.is_empty(), "an impostor got an answer");
                }
                return Ok(());
            }
            match received {
                Ok((hash, body)) => bail!(
                    "a clean end ({} hash bytes, {body} body bytes) where a reset was due",
                    hash.len()
                ),
                Err(err) => bail!("{err} where a reset was due"),
            }
        }
    }
}

/// The upstream's counts, as (name, value).
async fn upstream_stat(upstream: &str) -> Result<Vec<(String, u64)>> {
    let mut stream = TcpStream::connect(upstream)
        .await
        .context("cannot reach the soak upstream for its counts")?;
    stream.write_all(STAT).await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    reply
        .split_whitespace()
        .map(|field| {
            let (name, value) = field.split_once('=').context("the upstream's counts")?;
            Ok((name.to_owned(), value.parse()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn the_pattern_is_the_same_however_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut pattern = Pattern::new(7);
        let mut at = 0;
        for len in [1, 3, 8, 13, 64, 5, 906] {
            pattern.fill(&mut pieces[at..at + len]);
            at += len;
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        Pattern::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }
}
