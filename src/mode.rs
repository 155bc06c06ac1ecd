//! What an admitted connection carries: plain bytes, or sealed records.

use std::fmt;
use std::str::FromStr;

/// What the stream carries after admission; chosen by the client, allowed or refused by the
/// gate, and covered by both proofs (a relay that rewrites it makes the handshake fail).
///
/// The default is [`Mode::SealedFs`]: every byte encrypted and authenticated, with keys that an
/// attacker who later steals the shared key still cannot recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Mode {
    /// Application bytes pass unchanged after admission (wire byte `0x00`). For paths that are
    /// already trusted (loopback, a VPN) where speed matters; gates refuse it unless allowed.
    Plain,
    /// Every byte sealed with AES-256-GCM under keys derived from the shared key and both nonces
    /// (wire byte `0x01`).
    Sealed,
    /// As [`Mode::Sealed`], plus an X25519 exchange, so recorded sessions stay secret even if the
    /// shared key is stolen later (wire byte `0x02`). The default.
    #[default]
    SealedFs,
    /// [`Mode::Sealed`] carrying a multiplexed tunnel: many streams, one per client connection,
    /// in HTTP/2 frames inside the records (wire byte `0x11`; see [`crate::mux`]).
    SealedMux,
    /// [`Mode::SealedFs`] carrying a multiplexed tunnel (wire byte `0x12`).
    SealedFsMux,
}

impl Mode {
    /// Every mode, weakest first, the multiplexed ones last.
    pub const ALL: [Self; 5] = [
        Self::Plain,
        Self::Sealed,
        Self::SealedFs,
        Self::SealedMux,
        Self::SealedFsMux,
    ];

    /// The wire bit that marks a multiplexed mode; only ever set on a sealed mode.
    pub const MULTIPLEXED_BIT: u8 = 0x10;

    /// The name used on the command line and in logs: `plain`, `sealed` or `sealed-fs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Sealed => "sealed",
            Self::SealedFs => "sealed-fs",
            Self::SealedMux => "sealed+mux",
            Self::SealedFsMux => "sealed-fs+mux",
        }
    }

    /// True if bytes are encrypted and authenticated after admission.
    pub fn is_sealed(self) -> bool {
        !matches!(self, Self::Plain)
    }

    /// True if the session keys have forward secrecy.
    pub fn has_forward_secrecy(self) -> bool {
        matches!(self, Self::SealedFs | Self::SealedFsMux)
    }

    /// True if the session carries a multiplexed tunnel rather than one connection's bytes.
    pub fn is_multiplexed(self) -> bool {
        matches!(self, Self::SealedMux | Self::SealedFsMux)
    }

    /// The multiplexed mode over this one's records, if there is one (none over plain).
    pub fn multiplexed(self) -> Option<Self> {
        match self {
            Self::Plain => None,
            Self::Sealed | Self::SealedMux => Some(Self::SealedMux),
            Self::SealedFs | Self::SealedFsMux => Some(Self::SealedFsMux),
        }
    }

    /// The mode of the records underneath: a multiplexed mode's sealed mode, else itself.
    pub fn records(self) -> Self {
        match self {
            Self::SealedMux => Self::Sealed,
            Self::SealedFsMux => Self::SealedFs,
            other => other,
        }
    }

    /// The mode's byte in the RESPONSE.
    pub fn wire_byte(self) -> u8 {
        match self {
            Self::Plain => 0x00,
            Self::Sealed => 0x01,
            Self::SealedFs => 0x02,
            Self::SealedMux => Self::MULTIPLEXED_BIT | 0x01,
            Self::SealedFsMux => Self::MULTIPLEXED_BIT | 0x02,
        }
    }

    /// The mode for a RESPONSE byte, if it is one.
    pub fn from_wire_byte(byte: u8) -> Option<Self> {
        match byte {
            0x00 => Some(Self::Plain),
            0x01 => Some(Self::Sealed),
            0x02 => Some(Self::SealedFs),
            0x11 => Some(Self::SealedMux),
            0x12 => Some(Self::SealedFsMux),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown mode {name:?} (use plain, sealed, sealed-fs, sealed+mux or sealed-fs+mux)"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bytes_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
            assert_eq!(Mode::from_wire_byte(mode.wire_byte()), Some(mode));
        }
        assert_eq!(Mode::default(), Mode::SealedFs);
        assert!(Mode::from_wire_byte(0x03).is_none());
        // The multiplexed bit never goes with plain, and nothing else is in it.
        assert!(Mode::from_wire_byte(Mode::MULTIPLEXED_BIT).is_none());
        assert!(Mode::from_wire_byte(0x13).is_none());
        for mode in Mode::ALL {
            assert_eq!(
                mode.is_multiplexed(),
                mode.wire_byte() & Mode::MULTIPLEXED_BIT != 0
            );
            assert_eq!(mode.records().wire_byte(), mode.wire_byte() & 0x0f);
            if let Some(mux) = mode.multiplexed() {
                assert!(mux.is_multiplexed() && mux.records() == mode.records());
                assert_eq!(mux.has_forward_secrecy(), mode.has_forward_secrecy());
            }
        }
        assert_eq!(Mode::Plain.multiplexed(), None);
        assert!("fast".parse::<Mode>().unwrap_err().contains("sealed-fs"));
    }
}
