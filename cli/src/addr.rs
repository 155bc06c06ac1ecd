//! Listen addresses as operators write them.

use std::fmt;
use std::str::FromStr;

/// Where to listen: `HOST:PORT`, or `:PORT` for every IPv4 interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenAddr {
    /// A TCP address to bind, as `HOST:PORT` (resolved when bound).
    Tcp(String),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(port) = text.strip_prefix(':') {
            return parse_port(port, text).map(|port| Self::Tcp(format!("0.0.0.0:{port}")));
        }
        if text.parse::<u16>().is_ok() {
            return Err(format!(
                "{text:?} is only a port: write 127.0.0.1:{text} for this machine only, or :{text} (0.0.0.0:{text}) for every interface"
            ));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => {
                parse_port(port, text)?;
                Ok(Self::Tcp(text.to_owned()))
            }
            _ => Err(format!(
                "{text:?} is not HOST:PORT (e.g. 127.0.0.1:7700, or :7700 for every interface)"
            )),
        }
    }
}

fn parse_port(port: &str, whole: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .map_err(|_| format!("{whole:?}: {port:?} is not a port number (0 to 65535)"))
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ListenAddr;

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
    }
}
