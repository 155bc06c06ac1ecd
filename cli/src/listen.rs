//! Binding what `--listen` names: a TCP address, a Unix domain socket (mode set, a stale file
//! replaced only if nothing answers on it, removed on exit), or a socket systemd passed.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use listenfd::ListenFd;
use tokio::net::{TcpListener, TcpSocket, UnixListener};

use crate::addr::ListenAddr;

/// A bound listener of either kind.
pub(crate) enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, Option<SocketFile>),
}

impl Bound {
    /// What to show in the "listening" line: the bound address, or the socket path.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "?".into(), |addr| addr.to_string()),
            Self::Unix(listener, _) => listener
                .local_addr()
                .ok()
                .and_then(|addr| addr.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:(unnamed)".into()),
        }
    }
}

/// A socket file this process created; removed when dropped, if it is still the same file.
pub(crate) struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The sockets systemd passed (LISTEN_FDS / LISTEN_FDNAMES), taken once per process.
pub(crate) struct SystemdSockets {
    names: Vec<String>,
    fds: Mutex<ListenFd>,
}

impl SystemdSockets {
    /// Reads what systemd passed, if anything. Call before anything else opens descriptors.
    pub(crate) fn from_env() -> Self {
        let names = sd_notify::listen_fds_with_names()
            .map(|fds| fds.map(|(_, name)| name).collect())
            .unwrap_or_default();
        Self {
            names,
            fds: Mutex::new(ListenFd::from_env()),
        }
    }

    fn take(&self, name: &str) -> Result<Bound> {
        let Some(index) = self.names.iter().position(|n| n == name) else {
            if self.names.is_empty() {
                bail!(
                    "--listen systemd:{name}: no sockets were passed (start the service through its .socket unit, or systemd-socket-activate)"
                );
            }
            bail!(
                "--listen systemd:{name}: systemd passed no socket named {name:?} (it passed: {})",
                self.names.join(", ")
            );
        };
        let mut fds = self
            .fds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(Some(listener)) = fds.take_tcp_listener(index) {
            listener.set_nonblocking(true)?;
            return Ok(Bound::Tcp(TcpListener::from_std(listener)?));
        }
        match fds.take_unix_listener(index) {
            Ok(Some(listener)) => {
                listener.set_nonblocking(true)?;
                Ok(Bound::Unix(UnixListener::from_std(listener)?, None))
            }
            Ok(None) => {
                bail!("--listen systemd:{name}: the socket is already in use by another service")
            }
            Err(err) => bail!("--listen systemd:{name}: not a stream socket ({err})"),
        }
    }
}

/// Binds `addr`. `socket_mode` applies to Unix sockets this process creates.
pub(crate) async fn bind(
    addr: &ListenAddr,
    socket_mode: Option<u32>,
    systemd: &SystemdSockets,
) -> Result<Bound> {
    bind_shared(addr, socket_mode, systemd, false).await
}

/// [`bind`], and with `reuse_port` a TCP socket is bound with `SO_REUSEPORT`, so that
/// [`bind_again`] can bind more sockets to its address for other threads: the kernel then
/// spreads new connections over them, and no connection wakes more than one thread.
pub(crate) async fn bind_shared(
    addr: &ListenAddr,
    socket_mode: Option<u32>,
    systemd: &SystemdSockets,
    reuse_port: bool,
) -> Result<Bound> {
    match addr {
        ListenAddr::Tcp(addr) => Ok(Bound::Tcp(
            bind_tcp(addr, reuse_port)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        )),
        ListenAddr::Unix(path) => bind_unix(path, socket_mode)
            .with_context(|| format!("cannot listen on unix:{}", path.display())),
        ListenAddr::Systemd(name) => systemd.take(name),
    }
}

/// The accept queue asked for (the kernel caps it at net.core.somaxconn). Larger than tokio's
/// 1024: under a connection flood a full queue drops SYNs, and a legitimate client's dropped SYN
/// is retried only after a second.
const TCP_BACKLOG: u32 = 4096;

/// Binds the first address `addr` resolves to that can be bound, as `TcpListener::bind` does,
/// with a [`TCP_BACKLOG`] accept queue.
async fn bind_tcp(addr: &str, reuse_port: bool) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        // With SO_REUSEPORT a second instance (of this user) could bind the port too and take
        // half the connections. Binding once without it first fails, as it always did, when
        // anything already listens there.
        if reuse_port
            && addr.port() != 0
            && let Err(err) = listen_tcp(addr, false)
        {
            last_error = Some(err);
            continue;
        }
        match listen_tcp(addr, reuse_port) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

fn listen_tcp(addr: std::net::SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(TCP_BACKLOG)
}

/// One more socket listening where `listener` (bound by [`bind_shared`] with `reuse_port`)
/// does, on the current runtime.
pub(crate) fn bind_again(local: std::net::SocketAddr) -> io::Result<TcpListener> {
    listen_tcp(local, true)
}

fn bind_unix(path: &Path, mode: Option<u32>) -> Result<Bound> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            bail!("the path exists and is not a socket; refusing to replace it");
        }
        // A socket file: replace it only if nothing answers on it (left by a process that died).
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!("another process is listening on it"),
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket file nobody listens on");
                std::fs::remove_file(path).context("cannot remove the stale socket file")?;
            }
            Err(err) => return Err(err).context("cannot tell whether the socket file is in use"),
        }
    }
    let listener = UnixListener::bind(path)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .context("cannot set the socket's mode")?;
    }
    let inode = std::fs::symlink_metadata(path)?.ino();
    Ok(Bound::Unix(
        listener,
        Some(SocketFile {
            path: path.to_path_buf(),
            inode,
        }),
    ))
}
