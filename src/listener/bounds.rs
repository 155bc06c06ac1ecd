//! Bounds on handshakes in progress: globally and per source, where a source is an IPv4 address,
//! an IPv6 prefix, or a Unix user.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::admitted::Peer;
use crate::telemetry::Bound;

use super::ListenerConfig;

/// How addresses are grouped into one source for per-source bounds: IPv4 addresses by their
/// first `v4` bits, IPv6 addresses by their first `v6` bits. IPv4-mapped IPv6 addresses count
/// as IPv4.
///
/// ```
/// let prefix: linkgate::SourcePrefix = "24:56".parse().unwrap();
/// assert_eq!((prefix.v4(), prefix.v6()), (24, 56));
/// assert_eq!(linkgate::SourcePrefix::default().to_string(), "32:64");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePrefix {
    v4: u8,
    v6: u8,
}

impl Default for SourcePrefix {
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl SourcePrefix {
    /// Groups by the first `v4` bits of IPv4 addresses (clamped to 0..=32) and the first `v6`
    /// bits of IPv6 addresses (clamped to 0..=128).
    pub fn new(v4: u8, v6: u8) -> Self {
        Self {
            v4: v4.min(32),
            v6: v6.min(128),
        }
    }

    /// IPv4 prefix length.
    pub fn v4(&self) -> u8 {
        self.v4
    }

    /// IPv6 prefix length.
    pub fn v6(&self) -> u8 {
        self.v6
    }

    /// The source a peer belongs to.
    pub(crate) fn source_of(&self, peer: &Peer) -> Source {
        match peer {
            Peer::Ip(addr) => match addr.ip().to_canonical() {
                IpAddr::V4(v4) => Source::V4(u32::from(v4) & mask32(self.v4)),
                IpAddr::V6(v6) => Source::V6(u128::from(v6) & mask128(self.v6)),
            },
            Peer::Unix(unix) => Source::User(unix.uid()),
        }
    }
}

impl SourcePrefix {
    /// The source a peer belongs to, for logs: an address, a network, or a user id.
    pub(crate) fn describe(&self, peer: &Peer) -> String {
        match peer {
            Peer::Ip(addr) => match addr.ip().to_canonical() {
                IpAddr::V4(v4) if self.v4 == 32 => v4.to_string(),
                IpAddr::V6(v6) if self.v6 == 128 => v6.to_string(),
                ip => {
                    let len = if ip.is_ipv4() { self.v4 } else { self.v6 };
                    ipnet::IpNet::new(ip, len)
                        .map_or_else(|_| ip.to_string(), |net| net.trunc().to_string())
                }
            },
            Peer::Unix(unix) => format!("uid {}", unix.uid()),
        }
    }
}

fn mask32(bits: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
}

fn mask128(bits: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)
}

impl std::fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.v4, self.v6)
    }
}

impl std::str::FromStr for SourcePrefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not V4:V6 prefix lengths, such as 32:64");
        let (v4, v6) = text.split_once(':').ok_or_else(bad)?;
        let v4: u8 = v4.parse().map_err(|_| bad())?;
        let v6: u8 = v6.parse().map_err(|_| bad())?;
        if v4 > 32 || v6 > 128 {
            return Err(format!(
                "{text:?}: IPv4 prefixes go up to 32 bits, IPv6 up to 128"
            ));
        }
        Ok(Self { v4, v6 })
    }
}

/// One source, as counted by the per-source bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(u32),
    V6(u128),
    User(u32),
}

#[derive(Debug, Default)]
struct InProgress {
    total: usize,
    per_source: HashMap<Source, usize>,
}

/// The shared counters; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    inner: Arc<BoundsInner>,
}

#[derive(Debug)]
struct BoundsInner {
    max_total: usize,
    max_per_source: usize,
    prefix: SourcePrefix,
    in_progress: Mutex<InProgress>,
}

impl Bounds {
    pub(crate) fn new(config: &ListenerConfig) -> Self {
        Self {
            inner: Arc::new(BoundsInner {
                max_total: config.max_handshakes,
                max_per_source: config.max_handshakes_per_source,
                prefix: config.source_prefix,
                in_progress: Mutex::new(InProgress::default()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InProgress> {
        // The counters stay consistent even if a holder panicked: each update is one step.
        self.inner
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn in_progress(&self) -> usize {
        self.lock().total
    }

    /// The source `peer` counts as.
    pub(crate) fn source_of(&self, peer: &Peer) -> Source {
        self.inner.prefix.source_of(peer)
    }

    /// The source a peer belongs to, for logs.
    pub(crate) fn describe(&self, peer: &Peer) -> String {
        self.inner.prefix.describe(peer)
    }

    /// Handshakes in progress from each source; an unknown source (behind a balancer, before
    /// its header) counts as one.
    pub(crate) fn weights(&self, sources: impl Iterator<Item = Option<Source>>) -> Vec<usize> {
        let counts = self.lock();
        sources
            .map(|source| {
                source.map_or(1, |source| {
                    counts.per_source.get(&source).copied().unwrap_or(0)
                })
            })
            .collect()
    }
}

/// One handshake's place within the bounds; released when dropped, however the task ends, or
/// at once when the listener sheds the handshake (its task is dropped later).
///
/// It counts globally from the start; its per-source count is added once the source is known
/// (at once for most connections, after the PROXY protocol header for those from a load
/// balancer).
pub(crate) struct HandshakeSlot {
    shared: Arc<SlotShared>,
}

/// The listener's hold on a slot, to release it when it sheds the handshake.
#[derive(Clone)]
pub(crate) struct SlotHandle {
    shared: Arc<SlotShared>,
}

struct SlotShared {
    bounds: Bounds,
    source: Mutex<Option<Source>>,
    released: AtomicBool,
}

impl SlotShared {
    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        // The counts lock first, then the source: `add_source` sets the source under the counts
        // lock, so a source counted by a racing `add_source` is always seen here.
        let mut counts = self.bounds.lock();
        let source = *self.source.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(source) = source
            && let Some(n) = counts.per_source.get_mut(&source)
        {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&source);
            }
        }
    }
}

impl HandshakeSlot {
    /// A slot counted globally and for `peer`'s source, or the bound that is full. The
    /// per-source bound is checked first: a source at its bound is refused as such, and never
    /// makes the listener shed someone else's handshake for a slot it could not have.
    pub(crate) fn take(bounds: &Bounds, peer: &Peer) -> Result<Self, Bound> {
        let source = bounds.source_of(peer);
        let mut counts = bounds.lock();
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= bounds.inner.max_per_source {
            return Err(Bound::PerSource);
        }
        if counts.total >= bounds.inner.max_total {
            return Err(Bound::Global);
        }
        counts.total += 1;
        counts.per_source.insert(source, from_source + 1);
        Ok(Self {
            shared: Arc::new(SlotShared {
                bounds: bounds.clone(),
                source: Mutex::new(Some(source)),
                released: AtomicBool::new(false),
            }),
        })
    }

    /// A slot counted globally only, if there is room.
    pub(crate) fn take_global(bounds: &Bounds) -> Option<Self> {
        let mut counts = bounds.lock();
        if counts.total >= bounds.inner.max_total {
            return None;
        }
        counts.total += 1;
        Some(Self {
            shared: Arc::new(SlotShared {
                bounds: bounds.clone(),
                source: Mutex::new(None),
                released: AtomicBool::new(false),
            }),
        })
    }

    /// Counts this handshake for `peer`'s source too; `false` if that source is at its bound.
    /// `false` too if the listener has shed it meanwhile.
    pub(crate) fn add_source(&self, peer: &Peer) -> bool {
        let bounds = &self.shared.bounds;
        let source = bounds.source_of(peer);
        let mut counts = bounds.lock();
        // Checked under the counts lock, which `release` takes before reading the source: a
        // slot released meanwhile must not count for a source it will never uncount.
        if self.shared.released.load(Ordering::Acquire) {
            return false;
        }
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= bounds.inner.max_per_source {
            return false;
        }
        counts.per_source.insert(source, from_source + 1);
        *self
            .shared
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(source);
        true
    }

    /// Whether the listener has shed this handshake.
    pub(crate) fn is_released(&self) -> bool {
        self.shared.released.load(Ordering::Acquire)
    }

    pub(crate) fn handle(&self) -> SlotHandle {
        SlotHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl SlotHandle {
    /// Whether the handshake has already ended (or was shed).
    pub(crate) fn is_released(&self) -> bool {
        self.shared.released.load(Ordering::Acquire)
    }

    /// Frees the slot now, for a handshake being shed.
    pub(crate) fn release(&self) {
        self.shared.release();
    }

    /// The source it counts for, once known.
    pub(crate) fn source(&self) -> Option<Source> {
        *self
            .shared
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.shared.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admitted::UnixPeer;

    fn peer(text: &str) -> Peer {
        Peer::Ip(text.parse().unwrap())
    }

    #[test]
    fn ipv6_groups_by_prefix_and_mapped_ipv4_counts_as_ipv4() {
        let prefix = SourcePrefix::default();
        assert_eq!(
            prefix.source_of(&peer("[2001:db8:1:2::1]:1")),
            prefix.source_of(&peer("[2001:db8:1:2:ffff::9]:2")),
            "one /64"
        );
        assert_ne!(
            prefix.source_of(&peer("[2001:db8:1:2::1]:1")),
            prefix.source_of(&peer("[2001:db8:1:3::1]:1"))
        );
        assert_eq!(
            prefix.source_of(&peer("[::ffff:10.0.0.1]:1")),
            prefix.source_of(&peer("10.0.0.1:2"))
        );
        assert_ne!(
            prefix.source_of(&peer("10.0.0.1:1")),
            prefix.source_of(&peer("10.0.0.2:1"))
        );
        let wide = SourcePrefix::new(24, 48);
        assert_eq!(
            wide.source_of(&peer("10.0.0.1:1")),
            wide.source_of(&peer("10.0.0.200:1"))
        );
        assert_eq!(
            SourcePrefix::new(0, 0).source_of(&peer("1.2.3.4:5")),
            Source::V4(0)
        );
        let unix = Peer::Unix(UnixPeer::new(1000, 1000, Some(5)));
        assert_eq!(prefix.source_of(&unix), Source::User(1000));
    }

    #[test]
    fn sources_are_described_as_the_group_they_stand_for() {
        let peer = |text: &str| Peer::Ip(text.parse().unwrap());
        let default = SourcePrefix::default();
        assert_eq!(default.describe(&peer("10.1.2.3:9")), "10.1.2.3");
        assert_eq!(
            default.describe(&peer("[2001:db8:1::abcd]:9")),
            "2001:db8:1::/64"
        );
        assert_eq!(default.describe(&peer("[::ffff:10.1.2.3]:9")), "10.1.2.3");
        let wide: SourcePrefix = "24:48".parse().unwrap();
        assert_eq!(wide.describe(&peer("10.1.2.3:9")), "10.1.2.0/24");
        assert_eq!(
            wide.describe(&peer("[2001:db8:1:2::1]:9")),
            "2001:db8:1::/48"
        );
    }

    #[test]
    fn prefixes_parse_and_refuse_nonsense() {
        assert_eq!("32:64".parse::<SourcePrefix>(), Ok(SourcePrefix::default()));
        for bad in ["", "32", "33:64", "32:129", "a:b", "32:64:1"] {
            assert!(bad.parse::<SourcePrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slots_count_and_release() {
        let config = ListenerConfig::new()
            .with_max_handshakes(3)
            .with_max_handshakes_per_source(2);
        let bounds = Bounds::new(&config);
        let a = peer("10.0.0.1:1");
        let first = HandshakeSlot::take(&bounds, &a).unwrap();
        let _second = HandshakeSlot::take(&bounds, &a).unwrap();
        assert_eq!(
            HandshakeSlot::take(&bounds, &a).err(),
            Some(Bound::PerSource)
        );
        let _third = HandshakeSlot::take(&bounds, &peer("10.0.0.2:1")).unwrap();
        assert_eq!(
            HandshakeSlot::take(&bounds, &peer("10.0.0.3:1")).err(),
            Some(Bound::Global)
        );
        drop(first);
        assert_eq!(bounds.in_progress(), 2);
        assert!(HandshakeSlot::take(&bounds, &a).is_ok());
    }

    #[test]
    fn a_source_at_its_bound_is_refused_as_such_even_when_every_slot_is_taken() {
        let config = ListenerConfig::new()
            .with_max_handshakes(2)
            .with_max_handshakes_per_source(2);
        let bounds = Bounds::new(&config);
        let a = peer("10.0.0.1:1");
        let _slots = [
            HandshakeSlot::take(&bounds, &a).unwrap(),
            HandshakeSlot::take(&bounds, &a).unwrap(),
        ];
        // Global and per-source bounds are both full: the per-source one answers, so the
        // listener does not shed another handshake for a slot this source could not have.
        assert_eq!(
            HandshakeSlot::take(&bounds, &a).err(),
            Some(Bound::PerSource)
        );
    }

    #[test]
    fn a_slot_shed_before_its_balancer_header_arrives_counts_for_no_source() {
        let bounds = Bounds::new(&ListenerConfig::new());
        let client = peer("10.0.0.7:1");
        let slot = HandshakeSlot::take_global(&bounds).unwrap();
        // The listener sheds it, then the task (not yet stopped) reads the PROXY header.
        slot.handle().release();
        assert!(!slot.add_source(&client));
        drop(slot);
        assert_eq!(bounds.in_progress(), 0);
        assert_eq!(
            bounds.weights([Some(bounds.source_of(&client))].into_iter()),
            [0]
        );
    }
}
