//! A gated echo server on loopback: a legitimate client is admitted and echoed, an impostor is
//! refused. Run: `cargo run --example demo`.

use linkgate::{Credentials, Gate, GatedListener, Key, KeyId, Keyring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let alice = Key::generate(KeyId::new("alice")?)?;
    let mut keyring = Keyring::new();
    keyring.insert(alice.clone());
    let mut listener = GatedListener::bind("127.0.0.1:0", Gate::new(keyring)?).await?;
    let addr = listener.local_addr()?;
    println!("gated echo server on {addr}");
    tokio::spawn(async move {
        loop {
            let (mut stream, who) = listener.accept().await;
            println!("server: admitted {} from {}", who.key_id, who.peer);
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });

    let mut stream = linkgate::connect(addr, &Credentials::new(alice)).await?;
    stream.write_all(b"hello through the gate").await?;
    let mut echoed = [0u8; 22];
    stream.read_exact(&mut echoed).await?;
    println!(
        "alice:  admitted, echo {:?}",
        String::from_utf8_lossy(&echoed)
    );

    let impostor = Key::generate(KeyId::new("alice")?)?;
    match linkgate::connect(addr, &Credentials::new(impostor)).await {
        Ok(_) => return Err("the impostor was admitted".into()),
        Err(err) => println!("impostor: refused ({err})"),
    }
    Ok(())
}
