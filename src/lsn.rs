//! Log sequence numbers: a byte position in the WAL, printed as `X/Y` hex.

use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered; `Lsn(0)` means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Where one change stands in the WAL: its transaction's commit LSN and its
/// place among the transaction's chat events. Stable when the WAL is
/// replayed, so it names the change (JetStream message ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub index: u32,
}

/// The text was not of the form `X/Y` with hex halves.
#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert!("1-0".parse::<Lsn>().is_err());
        assert!("G/0".parse::<Lsn>().is_err());
        assert!("1/".parse::<Lsn>().is_err());
    }
}
