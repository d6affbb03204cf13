//! A Linux tap device with a virtio-net header on every frame (IFF_VNET_HDR).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use thiserror::Error;

/// Size of `struct virtio_net_hdr_v1` (with num_buffers), used by virtio 1.x drivers.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("tap name '{0}' is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    #[error("cannot open tap {name}: {source}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name}: cannot set {what}: {source}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF uses it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap interface (non-blocking).
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens tap `name`, creating it if it does not exist (needs CAP_NET_ADMIN) or attaching to
    /// an existing persistent one.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct that lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(TapError::SetIff { name: name.to_owned(), source: io::Error::last_os_error() });
        }
        let tap = Tap { file, name: name.to_owned() };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let rc = unsafe {
            libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &hdr_len as *const libc::c_int)
        };
        if rc < 0 {
            return Err(tap.configure_err("vnet header size"));
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    fn configure_err(&self, what: &'static str) -> TapError {
        TapError::Configure { name: self.name.clone(), what, source: io::Error::last_os_error() }
    }

    /// Which offloaded frames (TUN_F_*) the tap may hand us, i.e. what the guest can receive.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc =
            unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD as _, flags as libc::c_ulong) };
        if rc < 0 {
            return Err(self.configure_err("offloads"));
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (vnet header included); WouldBlock when none is queued.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    /// Sends one frame (vnet header included).
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
