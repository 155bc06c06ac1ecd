//! An HTTP API behind the gate, in-process: `axum::serve` over a `GatedListener`. Only
//! admitted clients reach the router, and handlers read the caller's key id.
//!
//! ```sh
//! cargo run -- keygen --out keys/alice.key
//! cargo run --features axum --example axum_server -- 127.0.0.1:8000 keys/
//! cargo run --example hyper_client -- 127.0.0.1:8000 keys/alice.key /whoami
//! ```
//!
//! `curl http://127.0.0.1:8000/whoami` gets no HTTP response: it never proved a key.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use linkgate::{Admission, Gate, GatedListener, Keyring};

async fn whoami(ConnectInfo(caller): ConnectInfo<Admission>) -> String {
    let peer = caller.peer().map(ToString::to_string).unwrap_or_default();
    format!(
        "you are {} (from {peer}, mode {})\n",
        caller.key_id(),
        caller.mode()
    )
}

async fn admin_only(
    ConnectInfo(caller): ConnectInfo<Admission>,
) -> (axum::http::StatusCode, String) {
    // Authorize per client: the key id is authenticated.
    if caller.key_id().as_str() == "admin" {
        (axum::http::StatusCode::OK, "welcome, admin\n".into())
    } else {
        (
            axum::http::StatusCode::FORBIDDEN,
            format!("{} may not\n", caller.key_id()),
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());
    let keys = args.next().unwrap_or_else(|| "keys/".into());

    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/admin", get(admin_only));
    // Before: `let listener = tokio::net::TcpListener::bind(&addr).await?;`
    let listener = GatedListener::bind(&addr, Gate::new(Keyring::load(&keys)?)?).await?;
    println!("gated HTTP API on {addr}, keys from {keys}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Admission>(),
    )
    .await?;
    Ok(())
}
