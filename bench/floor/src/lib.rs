//! What both floors share: the command line and the threads. As in linkgate, each thread runs a
//! single-threaded runtime. The client side accepts on every thread through its own
//! `SO_REUSEPORT` listener (as `connect --mux` does); the server side accepts tunnels on one
//! listener and hands them to its threads in turn (as `serve` hands each to its least busy
//! tunnel thread): with `SO_REUSEPORT` there, two tunnels can hash to one thread and leave the
//! other idle, which cost a tenth of the rate in some starts.
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// jemalloc, as the linkgate command uses.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub enum Side {
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

pub struct Args {
    pub side: Side,
    pub threads: usize,
}

const USAGE: &str =
    "usage: client LISTEN SERVER [THREADS] | server LISTEN UPSTREAM [THREADS] (THREADS: 2)";

pub fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |i: usize| -> Result<SocketAddr, String> {
        let text = args.get(i).ok_or(USAGE)?;
        text.parse()
            .map_err(|_| format!("not an address: {text} ({USAGE})"))
    };
    let threads = match args.get(3) {
        None => 2,
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

/// Runs `thread(listener)` on `threads` threads, each with its own current-thread runtime and its
/// own `SO_REUSEPORT` listener on `listen`. Returns only if a thread fails to start.
pub fn run_threads<F, Fut>(listen: SocketAddr, threads: usize, thread: F) -> Result<(), String>
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()>,
{
    let mut handles = Vec::new();
    for _ in 0..threads {
        let thread = thread.clone();
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            let listener = runtime
                .block_on(async { listener(listen) })
                .map_err(|e| format!("listen on {listen}: {e}"))?;
            runtime.block_on(thread(listener));
            Ok(())
        }));
    }
    for handle in handles {
        handle
            .join()
            .map_err(|_| "a thread panicked".to_owned())??;
    }
    Ok(())
}

/// Accepts on `listen` and hands the accepted connections to `threads` threads in turn, each
/// running `handle(connection)` on its own current-thread runtime. Returns only on failure.
pub fn run_accepted_on_threads<F, Fut>(
    listen: SocketAddr,
    threads: usize,
    handle: F,
) -> Result<(), String>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + 'static,
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
        std::thread::spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                while let Some(connection) = accepted.recv().await {
                    match tokio::net::TcpStream::from_std(connection) {
                        Ok(connection) => drop(tokio::task::spawn_local(handle(connection))),
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

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
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

/// Runs `main`, printing its error as one line with a nonzero exit.
pub fn exit_on_error(result: Result<(), String>) {
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
