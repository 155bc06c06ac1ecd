//! An HTTP client through the gate: `linkgate::connect` authenticates, then hyper's client
//! connection handshake runs over the returned stream.
//!
//! ```sh
//! cargo run --features axum --example axum_server -- 127.0.0.1:8000 keys/
//! cargo run --example hyper_client -- 127.0.0.1:8000 keys/alice.key /whoami
//! ```
//! (or against `cargo run --example hyper_server -- 127.0.0.1:8001 keys/`).

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use linkgate::{Credentials, Key};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());
    let key_path = args.next().unwrap_or_else(|| "keys/alice.key".into());
    let path = args.next().unwrap_or_else(|| "/whoami".into());

    let credentials = Credentials::new(Key::from_file(&key_path)?);
    let stream = linkgate::connect(server.as_str(), &credentials).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("connection error: {err}");
        }
    });
    let request = Request::get(path.as_str())
        .header("host", server.as_str())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    println!("{}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
