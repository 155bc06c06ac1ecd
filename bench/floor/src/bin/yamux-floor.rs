//! A bare yamux TCP tunnel: one yamux session per thread over plain TCP, one stream per client
//! connection, an upstream connect per stream. yamux has no answer to an open, so the client's
//! bytes go as soon as the stream is open; its `Connection` must be polled by one task, which
//! opens streams for the accepting loop through a channel (its documented pattern). Like
//! h2-floor, a floor for the rate of connections that succeed: failures are not carried as
//! resets.
use linkgate_mux_floor::main_with;
use std::collections::VecDeque;
use std::task::Poll;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

const MAX_STREAMS: usize = 4096;

fn config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS);
    // yamux requires room for every stream's default 256 KiB window.
    config.set_max_connection_receive_window(Some(MAX_STREAMS * 256 * 1024));
    config
}

fn main() {
    main_with(client, server);
}

async fn client(tunnel: TcpStream, listener: TcpListener) -> Result<(), String> {
    let mut connection = yamux::Connection::new(tunnel.compat(), config(), yamux::Mode::Client);
    let (opens, mut requested) = mpsc::unbounded_channel::<oneshot::Sender<yamux::Stream>>();
    tokio::spawn(async move {
        let mut waiting = VecDeque::new();
        std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(open)) = requested.poll_recv(cx) {
                waiting.push_back(open);
            }
            while let Some(open) = waiting.pop_front() {
                match connection.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => drop(open.send(stream)),
                    Poll::Ready(Err(e)) => {
                        eprintln!("tunnel: {e}");
                        return Poll::Ready(());
                    }
                    Poll::Pending => {
                        waiting.push_front(open);
                        break;
                    }
                }
            }
            // Drives the session's I/O; the server opens no streams.
            loop {
                match connection.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    });
    loop {
        let (mut local, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let _ = local.set_nodelay(true);
        let (open, opened) = oneshot::channel();
        if opens.send(open).is_err() {
            return Err("the tunnel ended".to_owned());
        }
        tokio::spawn(async move {
            let Ok(stream) = opened.await else { return };
            let _ = tokio::io::copy_bidirectional(&mut local, &mut stream.compat()).await;
        });
    }
}

async fn server(tunnel: TcpStream, upstream: std::net::SocketAddr) {
    let _ = tunnel.set_nodelay(true);
    let mut connection = yamux::Connection::new(tunnel.compat(), config(), yamux::Mode::Server);
    while let Some(Ok(stream)) = std::future::poll_fn(|cx| connection.poll_next_inbound(cx)).await {
        tokio::spawn(async move {
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut stream.compat(), &mut up).await;
        });
    }
}
