//! The config file: several services in one process, stunnel-style.
//!
//! ```toml
//! metrics = "127.0.0.1:9100"   # optional: Prometheus metrics at /metrics
//! watch-keys = true            # reload when a key directory changes
//! drop-revoked = false         # close connections admitted under a removed key
//! tunnel-threads = 2           # threads for multiplexed tunnels (default: the cores)
//!
//! [[service]]
//! name = "redis"
//! listen = "0.0.0.0:7700"
//! upstream = "127.0.0.1:6379"
//! keys = "/etc/linkgate/keys/redis"
//!
//! [[service]]
//! name = "postgres"
//! listen = "unix:/run/linkgate/pg.sock"
//! socket-mode = "0660"
//! upstream = "unix:/var/run/postgresql/.s.PGSQL.5432"
//! keys = "/etc/linkgate/keys/postgres"
//! require-forward-secrecy = true
//! ```

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::addr::ListenAddr;
use crate::service::ServiceOptions;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ConfigFile {
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub(crate) metrics: Option<String>,
    /// Reload keys when a key directory changes.
    #[serde(default)]
    pub(crate) watch_keys: bool,
    /// Close connections admitted under a key a reload removed or changed.
    #[serde(default)]
    pub(crate) drop_revoked: bool,
    /// Threads that run multiplexed tunnels (default: the cores).
    #[serde(default, deserialize_with = "positive")]
    pub(crate) tunnel_threads: Option<usize>,
    /// The services, one `[[service]]` table each.
    #[serde(rename = "service")]
    pub(crate) services: Vec<ServiceOptions>,
}

fn positive<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<usize>, D::Error> {
    match usize::deserialize(de)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(Some(n)),
    }
}

impl ConfigFile {
    /// Reads and checks a config file; errors name the file and, for bad TOML or an unknown
    /// key, the line and column.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let config: Self = toml::from_str(&text)
            .map_err(|err| anyhow::anyhow!("{}", one_line(&err.to_string())))
            .with_context(|| format!("config file {}", path.display()))?;
        if config.services.is_empty() {
            bail!("config file {}: no [[service]] table", path.display());
        }
        if let Some(metrics) = &config.metrics {
            crate::addr::metrics_addr(metrics)
                .map_err(|err| anyhow::anyhow!("config file {}: metrics: {err}", path.display()))?;
        }
        let mut names = HashSet::new();
        let mut listening: Vec<(&ListenAddr, &str)> = Vec::new();
        for service in &config.services {
            if !names.insert(service.name.as_str()) {
                bail!(
                    "config file {}: two services are named {:?}",
                    path.display(),
                    service.name
                );
            }
            // Port 0 is a free port each: two of them never clash.
            let any_port = matches!(&service.listen,
                ListenAddr::Tcp(addr) if crate::addr::check_host_port(addr) == Ok(0));
            if let Some((_, other)) = listening
                .iter()
                .find(|(addr, _)| !any_port && **addr == service.listen)
            {
                bail!(
                    "config file {}: services {other} and {} both listen on {}",
                    path.display(),
                    service.name,
                    service.listen
                );
            }
            listening.push((&service.listen, &service.name));
            service
                .check()
                .with_context(|| format!("config file {}", path.display()))?;
        }
        Ok(config)
    }
}

/// toml's messages span several lines (the offending line, a caret); keep them to one.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with('|')
                && !line.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linkgate.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile::load(&path)
    }

    #[test]
    fn services_with_defaults() {
        let config = parse(
            r#"
metrics = "127.0.0.1:9100"
[[service]]
name = "a"
listen = "127.0.0.1:1"
upstream = "127.0.0.1:2"
keys = "k"
handshake-timeout = "2s"
accept-proxy-from = ["10.0.0.0/8", "127.0.0.1"]
[[service]]
name = "b"
listen = "unix:/tmp/b.sock"
socket-mode = "0660"
upstream = "unix:/tmp/up.sock"
keys = "k2"
"#,
        )
        .unwrap();
        assert_eq!(config.services.len(), 2);
        assert_eq!(
            config.services[0].handshake_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            config.services[0].max_handshakes, 1024,
            "defaults as for the flags"
        );
        assert_eq!(config.services[0].accept_proxy_from.len(), 2);
        assert_eq!(config.services[1].socket_mode, Some(0o660));
    }

    #[test]
    fn the_shipped_example_parses() {
        let example: ConfigFile =
            toml::from_str(include_str!("../../contrib/systemd/linkgate.toml")).unwrap();
        assert_eq!(example.services.len(), 2);
        assert!(example.watch_keys && example.metrics.is_some());
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_column() {
        let err = parse("[[service]]\nname = \"a\"\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("unknown field `lisen`") && text.contains("line 3"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn duplicate_names_and_contradictions_are_refused() {
        let twice = "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"\n";
        assert!(format!("{:#}", parse(twice).unwrap_err()).contains("two services are named"));
        let both =
            "[[service]]\nname = \"a\"\nallow-plain = true\nrequire-forward-secrecy = true\n";
        assert!(format!("{:#}", parse(both).unwrap_err()).contains("contradict"));
        assert!(format!("{:#}", parse("metrics = \"x\"\n").unwrap_err()).contains("service"));
    }

    /// What `serve` would refuse, or run other than written, check-config refuses too.
    #[test]
    fn what_serve_cannot_run_is_refused_at_load() {
        let service = "[[service]]\nname = \"a\"\n";
        for (text, says) in [
            (
                "metrics = \"127.0.0.1:99999\"\n[[service]]\nname = \"a\"\n".to_owned(),
                "not a port number",
            ),
            (
                "[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\n".to_owned(),
                "services a and b both listen on 127.0.0.1:7700",
            ),
            (
                "[[service]]\nname = \"a\"\nlisten = \"unix:/run/g.sock\"\n\
                 [[service]]\nname = \"b\"\nlisten = \"unix:/run/g.sock\"\n"
                    .to_owned(),
                "services a and b both listen on unix:/run/g.sock",
            ),
            ("[[service]]\nname = \"\"\n".to_owned(), "service name \"\""),
            (
                "[[service]]\nname = \"a\\nb\"\n".to_owned(),
                "service name \"a\\nb\": use 1 to 64 ASCII letters",
            ),
            (
                format!("{service}max-handshakes = 0\n"),
                "max-handshakes must be at least 1",
            ),
            (
                format!("{service}max-connections = 0\n"),
                "max-connections must be at least 1",
            ),
            (
                format!("{service}handshake-timeout = \"0s\"\n"),
                "handshake-timeout of 0",
            ),
            (
                format!("{service}penalty-min = \"1m\"\npenalty-max = \"10s\"\n"),
                "penalty-min (1m) is longer than penalty-max (10s)",
            ),
            (
                format!("{service}send-proxy-key-id-as = \"authority\"\n"),
                "needs send-proxy v2",
            ),
            (
                format!("{service}send-proxy = \"v1\"\nsend-proxy-key-id-as = \"authority\"\n"),
                "needs send-proxy v2",
            ),
            (
                format!("{service}protocol = \"seed\"\nrequire-forward-secrecy = true\n"),
                "protocol seed has no sealed modes",
            ),
        ] {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        // Port 0 is a free port for each: no clash.
        let free = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
                    [[service]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\n";
        assert!(parse(free).is_ok());
        // Penalties off: their bounds do not matter.
        let off =
            format!("{service}no-penalties = true\npenalty-min = \"1m\"\npenalty-max = \"10s\"\n");
        assert!(parse(&off).is_ok());
    }

    #[test]
    fn tunnel_keepalive_parses_per_service() {
        use crate::args::TunnelKeepalive;
        use std::time::Duration;
        let config = parse(
            "[[service]]\nname = \"a\"\nlisten = \":7801\"\ntunnel-keepalive = \"off\"\n\
             [[service]]\nname = \"b\"\nlisten = \":7802\"\ntunnel-keepalive = \"10s\"\n\
             [[service]]\nname = \"c\"\n",
        )
        .unwrap();
        let secs = Duration::from_secs;
        assert_eq!(config.services[0].tunnel_keepalive, TunnelKeepalive::Off);
        let ten = TunnelKeepalive::Every {
            interval: secs(10),
            timeout: secs(10),
        };
        assert_eq!(config.services[1].tunnel_keepalive, ten);
        let default = TunnelKeepalive::Every {
            interval: secs(30),
            timeout: secs(20),
        };
        assert_eq!(config.services[2].tunnel_keepalive, default);
        for bad in ["0s", "10s,1ms", "often"] {
            let text = format!("[[service]]\nname = \"a\"\ntunnel-keepalive = \"{bad}\"\n");
            assert!(parse(&text).is_err(), "{bad} was taken");
        }
        assert_eq!(
            "1m,5s".parse::<TunnelKeepalive>(),
            Ok(TunnelKeepalive::Every {
                interval: secs(60),
                timeout: secs(5)
            })
        );
    }

    #[test]
    fn tunnel_threads_must_be_positive() {
        let service = "[[service]]\nname = \"a\"\n";
        let two = parse(&format!("tunnel-threads = 2\n{service}")).unwrap();
        assert_eq!(two.tunnel_threads, Some(2));
        assert_eq!(parse(service).unwrap().tunnel_threads, None);
        let zero = format!(
            "{:#}",
            parse(&format!("tunnel-threads = 0\n{service}")).unwrap_err()
        );
        assert!(zero.contains("must be at least 1"), "{zero}");
    }
}
