//! A raw tokio server wrapped by the gate. The server's own code (`handle`) is unchanged: it
//! upper-cases what it receives, like the original Python recipe's server. Wrapping it is one
//! call, `linkgate::serve_with`, and the handler learns who connected.
//!
//! Run it, with a key for the client in `keys/`:
//!
//! ```sh
//! cargo run -- keygen --out keys/alice.key
//! cargo run --example echo_server -- 127.0.0.1:7000 keys/
//! ```
//!
//! then talk to it with the client example (`cargo run --example client -- 127.0.0.1:7000
//! keys/alice.key`) or `cargo run -- check --server 127.0.0.1:7000 --key keys/alice.key`.

use linkgate::{Gate, GatedListener, Keyring};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The existing server's connection handler. The only change for the gate: it takes any stream,
/// not a `TcpStream`, so it serves admitted connections in every mode (sealed ones included).
async fn handle(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        buf[..n].make_ascii_uppercase();
        stream.write_all(&buf[..n]).await?;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let keys = args.next().unwrap_or_else(|| "keys/".into());

    // Before: `let listener = TcpListener::bind(addr).await?;` and an accept loop calling handle.
    let gate = Gate::new(Keyring::load(&keys)?)?;
    let listener = GatedListener::bind(&addr, gate).await?;
    println!("upper-casing echo server on {addr}, keys from {keys}");
    linkgate::serve_with(listener, |stream| async move {
        let who = stream.admission().clone();
        println!("{} connected ({})", who.key_id(), who.mode());
        if let Err(err) = handle(stream).await {
            eprintln!("{}: {err}", who.key_id());
        }
    })
    .await;
    Ok(())
}
