//! `--vsock cid=3,socket=/run/vm1.vsock`

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// One `--vsock` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more; 0-2 are reserved, `u32::MAX` is VMADDR_CID_ANY).
    pub cid: u64,
    /// The host Unix socket vmr listens on for `CONNECT <port>`; guest-initiated connections to
    /// host port P go to `<socket>_P`.
    pub socket: PathBuf,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VsockConfigError {
    #[error("--vsock needs cid=N (3 or more)")]
    MissingCid,
    #[error("--vsock needs socket=PATH")]
    MissingSocket,
    #[error("--vsock: '{0}' is not key=value")]
    NotKeyValue(String),
    #[error("--vsock: unknown key '{0}' (expected cid, socket)")]
    UnknownKey(String),
    #[error("--vsock: key '{0}' given twice")]
    Duplicate(String),
    #[error("--vsock: cid '{0}' is not a number from 3 to 4294967294")]
    BadCid(String),
    #[error("--vsock: socket path must not be empty")]
    EmptySocket,
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut socket) = (None, None);
        for item in s.split(',') {
            let (key, value) =
                item.split_once('=').ok_or_else(|| VsockConfigError::NotKeyValue(item.to_owned()))?;
            match key {
                "cid" if cid.is_none() => {
                    let bad = || VsockConfigError::BadCid(value.to_owned());
                    let n: u64 = value.parse().map_err(|_| bad())?;
                    // Linux takes u32 cids; 0..=2 are hypervisor/local/host, u32::MAX is ANY.
                    if !(3..u64::from(u32::MAX)).contains(&n) {
                        return Err(bad());
                    }
                    cid = Some(n);
                }
                "socket" if socket.is_none() => {
                    if value.is_empty() {
                        return Err(VsockConfigError::EmptySocket);
                    }
                    socket = Some(PathBuf::from(value));
                }
                "cid" | "socket" => return Err(VsockConfigError::Duplicate(key.to_owned())),
                other => return Err(VsockConfigError::UnknownKey(other.to_owned())),
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or(VsockConfigError::MissingCid)?,
            socket: socket.ok_or(VsockConfigError::MissingSocket)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let c: VsockConfig = "cid=3,socket=/run/vm1.vsock".parse().unwrap();
        assert_eq!(c, VsockConfig { cid: 3, socket: "/run/vm1.vsock".into() });
        let c: VsockConfig = "socket=/tmp/a,cid=4294967294".parse().unwrap();
        assert_eq!(c.cid, 4_294_967_294);
    }

    #[test]
    fn rejects_bad_options() {
        assert_eq!("socket=/a".parse::<VsockConfig>(), Err(VsockConfigError::MissingCid));
        assert_eq!("cid=3".parse::<VsockConfig>(), Err(VsockConfigError::MissingSocket));
        assert_eq!("cid=3,socket=".parse::<VsockConfig>(), Err(VsockConfigError::EmptySocket));
        assert_eq!(
            "cid=3,socket=/a,x=1".parse::<VsockConfig>(),
            Err(VsockConfigError::UnknownKey("x".into()))
        );
        assert_eq!(
            "cid=3,cid=4,socket=/a".parse::<VsockConfig>(),
            Err(VsockConfigError::Duplicate("cid".into()))
        );
        assert_eq!("cid".parse::<VsockConfig>(), Err(VsockConfigError::NotKeyValue("cid".into())));
        for cid in ["0", "1", "2", "4294967295", "-3", "x", ""] {
            assert_eq!(
                format!("cid={cid},socket=/a").parse::<VsockConfig>(),
                Err(VsockConfigError::BadCid(cid.into())),
                "{cid}"
            );
        }
    }
}
