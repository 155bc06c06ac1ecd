//! `linkgate-loadgen`: the load generators and test servers behind bench/compare.sh and
//! BENCHMARKS.md. Each measurement prints one `key=value` line on stdout. Not published: it
//! exists to measure the `linkgate` command and its peers.

mod soak;

use std::future::pending;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use linkgate::{
    Credentials, Gate, GateConfig, GatedListener, Key, KeyId, Keyring, ListenerConfig, Mode,
    ServeOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(name = "linkgate-loadgen")]
#[command(after_help = "Example (see bench/compare.sh for whole runs):
  linkgate-loadgen echo --listen 127.0.0.1:9000 &
  linkgate-loadgen rate --target 127.0.0.1:9000 --workers 32 --duration 5s")]
struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// A plain TCP echo server (the upstream of the connection-rate and idle runs).
    Echo {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
    /// A sink: reads each connection to EOF, then answers its byte count and CRC-32.
    Sink {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
    /// Connection rate: workers connect, send 16 bytes, read the echo, close, repeatedly.
    Rate(RateArgs),
    /// The same loop in one process, library to library (linkgate::connect ↔ GatedListener).
    RateLib {
        #[command(flatten)]
        load: RateLoad,
        /// The mode the clients ask for.
        #[arg(long, default_value = "sealed-fs")]
        mode: Mode,
    },
    /// Bulk throughput to a sink, verified by byte count and CRC-32.
    Throughput {
        /// The chain's entry (a sink, directly or through proxies).
        #[arg(long, value_name = "ADDR")]
        target: String,
        /// Parallel streams.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// How long each stream sends.
        #[arg(long, default_value = "5s", value_parser = duration)]
        duration: Duration,
        /// Give up on a stream when one write, or the sink's answer, takes longer than this.
        #[arg(long, default_value = "20s", value_parser = duration)]
        stall_timeout: Duration,
    },
    /// The soak's upstream: hashes each request, answers a patterned response, or resets the
    /// connection halfway when the request asks it to.
    SoakUpstream {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
    /// The soak: connections of mixed sizes through each mode's connect entry and an impostor's,
    /// every transfer checked by SHA-256 and every reset required to arrive as a reset.
    Soak {
        /// An honest entry, as MODE=ADDR (repeat: connections go to each in turn).
        #[arg(long = "entry", value_name = "MODE=ADDR", required = true)]
        entries: Vec<String>,
        /// A connect entry whose key the gate does not know.
        #[arg(long, value_name = "ADDR")]
        impostor: String,
        /// The soak upstream (asked directly for its counts at the end).
        #[arg(long, value_name = "ADDR")]
        upstream: String,
        /// Connections in all.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Percent of honest connections the upstream resets halfway.
        #[arg(long, default_value_t = 3)]
        reset_pct: u64,
        /// Percent of connections made through the impostor.
        #[arg(long, default_value_t = 1)]
        impostor_pct: u64,
        /// Seed of the sizes and payloads (the same seed repeats the same soak).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Idle memory: open N connections (each echoes one byte), hold them, report RSS growth.
    Idle {
        /// The chain's entry (an echo server, directly or through proxies).
        #[arg(long, value_name = "ADDR")]
        target: String,
        /// Connections to open and hold.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Processes whose resident memory is measured (repeat for each).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
    },
}

#[derive(Debug, Args)]
struct RateArgs {
    /// The chain's entry (an echo server, directly or through proxies).
    #[arg(long, value_name = "ADDR")]
    target: String,
    #[command(flatten)]
    load: RateLoad,
}

#[derive(Debug, Clone, Args)]
struct RateLoad {
    /// Concurrent workers.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// How long to run.
    #[arg(long, default_value = "5s", value_parser = duration)]
    duration: Duration,
    /// A round that takes longer than this is abandoned and counted as an error, so one stalled
    /// connection cannot hold a worker (and the whole measurement) past its duration.
    #[arg(long, default_value = "10s", value_parser = duration)]
    round_timeout: Duration,
}

const PAYLOAD: &[u8; 16] = b"linkgate bench!\n";

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| err.to_string())
}

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    // One thread: a load generator should leave the cores to the chain it measures.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("linkgate-loadgen: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("linkgate-loadgen: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Echo { listen } => serve_plain(&listen, echo).await,
        BenchCommand::Sink { listen } => serve_plain(&listen, sink).await,
        BenchCommand::Rate(args) => {
            let target = args.target;
            report_rate(rate(args.load, move || plain_round(target.clone())).await)
        }
        BenchCommand::RateLib { load, mode } => rate_lib(load, mode).await,
        BenchCommand::Throughput {
            target,
            streams,
            duration,
            stall_timeout,
        } => throughput(&target, streams, duration, stall_timeout).await,
        BenchCommand::Idle {
            target,
            connections,
            pids,
        } => idle(&target, connections, &pids).await,
        BenchCommand::SoakUpstream { listen } => soak::upstream(&listen).await,
        BenchCommand::Soak {
            entries,
            impostor,
            upstream,
            connections,
            concurrency,
            reset_pct,
            impostor_pct,
            seed,
        } => {
            let honest = entries
                .iter()
                .map(|entry| {
                    entry
                        .split_once('=')
                        .map(|(mode, addr)| (mode.to_owned(), addr.to_owned()))
                        .with_context(|| format!("--entry {entry:?} is not MODE=ADDR"))
                })
                .collect::<Result<Vec<_>>>()?;
            let entries = soak::Entries { honest, impostor };
            let plan = soak::SoakPlan {
                connections,
                concurrency,
                reset_pct,
                impostor_pct,
                upstream,
                seed,
            };
            soak::run(entries, plan).await
        }
    }
}

async fn serve_plain<F, Fut>(listen: &str, handler: F) -> Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("bench server: listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(handler(stream));
    }
}

async fn echo(stream: impl AsyncRead + AsyncWrite) -> io::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await
}

async fn sink(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut count = 0u64;
    let mut crc = crc32fast::Hasher::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        count += n as u64;
    }
    let mut reply = count.to_be_bytes().to_vec();
    reply.extend_from_slice(&crc.finalize().to_be_bytes());
    stream.write_all(&reply).await
}

/// One connect / 16 bytes out / 16 bytes back / close.
async fn plain_round(target: String) -> Result<()> {
    let stream = TcpStream::connect(target.as_str()).await?;
    stream.set_nodelay(true)?;
    echo_round(stream).await
}

async fn echo_round(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> Result<()> {
    stream.write_all(PAYLOAD).await?;
    let mut back = [0u8; PAYLOAD.len()];
    stream.read_exact(&mut back).await?;
    ensure!(&back == PAYLOAD, "echo differs");
    Ok(())
}

struct RateResult {
    rounds: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

/// Runs `round` from `load.workers` workers for `load.duration`.
async fn rate<F, Fut>(load: RateLoad, round: F) -> RateResult
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let round = Arc::new(round);
    let started = Instant::now();
    // A duration too long to add to a clock reading runs "forever" (capped at a year).
    let deadline = started
        .checked_add(load.duration)
        .unwrap_or(started + Duration::from_secs(365 * 86_400));
    let round_timeout = load.round_timeout;
    let mut workers = Vec::new();
    for _ in 0..load.workers {
        let round = Arc::clone(&round);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let (mut errors, mut first_error) = (0, None);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match tokio::time::timeout(round_timeout, round()).await {
                    Ok(Ok(())) => {
                        latencies.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(Err(err)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| err.to_string());
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("round timed out after {round_timeout:?}")
                        });
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut result = RateResult {
        rounds: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        first_error: None,
    };
    for worker in workers {
        if let Ok((latencies, errors, first_error)) = worker.await {
            result.latencies_us.extend(latencies);
            result.errors += errors;
            result.first_error = result.first_error.or(first_error);
        }
    }
    result.elapsed = started.elapsed();
    result.rounds = result.latencies_us.len();
    result
}

fn report_rate(mut result: RateResult) -> Result<()> {
    result.latencies_us.sort_unstable();
    let percentile = |p: f64| -> u32 {
        let n = result.latencies_us.len();
        if n == 0 {
            return 0;
        }
        result.latencies_us[((n as f64 * p) as usize).min(n - 1)]
    };
    println!(
        "conn_per_s={:.0} rounds={} errors={} p50_us={} p99_us={} p999_us={}",
        result.rounds as f64 / result.elapsed.as_secs_f64(),
        result.rounds,
        result.errors,
        percentile(0.50),
        percentile(0.99),
        percentile(0.999),
    );
    if let Some(err) = &result.first_error {
        eprintln!("first error: {err}");
    }
    ensure!(result.rounds > 0, "no round succeeded");
    Ok(())
}

/// (b): client SDK ↔ GatedListener in one process, no proxy.
async fn rate_lib(load: RateLoad, mode: Mode) -> Result<()> {
    let key = Key::generate(KeyId::new("bench")?)?;
    let mut keyring = Keyring::new();
    keyring.insert(key.clone());
    let gate = Gate::with_config(keyring, GateConfig::new().with_plain_allowed(true))?;
    // Workers share one source IP: allow them all to handshake at once.
    let config = ListenerConfig::new().with_max_handshakes_per_source(load.workers.max(64));
    let listener =
        GatedListener::with_config(TcpListener::bind("127.0.0.1:0").await?, gate, config);
    let addr = listener.local_addr()?;
    tokio::spawn(linkgate::serve_with_shutdown(
        listener,
        ServeOptions::new(),
        pending(),
        |stream| async move {
            let _ = echo(stream).await;
        },
    ));
    let credentials = Arc::new(Credentials::new(key).with_mode(mode));
    report_rate(
        rate(load, move || {
            let credentials = Arc::clone(&credentials);
            async move { echo_round(linkgate::connect(addr, &credentials).await?).await }
        })
        .await,
    )
}

/// (c): N streams send for `duration`, then half-close; the sink answers count and CRC.
async fn throughput(
    target: &str,
    streams: usize,
    duration: Duration,
    stall_timeout: Duration,
) -> Result<()> {
    let block: Arc<Vec<u8>> = Arc::new(
        (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream_index in 0..streams {
        let (target, block) = (target.to_owned(), Arc::clone(&block));
        tasks.push(tokio::spawn(async move {
            one_stream(&target, &block, stream_index, duration, stall_timeout).await
        }));
    }
    let mut total = 0u64;
    for task in tasks {
        total += task.await.context("stream task")??;
    }
    let elapsed = started.elapsed();
    println!(
        "mib_per_s={:.0} bytes={total} streams={streams} seconds={:.2} verified=count+crc32",
        total as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

async fn one_stream(
    target: &str,
    block: &[u8],
    index: usize,
    duration: Duration,
    stall: Duration,
) -> Result<u64> {
    const CHUNK: usize = 256 * 1024;
    let mut stream = tokio::time::timeout(stall, TcpStream::connect(target))
        .await
        .with_context(|| format!("stream {index}: connecting took over {stall:?}"))??;
    let now = Instant::now();
    let deadline = now
        .checked_add(duration)
        .unwrap_or(now + Duration::from_secs(365 * 86_400));
    let (mut sent, mut crc) = (0u64, crc32fast::Hasher::new());
    let mut offset = (index * 4099) % (block.len() - CHUNK);
    while Instant::now() < deadline {
        let chunk = &block[offset..offset + CHUNK];
        tokio::time::timeout(stall, stream.write_all(chunk))
            .await
            .with_context(|| format!("stream {index}: a write stalled for {stall:?}"))??;
        crc.update(chunk);
        sent += CHUNK as u64;
        offset = (offset + 7919) % (block.len() - CHUNK);
    }
    stream.shutdown().await?;
    let mut reply = [0u8; 12];
    tokio::time::timeout(stall, stream.read_exact(&mut reply))
        .await
        .with_context(|| format!("stream {index}: no answer from the sink within {stall:?}"))?
        .context("the sink's count and checksum never came back")?;
    let received = u64::from_be_bytes(reply[..8].try_into()?);
    let received_crc = u32::from_be_bytes(reply[8..].try_into()?);
    ensure!(
        received == sent,
        "stream {index}: sent {sent} bytes, the sink got {received}"
    );
    ensure!(
        received_crc == crc.finalize(),
        "stream {index}: checksum mismatch"
    );
    Ok(sent)
}

/// (d): hold `connections` admitted connections open and report RSS growth per connection.
async fn idle(target: &str, connections: usize, pids: &[u32]) -> Result<()> {
    if pids.is_empty() {
        bail!("give the processes to measure with --pid");
    }
    let before_each = rss_kib_each(pids)?;
    let before: u64 = before_each.iter().sum();
    let gate = Arc::new(Semaphore::new(32));
    let target: Arc<str> = target.into();
    let mut opening = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (gate, target) = (Arc::clone(&gate), Arc::clone(&target));
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let mut stream = TcpStream::connect(&*target).await?;
            stream.write_all(b"x").await?;
            let mut back = [0u8; 1];
            stream.read_exact(&mut back).await?;
            Ok::<_, anyhow::Error>(stream)
        }));
    }
    let mut held = Vec::with_capacity(connections);
    let (mut failed, mut first_error) = (0usize, None);
    for task in opening {
        match task.await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(err)) => {
                failed += 1;
                first_error.get_or_insert_with(|| err.to_string());
            }
            Err(err) => {
                failed += 1;
                first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    ensure!(
        !held.is_empty(),
        "no connection could be opened: {first_error:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_each = rss_kib_each(pids)?;
    let after: u64 = after_each.iter().sum();
    let by_pid: Vec<String> = pids
        .iter()
        .zip(before_each.iter().zip(&after_each))
        .map(|(pid, (b, a))| format!("{pid}:{:.2}", (*a as f64 - *b as f64) / held.len() as f64))
        .collect();
    println!(
        "kib_per_conn={:.2} connections={} failed={failed} rss_before_kib={before} rss_after_kib={after} kib_per_conn_by_pid={}",
        (after as f64 - before as f64) / held.len() as f64,
        held.len(),
        by_pid.join(",")
    );
    if let Some(err) = first_error {
        eprintln!("{failed} connections failed; first: {err}");
    }
    Ok(())
}

fn rss_kib_each(pids: &[u32]) -> Result<Vec<u64>> {
    let mut each = Vec::with_capacity(pids.len());
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no VmRSS for pid {pid}"))?;
        each.push(rss);
    }
    Ok(each)
}
