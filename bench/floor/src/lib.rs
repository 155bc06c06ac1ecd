//! What both floors share: the command line and the threads. As in linkgate, there is a thread
//! per core on each side, each running a single-threaded runtime. The client side's threads each
//! open a tunnel, then accept through their own `SO_REUSEPORT` listener (as `connect --mux`
//! does); the server side accepts tunnels on one listener and hands them to its threads in turn
//! (as `serve` hands each to its least busy tunnel thread). With `SO_REUSEPORT` there, two
//! tunnels could hash to one thread and leave the other idle, which cost a tenth of the rate in
//! some starts.
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// jemalloc, as the linkgate command uses.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

enum Side {
    /// Accept local connections on `listen`; carry each as a stream of this thread's tunnel to
    /// `server`.
    Client {
        listen: SocketAddr,
        server: SocketAddr,
    },
    /// Accept tunnels on `listen`; connect each stream to `upstream`.
    Server {
        listen: SocketAddr,
        upstream: SocketAddr,
    },
}

struct Args {
    side: Side,
    threads: usize,
}

const USAGE: &str = "usage: client LISTEN SERVER [THREADS] | server LISTEN UPSTREAM [THREADS] (THREADS: one per core)";

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |i: usize| -> Result<SocketAddr, String> {
        let text = args.get(i).ok_or(USAGE)?;
        text.parse()
            .map_err(|_| format!("not an address: {text} ({USAGE})"))
    };
    let threads = match args.get(3) {
        None => std::thread::available_parallelism().map_or(1, usize::from),
        Some(text) => match text.parse() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("not a thread count: {text} ({USAGE})")),
        },
    };
    let side = match args.first().map(String::as_str) {
        Some("client") => Side::Client {
            listen: addr(1)?,
            server: addr(2)?,
        },
        Some("server") => Side::Server {
            listen: addr(1)?,
            upstream: addr(2)?,
        },
        _ => return Err(USAGE.to_owned()),
    };
    Ok(Args { side, threads })
}

/// Runs `thread()` as a task on `threads` threads, each with its own current-thread runtime. A
/// thread that fails ends the process, so that no half-working side is measured.
fn run_threads<F, Fut>(threads: usize, thread: F) -> Result<(), String>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut handles = Vec::new();
    for _ in 0..threads {
        let thread = thread.clone();
        handles.push(std::thread::spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| format!("runtime: {e}"))
                .and_then(|runtime| {
                    runtime
                        .block_on(async { tokio::spawn(thread()).await })
                        .map_err(|_| "a thread's task panicked".to_owned())?
                });
            if let Err(e) = result {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }));
    }
    for handle in handles {
        handle.join().map_err(|_| "a thread panicked".to_owned())?;
    }
    Ok(())
}

/// Accepts on `listen` and hands the accepted connections to `threads` threads in turn, each
/// running `handle(connection)` on its own current-thread runtime. Returns only on failure.
fn run_accepted_on_threads<F, Fut>(
    listen: SocketAddr,
    threads: usize,
    handle: F,
) -> Result<(), String>
where
    F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut queues = Vec::new();
    for _ in 0..threads {
        let (queue, mut accepted) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        queues.push(queue);
        let handle = handle.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        // Each tunnel is a task of its thread's runtime, as in `serve`.
        std::thread::spawn(move || {
            runtime.block_on(async move {
                while let Some(connection) = accepted.recv().await {
                    match TcpStream::from_std(connection) {
                        Ok(connection) => drop(tokio::spawn(handle(connection))),
                        Err(e) => eprintln!("register: {e}"),
                    }
                }
            });
        });
    }
    let listener =
        std::net::TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    for next in (0..threads).cycle() {
        let connection = listener.accept().map_err(|e| format!("accept: {e}"))?.0;
        connection
            .set_nonblocking(true)
            .map_err(|e| format!("accept: {e}"))?;
        queues[next]
            .send(connection)
            .map_err(|_| "a thread ended".to_owned())?;
    }
    Ok(())
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A floor's `main`: parses the command line, then runs `client(tunnel, listener)` on each
/// client thread with its tunnel and its listener, or `server(tunnel, upstream)` for each tunnel
/// the server side accepts. An error is one line and exit 1.
pub fn main_with<C, CF, S, SF>(client: C, server: S)
where
    C: Fn(TcpStream, TcpListener) -> CF + Clone + Send + 'static,
    CF: Future<Output = Result<(), String>> + Send + 'static,
    S: Fn(TcpStream, SocketAddr) -> SF + Clone + Send + 'static,
    SF: Future<Output = ()> + Send + 'static,
{
    let result = parse_args().and_then(|args| match args.side {
        Side::Client { listen, server: to } => run_threads(args.threads, move || {
            let client = client.clone();
            async move {
                // The tunnel first, so that nothing is accepted that could not be carried.
                let tunnel = TcpStream::connect(to)
                    .await
                    .map_err(|e| format!("tunnel to {to}: {e}"))?;
                let _ = tunnel.set_nodelay(true);
                let listener =
                    reuseport_listener(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
                client(tunnel, listener).await
            }
        }),
        Side::Server { listen, upstream } => {
            run_accepted_on_threads(listen, args.threads, move |tunnel| server(tunnel, upstream))
        }
    });
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
