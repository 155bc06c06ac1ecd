//! Per-source penalties, modelled on OpenSSH's PerSourcePenalties: a source whose handshakes
//! fail accrues penalty time; once it has accrued more than a minimum, its new connections are
//! closed at accept, before any CHALLENGE, until the penalty runs out.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use ipnet::IpNet;

use super::bounds::Source;
use crate::admitted::Peer;
use crate::telemetry::Outcome;

/// How failed handshakes are penalized (see [`crate::ListenerConfig::with_penalties`]). The
/// defaults follow OpenSSH's: 5 s for a failed proof (or a mode the policy refuses), 1 s for a
/// client that closes without trying, 10 s for one that runs out the handshake timeout or sends
/// something malformed,
/// enforcement once 15 s have accrued, at most 10 minutes, 65,536 sources tracked (beyond that,
/// new sources go untracked rather than evicting penalized ones).
///
/// ```
/// use std::time::Duration;
/// let penalties = linkgate::PenaltyConfig::new()
///     .with_exempt(["10.0.0.0/8".parse().unwrap()])
///     .with_max(Duration::from_secs(120));
/// assert!(penalties.enabled());
/// assert!(!linkgate::PenaltyConfig::disabled().enabled());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PenaltyConfig {
    enabled: bool,
    denied: Duration,
    refused: Duration,
    timeout: Duration,
    closed_early: Duration,
    min: Duration,
    max: Duration,
    max_sources: usize,
    exempt: Vec<IpNet>,
}

impl Default for PenaltyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            denied: Duration::from_secs(5),
            refused: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            closed_early: Duration::from_secs(1),
            min: Duration::from_secs(15),
            max: Duration::from_secs(600),
            max_sources: 65_536,
            exempt: Vec::new(),
        }
    }
}

impl PenaltyConfig {
    /// The defaults (enabled).
    pub fn new() -> Self {
        Self::default()
    }

    /// No penalties at all.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether penalties apply.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Sources never penalized (monitoring, a known client network).
    pub fn with_exempt(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.exempt = networks.into_iter().collect();
        self
    }

    /// Penalty for a failed proof or a mode the policy refuses (default 5 s).
    pub fn with_denied(mut self, penalty: Duration) -> Self {
        self.denied = penalty;
        self
    }

    /// Penalty for a handshake that ran out of time (default 10 s).
    pub fn with_timeout(mut self, penalty: Duration) -> Self {
        self.timeout = penalty;
        self
    }

    /// Penalty for a malformed RESPONSE or a bad PROXY header (default 10 s).
    pub fn with_refused(mut self, penalty: Duration) -> Self {
        self.refused = penalty;
        self
    }

    /// Penalty for a client that closed without finishing (default 1 s).
    pub fn with_closed_early(mut self, penalty: Duration) -> Self {
        self.closed_early = penalty;
        self
    }

    /// Penalty time accrued before connections are refused (default 15 s).
    pub fn with_min(mut self, min: Duration) -> Self {
        self.min = min;
        self
    }

    /// The most penalty time a source can accrue (default 10 minutes).
    pub fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sources tracked at most (default 65,536); beyond it, new sources go untracked.
    pub fn with_max_sources(mut self, max: usize) -> Self {
        self.max_sources = max.max(1);
        self
    }

    fn penalty_for(&self, outcome: Outcome) -> Option<Duration> {
        match outcome {
            // A mode the policy refuses costs what a failed proof does: it may be a client
            // with a valid key and an old setting, and it learns nothing more than a denial.
            Outcome::Denied | Outcome::RefusedByPolicy => Some(self.denied),
            Outcome::Malformed | Outcome::ProxyHeader => Some(self.refused),
            Outcome::Timeout => Some(self.timeout),
            Outcome::ClosedEarly | Outcome::Shed => Some(self.closed_early),
            _ => None,
        }
    }

    fn exempts(&self, peer: &Peer) -> bool {
        peer.ip_addr().is_some_and(|addr| {
            let ip = addr.ip().to_canonical();
            self.exempt.iter().any(|net| net.contains(&ip))
        })
    }
}

/// The penalty table.
#[derive(Debug)]
pub(crate) struct Penalties {
    config: PenaltyConfig,
    /// Per source: when its accrued penalty runs out.
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Source, Entry>,
    last_purge: Option<Instant>,
}

/// One source's penalty: when it runs out, and whether it has crossed the minimum. Once it
/// has, the source is refused until the whole penalty runs out (as OpenSSH's `active` flag).
#[derive(Debug, Clone, Copy)]
struct Entry {
    expiry: Instant,
    enforced: bool,
}

impl Entry {
    fn refuses(&self, now: Instant) -> bool {
        self.enforced && self.expiry > now
    }
}

/// What charging a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charged {
    /// Not (yet) enforced.
    Accrued,
    /// This failure pushed the source over the minimum: refused from now, for this long.
    Started(Duration),
    /// Already being refused.
    Extended,
}

impl Penalties {
    pub(crate) fn new(config: PenaltyConfig) -> Self {
        Self {
            config,
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `source` (of `peer`) is serving a penalty now.
    pub(crate) fn refuses(&self, source: Source, peer: &Peer, now: Instant) -> bool {
        if !self.config.enabled || self.config.exempts(peer) {
            return false;
        }
        self.lock()
            .entries
            .get(&source)
            .is_some_and(|entry| entry.refuses(now))
    }

    /// Charges `source` for a handshake that ended with `outcome`.
    pub(crate) fn charge(
        &self,
        source: Source,
        peer: &Peer,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Charged> {
        if !self.config.enabled || self.config.exempts(peer) {
            return None;
        }
        let penalty = self.config.penalty_for(outcome)?;
        let (min, max) = (self.config.min, self.config.max);
        let mut table = self.lock();
        if !table.entries.contains_key(&source) && table.entries.len() >= self.config.max_sources {
            // Full: drop what has run out (at most once a second), else leave this source
            // untracked (permissive, like OpenSSH's default overflow).
            let due = table
                .last_purge
                .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1));
            if due {
                table.last_purge = Some(now);
                table.entries.retain(|_, entry| entry.expiry > now);
            }
            if table.entries.len() >= self.config.max_sources {
                return None;
            }
        }
        let entry = table.entries.entry(source).or_insert(Entry {
            expiry: now,
            enforced: false,
        });
        if entry.expiry <= now {
            // What had accrued has run out: start afresh.
            entry.enforced = false;
        }
        let before = entry.expiry.saturating_duration_since(now);
        let after = before.saturating_add(penalty).min(max);
        entry.expiry = now.checked_add(after).unwrap_or(entry.expiry);
        Some(if entry.enforced {
            Charged::Extended
        } else if after >= min {
            entry.enforced = true;
            Charged::Started(after)
        } else {
            Charged::Accrued
        })
    }

    /// Sources being refused now.
    pub(crate) fn penalized(&self, now: Instant) -> usize {
        self.lock()
            .entries
            .values()
            .filter(|entry| entry.refuses(now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> Peer {
        Peer::Ip(text.parse().unwrap())
    }

    #[test]
    fn failures_accrue_until_enforced_and_then_run_out() {
        let penalties = Penalties::new(PenaltyConfig::new());
        let (source, p) = (Source::V4(1), peer("10.0.0.1:1"));
        let t0 = Instant::now();
        // Denied thrice: 5, 10, 15 s accrued; the third reaches the 15 s minimum.
        assert_eq!(
            penalties.charge(source, &p, Outcome::Denied, t0),
            Some(Charged::Accrued)
        );
        assert_eq!(
            penalties.charge(source, &p, Outcome::Denied, t0),
            Some(Charged::Accrued)
        );
        assert!(!penalties.refuses(source, &p, t0));
        assert_eq!(
            penalties.charge(source, &p, Outcome::Denied, t0),
            Some(Charged::Started(Duration::from_secs(15)))
        );
        assert!(penalties.refuses(source, &p, t0));
        assert_eq!(
            penalties.charge(source, &p, Outcome::Timeout, t0),
            Some(Charged::Extended)
        );
        assert_eq!(penalties.penalized(t0), 1);
        // 25 s accrued: refused until all of it has run out, not only while 15 s remain.
        assert!(penalties.refuses(source, &p, t0 + Duration::from_secs(24)));
        assert!(!penalties.refuses(source, &p, t0 + Duration::from_secs(25)));
        assert_eq!(penalties.penalized(t0 + Duration::from_secs(25)), 0);
        // Once it has run out, failures accrue from nothing again before enforcement.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            penalties.charge(source, &p, Outcome::Denied, later),
            Some(Charged::Accrued)
        );
        assert!(!penalties.refuses(source, &p, later));
        // Admissions and health checks cost nothing; other sources are unaffected.
        assert_eq!(penalties.charge(source, &p, Outcome::Admitted, t0), None);
        assert!(!penalties.refuses(Source::V4(2), &peer("10.0.0.2:1"), t0));
    }

    #[test]
    fn the_maximum_caps_and_exempt_networks_never_pay() {
        let config = PenaltyConfig::new()
            .with_max(Duration::from_secs(30))
            .with_exempt(["10.9.0.0/16".parse().unwrap()]);
        let penalties = Penalties::new(config);
        let t0 = Instant::now();
        let p = peer("10.0.0.1:1");
        for _ in 0..100 {
            penalties.charge(Source::V4(1), &p, Outcome::Timeout, t0);
        }
        assert!(penalties.refuses(Source::V4(1), &p, t0 + Duration::from_secs(29)));
        assert!(
            !penalties.refuses(Source::V4(1), &p, t0 + Duration::from_secs(30)),
            "capped at 30 s"
        );
        let exempt = peer("10.9.1.1:1");
        assert_eq!(
            penalties.charge(Source::V4(9), &exempt, Outcome::Timeout, t0),
            None
        );
        assert!(!penalties.refuses(Source::V4(9), &exempt, t0));
    }

    #[test]
    fn a_full_table_leaves_new_sources_untracked() {
        let penalties = Penalties::new(PenaltyConfig::new().with_max_sources(2));
        let t0 = Instant::now();
        let p = peer("10.0.0.1:1");
        assert!(
            penalties
                .charge(Source::V4(1), &p, Outcome::Timeout, t0)
                .is_some()
        );
        assert!(
            penalties
                .charge(Source::V4(2), &p, Outcome::Timeout, t0)
                .is_some()
        );
        assert_eq!(
            penalties.charge(Source::V4(3), &p, Outcome::Timeout, t0),
            None
        );
        // Once the old entries have run out, there is room again.
        let later = t0 + Duration::from_secs(20);
        assert!(
            penalties
                .charge(Source::V4(3), &p, Outcome::Timeout, later)
                .is_some()
        );
    }

    #[test]
    fn disabled_penalizes_nothing() {
        let penalties = Penalties::new(PenaltyConfig::disabled());
        let t0 = Instant::now();
        let p = peer("10.0.0.1:1");
        for _ in 0..10 {
            assert_eq!(
                penalties.charge(Source::V4(1), &p, Outcome::Timeout, t0),
                None
            );
        }
        assert!(!penalties.refuses(Source::V4(1), &p, t0));
    }
}
