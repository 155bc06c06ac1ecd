//! Python interop, with real `python3` processes: python/linkgate.py against the Rust gate and
//! client, the original recipe's code against `--protocol seed`, and the Python unit tests.
//! Without python3 on the machine, each test prints that it was skipped and why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use linkgate::{Credentials, Error, Key, Mode, Rejection};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::process::{Linkgate, check, keygen, start_serve};

fn python3() -> Option<Command> {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => Some(Command::new("python3")),
        _ => {
            println!("skipped: python3 is not installed, so the Python interop tests cannot run");
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

fn run_python(args: &[&str]) -> Option<Output> {
    let mut python = python3()?;
    Some(python.args(args).output().expect("run python3"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn_python(args: &[&str]) -> Option<Linkgate> {
    let mut python = python3()?;
    python.args(args);
    Some(Linkgate::spawn_command(python))
}

/// The port a Python server printed as "listening PORT".
async fn python_port(server: &Linkgate) -> String {
    let line = server.wait_for_stdout(&["listening"]).await;
    line.split_whitespace().nth(1).expect("a port").to_owned()
}

/// A key file holding `secret` (any length), mode 0600.
fn raw_key_file(dir: &Path, id: &str, secret: &[u8]) -> PathBuf {
    let path = dir.join(format!("{id}.key"));
    std::fs::write(&path, hex::encode(secret)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

#[test]
fn python_unit_tests_pass() {
    let python_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    let Some(out) = run_python(&[
        "-m",
        "unittest",
        "discover",
        "-s",
        python_dir.to_str().unwrap(),
        "-v",
    ]) else {
        return;
    };
    let report = String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "Python unit tests failed:\n{report}");
    assert!(
        report.contains("OK") && report.contains("test_protocol_md_vector"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_through_the_rust_gate() {
    if python3().is_none() {
        return;
    }
    let keys = TempDir::new().unwrap();
    let key = keygen(keys.path(), "alice");
    // The stdlib-only Python client speaks plain mode, which a gate admits only when allowed.
    let (serve, gate) = start_serve(keys.path(), None, &["--allow-plain"]).await;
    let (host, port) = (gate.ip().to_string(), gate.port().to_string());
    let client = script("client.py");

    let args = [
        client.to_str().unwrap(),
        &host,
        &port,
        key.to_str().unwrap(),
        "alice",
        "hello from python",
    ];
    let out = run_python(&args).unwrap();
    assert_eq!(
        stdout(&out),
        "admitted\necho hello from python\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serve.wait_for_log(&["admitted", "key_id=alice"]).await;

    let other = TempDir::new().unwrap();
    let wrong = keygen(other.path(), "alice");
    let args = [
        client.to_str().unwrap(),
        &host,
        &port,
        wrong.to_str().unwrap(),
        "alice",
        "x",
    ];
    let out = run_python(&args).unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "Denied: denied by server\n");
    serve
        .wait_for_log(&["connection rejected", "wrong proof for key id alice"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_clients_against_a_python_server() {
    let keys = TempDir::new().unwrap();
    let key_path = keygen(keys.path(), "alice");
    let Some(server) = spawn_python(&[
        script("server.py").to_str().unwrap(),
        "admit",
        keys.path().to_str().unwrap(),
        "3",
    ]) else {
        return;
    };
    let addr = format!("127.0.0.1:{}", python_port(&server).await);

    // `linkgate check` (the stdlib-only Python server speaks plain mode).
    let out = check(&addr, &key_path, &["--mode", "plain"]);
    assert_eq!(
        stdout(&out),
        "admitted as alice (mode plain, upstream reachable)\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for_stdout(&["admitted alice"]).await;

    // The library, with bytes both ways.
    let credentials = Credentials::new(Key::from_file(&key_path).unwrap()).with_mode(Mode::Plain);
    let mut stream = linkgate::connect(addr.as_str(), &credentials)
        .await
        .unwrap();
    stream.write_all(b"ping from rust").await.unwrap();
    let mut echoed = [0u8; 14];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping from rust");
    drop(stream);

    // A wrong key is denied by the Python server, and it says why.
    let other = TempDir::new().unwrap();
    let wrong = keygen(other.path(), "alice");
    let out = check(&addr, &wrong, &["--mode", "plain"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied for key id alice"));
    server
        .wait_for_stdout(&["refused Denied: denied: wrong proof for key id alice"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_server_with_the_wrong_key_is_an_impostor() {
    let client_keys = TempDir::new().unwrap();
    let key_path = keygen(client_keys.path(), "alice");
    let impostor_keys = TempDir::new().unwrap();
    keygen(impostor_keys.path(), "alice");
    let Some(server) = spawn_python(&[
        script("server.py").to_str().unwrap(),
        "impostor",
        impostor_keys.path().to_str().unwrap(),
        "2",
    ]) else {
        return;
    };
    let addr = format!("127.0.0.1:{}", python_port(&server).await);

    let out = check(&addr, &key_path, &["--mode", "plain"]);
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("the server failed to prove the key: possible impostor"),
        "{message}"
    );
    server.wait_for_stdout(&["fooled?", "alice"]).await;

    let credentials = Credentials::new(Key::from_file(&key_path).unwrap()).with_mode(Mode::Plain);
    let err = linkgate::connect(addr.as_str(), &credentials)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Rejected(Rejection::ImpostorServer)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_client_against_serve_protocol_seed() {
    if python3().is_none() {
        return;
    }
    // The recipe's deployments use short text keys: b"secret".
    let keys = TempDir::new().unwrap();
    raw_key_file(keys.path(), "recipe", b"secret");
    let (serve, gate) = start_serve(keys.path(), None, &["--protocol", "seed"]).await;
    serve
        .wait_for_log(&["WARN", "--protocol seed", "no server authentication"])
        .await;
    serve
        .wait_for_log(&["WARN", "short key", "key_id=recipe"])
        .await;
    let (host, port) = (gate.ip().to_string(), gate.port().to_string());
    let client = script("recipe_client.py");

    let out = run_python(&[
        client.to_str().unwrap(),
        &host,
        &port,
        &hex::encode(b"secret"),
        "hello",
    ])
    .unwrap();
    assert_eq!(
        stdout(&out),
        "reply hello\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serve.wait_for_log(&["admitted", "key_id=recipe"]).await;

    let out = run_python(&[
        client.to_str().unwrap(),
        &host,
        &port,
        &hex::encode(b"guess"),
        "hello",
    ])
    .unwrap();
    assert_eq!(
        stdout(&out),
        "closed\n",
        "a wrong key gets the connection closed"
    );
    serve
        .wait_for_log(&["connection rejected", "matches no key (seed protocol)"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_protocol_seed_against_a_recipe_server() {
    let dir = TempDir::new().unwrap();
    let right = raw_key_file(dir.path(), "right", b"secret");
    let wrong = raw_key_file(dir.path(), "wrong", b"guess");
    let Some(server) = spawn_python(&[
        script("recipe_server.py").to_str().unwrap(),
        &hex::encode(b"secret"),
        "2",
    ]) else {
        return;
    };
    let addr = format!("127.0.0.1:{}", python_port(&server).await);

    let out = check(&addr, &right, &["--protocol", "seed"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).starts_with("admitted as right (mode seed, upstream unknown (seed protocol"),
        "{}",
        stdout(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("short key"),
        "warned about the short key"
    );
    server.wait_for_stdout(&["authenticated"]).await;

    let out = check(&addr, &wrong, &["--protocol", "seed"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("closed the connection after our answer")
    );
    server.wait_for_stdout(&["rejected"]).await;

    // Without --protocol seed, the short key is refused outright.
    let out = check(&addr, &right, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("6 bytes"));
}

/// linkgate in front of an unchanged recipe server: linkgate/1 clients with their own keys →
/// `serve` → `connect --protocol seed` (answers the recipe's challenge) → the recipe server.
#[tokio::test(flavor = "multi_thread")]
async fn linkgate_in_front_of_an_unchanged_recipe_server() {
    let dir = TempDir::new().unwrap();
    let recipe_key = raw_key_file(dir.path(), "recipe", b"secret");
    let Some(recipe) = spawn_python(&[
        script("recipe_server.py").to_str().unwrap(),
        &hex::encode(b"secret"),
        "1",
    ]) else {
        return;
    };
    let recipe_addr = format!("127.0.0.1:{}", python_port(&recipe).await);
    let answerer = Linkgate::spawn(&[
        "connect",
        "--listen",
        "127.0.0.1:0",
        "--protocol",
        "seed",
        "--server",
        &recipe_addr,
        "--key",
        recipe_key.to_str().unwrap(),
    ]);
    let answerer_addr = answerer.listen_addr().await;

    let keys = TempDir::new().unwrap();
    let alice = keygen(keys.path(), "alice");
    let (_serve, gate) = start_serve(keys.path(), Some(answerer_addr), &[]).await;

    let credentials = Credentials::new(Key::from_file(&alice).unwrap());
    let mut stream = linkgate::connect(gate, &credentials).await.unwrap();
    stream.write_all(b"hello recipe").await.unwrap();
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        &reply, b"HELLO RECIPE",
        "the recipe server's upper-casing echo answered"
    );
    recipe.wait_for_stdout(&["authenticated"]).await;
}
