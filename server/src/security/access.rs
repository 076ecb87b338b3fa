//! `Access`: what a caller may do. Each level allows everything the one before it does, except
//! `node`, which is for other nodes of the cluster only (Raft and internal calls).

use std::fmt;
use std::str::FromStr;

/// An access level, as a certificate carries it (`ringkv://access/<level>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reads, scans, status.
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
    /// Reads, writes and every cluster operation.
    Admin,
    /// Another node of the cluster: Raft messages and internal calls.
    Node,
}

impl Access {
    pub const ALL: [Access; 4] = [Access::ReadOnly, Access::ReadWrite, Access::Admin, Access::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "readonly",
            Access::ReadWrite => "readwrite",
            Access::Admin => "admin",
            Access::Node => "node",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Access {
    type Err = String;

    fn from_str(text: &str) -> Result<Access, String> {
        Access::ALL
            .into_iter()
            .find(|access| access.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown access level {text:?}; the levels are {}",
                    Access::ALL.map(Access::as_str).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_through_their_names_and_refuse_others() {
        for access in Access::ALL {
            assert_eq!(access.as_str().parse::<Access>(), Ok(access));
        }
        let refused = "root".parse::<Access>().unwrap_err();
        assert!(
            refused.contains("\"root\"") && refused.contains("readwrite"),
            "{refused}"
        );
    }
}
