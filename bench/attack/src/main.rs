//! `linkgate-attack`: the availability attacks of RELIABILITY.md, and a legitimate client that
//! measures what they leave for it. Each run prints one `key=value` line on stdout. Not published:
//! it exists to measure the `linkgate` command under attack (bench/reliability.sh drives it).
//!
//! Attackers hold no key: they connect from many source addresses (bound before connecting, so
//! 127.0.0.0/8 on loopback, or a routed IPv6 prefix in a network namespace) and then say nothing,
//! which costs the gate a handshake slot until it times the connection out, sheds it or refuses
//! the source at accept.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use linkgate::{Credentials, Key, KeyId, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(name = "linkgate-attack")]
#[command(after_help = "Example (see bench/reliability.sh for whole runs):
  linkgate-attack hold --target 127.0.0.1:7000 --sources 127.0.1.0/24 --source-count 48 \\
      --connections 3072 --duration 30s &
  linkgate-attack legit --target 127.0.0.1:7000 --source 127.0.2.1 --key keys/legit.key")]
struct AttackArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hold N silent connections: each one that the gate closes is opened again.
    Hold {
        #[command(flatten)]
        attack: Attack,
        /// Connections held at once.
        #[arg(long, default_value_t = 3072)]
        connections: usize,
        /// Pause before reopening a connection the gate closed (0 makes this a flood).
        #[arg(long, default_value = "100ms", value_parser = duration)]
        reopen_delay: Duration,
    },
    /// Open silent connections at a fixed rate; each is held until the gate closes it.
    Reopen {
        #[command(flatten)]
        attack: Attack,
        /// New connections per second.
        #[arg(long, default_value_t = 400)]
        rate: u32,
    },
    /// Open silent connections as fast as possible: every worker reopens at once when the gate
    /// closes its connection.
    Flood {
        #[command(flatten)]
        attack: Attack,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 4096)]
        concurrency: usize,
    },
    /// A legitimate client: authenticates, echoes one byte through the gate's upstream, and
    /// reports how many attempts succeeded within the deadline.
    Legit(LegitArgs),
}

#[derive(Debug, Clone, Args)]
struct Attack {
    /// The gate.
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// The network the attacking source addresses come from.
    #[arg(long, value_name = "CIDR")]
    sources: IpNet,
    /// How many addresses of that network to use (its first hosts).
    #[arg(long, default_value_t = 48)]
    source_count: usize,
    /// How long to attack.
    #[arg(long, default_value = "30s", value_parser = duration)]
    duration: Duration,
}

#[derive(Debug, Args)]
struct LegitArgs {
    /// The gate.
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// The address to connect from (not one of the attackers').
    #[arg(long, value_name = "IP")]
    source: Option<IpAddr>,
    /// The key file (its stem is the key id).
    #[arg(long, value_name = "PATH")]
    key: String,
    /// The mode to ask for.
    #[arg(long, default_value = "sealed-fs")]
    mode: Mode,
    /// Attempts, one after the other.
    #[arg(long, default_value_t = 100)]
    attempts: usize,
    /// Pause between attempts.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    interval: Duration,
    /// An attempt counts as a success only if it is admitted and echoed within this.
    #[arg(long, default_value = "1s", value_parser = duration)]
    deadline: Duration,
    /// An attempt is abandoned after this (so late successes are still timed).
    #[arg(long, default_value = "5s", value_parser = duration)]
    give_up: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| err.to_string())
}

fn main() -> std::process::ExitCode {
    let args = AttackArgs::parse();
    // One thread: on a shared machine the attacker should not also take the gate's core.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("linkgate-attack: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("linkgate-attack: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: AttackArgs) -> Result<()> {
    match args.command {
        Command::Hold {
            attack,
            connections,
            reopen_delay,
        } => {
            let plan = Plan::new(&attack)?;
            plan.workers(connections, reopen_delay).await;
            plan.report("hold");
            Ok(())
        }
        Command::Reopen { attack, rate } => {
            ensure!(rate > 0, "--rate must be at least 1");
            let plan = Plan::new(&attack)?;
            plan.at_rate(rate).await;
            plan.report("reopen");
            Ok(())
        }
        Command::Flood {
            attack,
            concurrency,
        } => {
            let plan = Plan::new(&attack)?;
            plan.workers(concurrency, Duration::ZERO).await;
            plan.report("flood");
            Ok(())
        }
        Command::Legit(args) => legit(args).await,
    }
}

/// The first `count` host addresses of `net`.
fn source_addresses(net: IpNet, count: usize) -> Result<Vec<IpAddr>> {
    let sources: Vec<IpAddr> = net.hosts().take(count).collect();
    ensure!(
        sources.len() == count && count > 0,
        "{net} has {} host addresses, {count} asked for",
        sources.len()
    );
    Ok(sources)
}

/// Connects to `target` from `source` (any local address when `None`).
async fn connect_from(source: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(target).await
}

/// What the attackers saw, counted across all of them.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicU64,
    connect_failed: AtomicU64,
    /// Closed by the gate after its CHALLENGE (timed out or shed).
    closed_after_challenge: AtomicU64,
    /// Closed by the gate before any byte (refused at accept: a penalty or a full bound).
    closed_before_challenge: AtomicU64,
    open_now: AtomicU64,
    open_max: AtomicU64,
}

struct Plan {
    target: SocketAddr,
    sources: Vec<IpAddr>,
    duration: Duration,
    started: Instant,
    counts: Arc<Counts>,
}

impl Plan {
    fn new(attack: &Attack) -> Result<Self> {
        ensure!(
            attack.sources.addr().is_ipv4() == attack.target.is_ipv4(),
            "--sources and --target must be the same address family"
        );
        Ok(Self {
            target: attack.target,
            sources: source_addresses(attack.sources, attack.source_count)?,
            duration: attack.duration,
            started: Instant::now(),
            counts: Arc::default(),
        })
    }

    /// Completes at the attack's end: its duration, or SIGINT/SIGTERM (so a script can stop it
    /// when its measurement is done and still get the report).
    async fn end(&self) {
        let deadline = tokio::time::Instant::from_std(self.started + self.duration);
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return tokio::time::sleep_until(deadline).await;
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }

    /// `workers` loops, each holding one silent connection and reopening it `delay` after the
    /// gate closes it, until the attack's end.
    async fn workers(&self, workers: usize, delay: Duration) {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..workers {
            let source = self.sources[worker % self.sources.len()];
            let (target, counts) = (self.target, Arc::clone(&self.counts));
            tasks.spawn(async move {
                loop {
                    silent(source, target, &counts).await;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
        self.end().await;
        tasks.abort_all();
    }

    /// Opens one silent connection every 1/rate seconds until the attack's end.
    async fn at_rate(&self, rate: u32) {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = tokio::task::JoinSet::new();
        let end = self.end();
        tokio::pin!(end);
        let mut next = 0usize;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut end => break,
            }
            let source = self.sources[next % self.sources.len()];
            next += 1;
            let (target, counts) = (self.target, Arc::clone(&self.counts));
            tasks.spawn(async move { silent(source, target, &counts).await });
            // Reap finished ones so the set does not grow with the attack's length.
            while tasks.try_join_next().is_some() {}
        }
        tasks.abort_all();
    }

    fn report(&self, name: &str) {
        let c = &self.counts;
        let secs = self.started.elapsed().as_secs_f64();
        let opened = c.opened.load(Ordering::Relaxed);
        println!(
            "attack={name} seconds={secs:.1} sources={} opened={opened} opened_per_s={:.0} connect_failed={} closed_after_challenge={} closed_before_challenge={} open_max={}",
            self.sources.len(),
            opened as f64 / secs,
            c.connect_failed.load(Ordering::Relaxed),
            c.closed_after_challenge.load(Ordering::Relaxed),
            c.closed_before_challenge.load(Ordering::Relaxed),
            c.open_max.load(Ordering::Relaxed),
        );
    }
}

/// One silent connection: connect, read the CHALLENGE, send nothing, wait for the gate to close.
async fn silent(source: IpAddr, target: SocketAddr, counts: &Counts) {
    let mut stream = match connect_from(Some(source), target).await {
        Ok(stream) => stream,
        Err(_) => {
            counts.connect_failed.fetch_add(1, Ordering::Relaxed);
            // Out of ports or descriptors: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
    };
    counts.opened.fetch_add(1, Ordering::Relaxed);
    let open = counts.open_now.fetch_add(1, Ordering::Relaxed) + 1;
    counts.open_max.fetch_max(open, Ordering::Relaxed);
    let mut got = 0usize;
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    counts.open_now.fetch_sub(1, Ordering::Relaxed);
    let closed = if got == 0 {
        &counts.closed_before_challenge
    } else {
        &counts.closed_after_challenge
    };
    closed.fetch_add(1, Ordering::Relaxed);
}

async fn legit(args: LegitArgs) -> Result<()> {
    let path = std::path::Path::new(&args.key);
    let id = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .context("the key file's name gives no key id")?;
    let key = Key::from_file(path)
        .with_context(|| format!("cannot load {}", path.display()))?
        .with_id(KeyId::new(id)?);
    let credentials = Credentials::new(key).with_mode(args.mode);
    let (mut admitted, mut within) = (0usize, 0usize);
    let mut times = Vec::with_capacity(args.attempts);
    let mut failures: Vec<(String, usize)> = Vec::new();
    for attempt in 0..args.attempts {
        if attempt > 0 {
            tokio::time::sleep(args.interval).await;
        }
        let started = Instant::now();
        let result =
            tokio::time::timeout(args.give_up, once(args.source, args.target, &credentials)).await;
        let took = started.elapsed();
        let failure = match result {
            Ok(Ok(())) => {
                admitted += 1;
                times.push(took);
                if took <= args.deadline {
                    within += 1;
                }
                continue;
            }
            Ok(Err(err)) => format!("{err:#}"),
            Err(_) => format!(
                "no answer within {}",
                humantime::format_duration(args.give_up)
            ),
        };
        match failures.iter_mut().find(|(reason, _)| *reason == failure) {
            Some((_, count)) => *count += 1,
            None => failures.push((failure, 1)),
        }
    }
    times.sort();
    let ms = |q: f64| -> String {
        if times.is_empty() {
            return "-".to_owned();
        }
        let index = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        format!("{:.1}", times[index].as_secs_f64() * 1000.0)
    };
    println!(
        "attempts={} admitted={admitted} within_deadline={within} within_pct={:.1} p50_ms={} p99_ms={} max_ms={}",
        args.attempts,
        within as f64 * 100.0 / args.attempts.max(1) as f64,
        ms(0.5),
        ms(0.99),
        ms(1.0),
    );
    for (reason, count) in failures {
        eprintln!("{count} attempts failed: {reason}");
    }
    Ok(())
}

/// One legitimate round: connect, authenticate, echo one byte, close.
async fn once(source: Option<IpAddr>, target: SocketAddr, credentials: &Credentials) -> Result<()> {
    let stream = connect_from(source, target)
        .await
        .context("cannot connect")?;
    let mut admitted = linkgate::authenticate(stream, credentials).await?;
    admitted.write_all(b"x").await.context("write")?;
    let mut back = [0u8; 1];
    admitted.read_exact(&mut back).await.context("echo")?;
    if back != *b"x" {
        bail!("the echo came back wrong");
    }
    // A clean close (close_notify both ways in the sealed modes), as a well-behaved client.
    admitted.shutdown().await.context("shutdown")?;
    let mut rest = Vec::new();
    admitted.read_to_end(&mut rest).await.context("close")?;
    ensure!(rest.is_empty(), "bytes after the echo");
    Ok(())
}
