//! hyper without axum: a hyper service over a `GatedListener`, one task per admitted
//! connection, the caller's key id passed into the service.
//!
//! ```sh
//! cargo run --example hyper_server -- 127.0.0.1:8001 keys/
//! cargo run --example hyper_client -- 127.0.0.1:8001 keys/alice.key /
//! ```

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use linkgate::{Gate, GatedListener, Keyring};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8001".into());
    let keys = args.next().unwrap_or_else(|| "keys/".into());
    let listener = GatedListener::bind(&addr, Gate::new(Keyring::load(&keys)?)?).await?;
    println!("gated hyper server on {addr}, keys from {keys}");
    linkgate::serve_with(listener, |stream| async move {
        let who = stream.key_id().clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let body = format!("{} {} for {who}\n", request.method(), request.uri());
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
        });
        if let Err(err) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            eprintln!("connection error: {err}");
        }
    })
    .await;
    Ok(())
}
