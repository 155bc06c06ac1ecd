//! Listen addresses as operators write them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where to listen: `HOST:PORT`, `:PORT` (every IPv4 interface), `unix:/path` (a Unix domain
/// socket), or `systemd:NAME` (a socket systemd passed, by its FileDescriptorName).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenAddr {
    /// A TCP address to bind, as `HOST:PORT` (resolved when bound).
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A socket-activated listener from systemd.
    Systemd(String),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/linkgate.sock".into());
            }
            return Ok(Self::Unix(path.into()));
        }
        if let Some(name) = text.strip_prefix("systemd:") {
            if name.is_empty() || name.contains(':') {
                return Err(format!(
                    "{text:?}: systemd: needs the socket's FileDescriptorName, e.g. systemd:gate"
                ));
            }
            return Ok(Self::Systemd(name.into()));
        }
        if let Some(port) = text.strip_prefix(':') {
            if port.contains(':') {
                return Err(bracket_hint(text));
            }
            return parse_port(port, text).map(|port| Self::Tcp(format!("0.0.0.0:{port}")));
        }
        if text.parse::<u16>().is_ok() {
            return Err(format!(
                "{text:?} is only a port: write 127.0.0.1:{text} for this machine only, or :{text} (0.0.0.0:{text}) for every IPv4 interface"
            ));
        }
        check_host_port(text).map_err(|err| {
            err.unwrap_or_else(|| format!(
                "{text:?} is not HOST:PORT (e.g. 127.0.0.1:7700, :7700 for every IPv4 interface, unix:/run/x.sock or systemd:NAME)"
            ))
        })?;
        Ok(Self::Tcp(text.to_owned()))
    }
}

/// Checks a TCP address as operators write it, `HOST:PORT` with an IPv6 host in brackets, and
/// returns its port. `Err(None)` when it is not `HOST:PORT` at all (the caller says what is
/// expected there); `Err(Some(message))` for a mistake worth naming.
pub(crate) fn check_host_port(text: &str) -> Result<u16, Option<String>> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(addr.port());
    }
    if text.starts_with('[') && !text.contains("]:") {
        return Err(Some(format!(
            "{text:?}: an address in brackets needs a port after them, e.g. [::1]:7700"
        )));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(None);
    };
    if host.is_empty() || host.contains(['[', ']', ' ', '/']) {
        return Err(None);
    }
    if host.contains(':') {
        return Err(Some(bracket_hint(text)));
    }
    parse_port(port, text).map_err(Some)
}

fn bracket_hint(text: &str) -> String {
    format!("{text:?}: put an IPv6 address in brackets before its port, e.g. [::1]:7700")
}

fn parse_port(port: &str, whole: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .map_err(|_| format!("{whole:?}: {port:?} is not a port number (0 to 65535)"))
}

/// Where to serve metrics: `HOST:PORT` (port 0 picks a free one).
pub(crate) fn metrics_addr(text: &str) -> Result<String, String> {
    check_host_port(text)
        .map(|_| text.to_owned())
        .map_err(|err| {
            err.unwrap_or_else(|| format!("{text:?} is not HOST:PORT (e.g. 127.0.0.1:9100)"))
        })
}

/// A linkgate server to connect to: `HOST:PORT`, over TCP.
pub(crate) fn server_addr(text: &str) -> Result<String, String> {
    if text.starts_with("unix:") {
        return Err(format!(
            "{text:?}: the command reaches a gate over TCP only (HOST:PORT); a gate listening on a Unix socket serves library clients on its host (the Rust crate's or the Python package's connect over that socket)"
        ));
    }
    match check_host_port(text) {
        Ok(0) => Err(format!("{text:?}: port 0 cannot be connected to")),
        Ok(_) => Ok(text.to_owned()),
        Err(err) => Err(err.unwrap_or_else(|| {
            format!("{text:?} is not HOST:PORT (e.g. gate.example:7700 or 127.0.0.1:7700)")
        })),
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Systemd(name) => write!(f, "systemd:{name}"),
        }
    }
}

/// A Unix socket file mode, written in octal (`0660`).
pub(crate) fn socket_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("{text:?} is not a file mode in octal (e.g. 0660)"))
}

#[cfg(test)]
mod tests {
    use super::{ListenAddr, server_addr, socket_mode};

    #[test]
    fn ports_alone_are_explained_and_colon_port_is_every_interface() {
        assert_eq!(
            ":7720".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("0.0.0.0:7720".into()))
        );
        let err = "7720".parse::<ListenAddr>().unwrap_err();
        assert!(
            err.contains("127.0.0.1:7720") && err.contains(":7720"),
            "{err}"
        );
        assert!("localhost:99999".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert_eq!(
            "[::1]:80".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("[::1]:80".into()))
        );
        for unbracketed in ["::1:23004", "fe80::1:80"] {
            let err = unbracketed.parse::<ListenAddr>().unwrap_err();
            assert!(
                err.contains("in brackets") && err.contains("[::1]:7700"),
                "{err}"
            );
        }
        let err = "[::1]".parse::<ListenAddr>().unwrap_err();
        assert!(err.contains("needs a port"), "{err}");
    }

    #[test]
    fn servers_are_host_and_a_port_to_connect_to() {
        assert_eq!(
            server_addr("gate.example:7700"),
            Ok("gate.example:7700".into())
        );
        assert_eq!(server_addr("[::1]:7700"), Ok("[::1]:7700".into()));
        for (bad, says) in [
            ("127.0.0.1:65536", "not a port number"),
            ("127.0.0.1", "not HOST:PORT"),
            ("127.0.0.1:0", "port 0"),
            ("unix:/run/g.sock", "over TCP"),
            ("::1:7700", "in brackets"),
        ] {
            let err = server_addr(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn unix_and_systemd_addresses() {
        assert_eq!(
            "unix:/run/g.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/g.sock".into()))
        );
        assert_eq!(
            "systemd:gate".parse::<ListenAddr>(),
            Ok(ListenAddr::Systemd("gate".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("systemd:".parse::<ListenAddr>().is_err());
        assert_eq!(socket_mode("0660"), Ok(0o660));
        assert!(socket_mode("0999").is_err());
    }
}
