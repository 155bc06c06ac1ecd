//! The client SDK: authenticate to a linkgate server and talk through the connection, with
//! each failure explained.
//!
//! Against the echo server example (which upper-cases):
//!
//! ```sh
//! cargo run --example echo_server -- 127.0.0.1:7000 keys/
//! cargo run --example client -- 127.0.0.1:7000 keys/alice.key "hello, gate"
//! ```

use std::process::ExitCode;
use std::time::Duration;

use linkgate::{Credentials, Error, Key, Rejection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let key_path = args.next().unwrap_or_else(|| "keys/alice.key".into());
    let message = args.next().unwrap_or_else(|| "hello, gate".into());

    // A key file that is missing, not hex, too short or readable by others is refused here,
    // with the file named in the message.
    let key = match Key::from_file(&key_path) {
        Ok(key) => key,
        Err(err) => {
            eprintln!("cannot use the key: {err}");
            return ExitCode::FAILURE;
        }
    };
    let credentials = Credentials::new(key).with_timeout(Duration::from_secs(5));

    let mut stream = match linkgate::connect(server.as_str(), &credentials).await {
        Ok(stream) => stream,
        Err(err) => {
            let advice = match &err {
                Error::Rejected(Rejection::Denied) => {
                    "the server does not accept this key under this id"
                }
                Error::Rejected(Rejection::ImpostorServer) => {
                    "do not send anything there: it does not hold the key"
                }
                Error::Rejected(Rejection::NotLinkgate(_)) => {
                    "wrong port? that server does not speak linkgate/1"
                }
                Error::Rejected(Rejection::RefusedAsMalformed(_)) => {
                    "the server does not allow this mode"
                }
                Error::Timeout(_) => "the server did not answer in time",
                Error::Io(_) => "is the server running and reachable?",
                _ => "see the message",
            };
            eprintln!("not admitted by {server}: {err} ({advice})");
            return ExitCode::FAILURE;
        }
    };
    println!("admitted as {} ({})", stream.key_id(), stream.mode());

    let result = async {
        stream.write_all(message.as_bytes()).await?;
        let mut reply = vec![0u8; message.len()];
        stream.read_exact(&mut reply).await?;
        // A clean end (close_notify): without it the server would see the connection cut off,
        // which is how truncation looks.
        stream.shutdown().await?;
        Ok::<_, std::io::Error>(reply)
    }
    .await;
    match result {
        Ok(reply) => {
            println!(
                "sent {message:?}, got {:?}",
                String::from_utf8_lossy(&reply)
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("connection failed after admission: {err}");
            ExitCode::FAILURE
        }
    }
}
