//! The kernel's device events, as `udevadm monitor --kernel` shows them: a netlink socket
//! (NETLINK_KOBJECT_UEVENT, group 1) on which the kernel announces every device added or
//! removed. No udev needed, and nothing read from a disk: the watcher hears a stick go
//! from the kernel itself.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::dm::DevNum;

/// One event: `remove@/devices/.../block/sdb/sdb2` and its `KEY=value` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub subsystem: String,
    /// `sdb2`, `loop0`, `dm-3`.
    pub devname: String,
    pub dev: Option<DevNum>,
}

impl Uevent {
    /// Parses one message of the kernel's: `ACTION@DEVPATH`, then `KEY=value` fields, each
    /// NUL-terminated. `None` for anything else (udev's own messages start with
    /// "libudev" and never reach group 1 from the kernel anyway).
    pub fn parse(message: &[u8]) -> Option<Uevent> {
        let mut fields = message.split(|&b| b == 0).filter(|f| !f.is_empty());
        let head = std::str::from_utf8(fields.next()?).ok()?;
        head.split_once('@')?;
        let mut event = Uevent::default();
        let (mut major, mut minor) = (None, None);
        for field in fields {
            let Ok(field) = std::str::from_utf8(field) else {
                continue;
            };
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "ACTION" => event.action = value.to_string(),
                "SUBSYSTEM" => event.subsystem = value.to_string(),
                "DEVNAME" => event.devname = value.trim_start_matches("/dev/").to_string(),
                "MAJOR" => major = value.parse().ok(),
                "MINOR" => minor = value.parse().ok(),
                _ => {}
            }
        }
        if event.action.is_empty() {
            return None;
        }
        event.dev = major.zip(minor);
        Some(event)
    }

    /// A block device went away.
    pub fn is_block_removal(&self) -> bool {
        self.action == "remove" && self.subsystem == "block"
    }
}

/// What one wait on the socket gave.
pub enum Received {
    Event(Uevent),
    /// Not an event of the kernel's (another sender, or not one the parser knows).
    Other,
    /// The kernel had more to say than the socket could hold: events were lost, and the
    /// devices must be looked at directly.
    Overrun,
    /// Nothing within the time given.
    Timeout,
}

/// The socket, bound to the kernel's group.
pub struct Socket {
    fd: OwnedFd,
    buffer: Vec<u8>,
}

impl Socket {
    pub fn open() -> std::io::Result<Socket> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A burst of events (a hub with several sticks pulled) must not be lost: a large
        // receive buffer, forced past the default limit (root may).
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with a c_int that lives across the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: sockaddr_nl is plain data; zeroed is its empty value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = 1;
        // SAFETY: bind with an address that lives across the call, of its own size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Socket {
            fd,
            buffer: vec![0; 16 << 10],
        })
    }

    /// Waits up to `timeout_ms` for the next message.
    pub fn receive(&mut self, timeout_ms: i32) -> std::io::Result<Received> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(Received::Timeout)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(Received::Timeout);
        }
        // SAFETY: sockaddr_nl is plain data.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: the buffer and the address live across the call, with their sizes.
        let got = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                self.buffer.as_mut_ptr().cast(),
                self.buffer.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut from_len,
            )
        };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOBUFS) => Ok(Received::Overrun),
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(Received::Timeout),
                _ => Err(e),
            };
        }
        // Only the kernel (port 0) speaks for the devices.
        if from.nl_pid != 0 {
            return Ok(Received::Other);
        }
        Ok(match Uevent::parse(&self.buffer[..got as usize]) {
            Some(event) => Received::Event(event),
            None => Received::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(fields: &[&str]) -> Vec<u8> {
        fields
            .iter()
            .flat_map(|f| [f.as_bytes(), b"\0"].concat())
            .collect()
    }

    #[test]
    fn a_partitions_removal_is_parsed() {
        let m = message(&[
            "remove@/devices/pci0000:00/0000:00:05.0/virtio2/block/vda/vda2",
            "ACTION=remove",
            "DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/block/vda/vda2",
            "SUBSYSTEM=block",
            "DEVNAME=vda2",
            "DEVTYPE=partition",
            "PARTN=2",
            "SEQNUM=1234",
            "MAJOR=254",
            "MINOR=2",
        ]);
        let e = Uevent::parse(&m).unwrap();
        assert_eq!(e.action, "remove");
        assert_eq!(e.devname, "vda2");
        assert_eq!(e.dev, Some((254, 2)));
        assert!(e.is_block_removal());
    }

    /// The kernel's own event, heard on the socket: a loop device made and removed
    /// (LOOP_CTL_ADD, LOOP_CTL_REMOVE), which needs neither device-mapper nor a disk.
    #[test]
    fn the_socket_hears_the_kernel_remove_a_block_device() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
        const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
        let mut socket = Socket::open().unwrap();
        let control = std::fs::File::open("/dev/loop-control").unwrap();
        // A number no loop device has (the kernel refuses one in use: EEXIST).
        let n = (200..400)
            .find(|n| {
                // SAFETY: LOOP_CTL_ADD takes the device number as its argument.
                unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_ADD, *n as libc::c_long) >= 0 }
            })
            .expect("a free loop device number");
        // SAFETY: as above.
        let rc = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_REMOVE, n as libc::c_long) };
        assert!(rc >= 0, "{}", std::io::Error::last_os_error());
        let name = format!("loop{n}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut added, mut removed) = (false, false);
        while std::time::Instant::now() < deadline && !removed {
            if let Received::Event(e) = socket.receive(500).unwrap()
                && e.devname == name
                && e.subsystem == "block"
            {
                added |= e.action == "add";
                if e.is_block_removal() {
                    assert_eq!(e.dev, Some((7, n)), "{e:?}");
                    removed = true;
                }
            }
        }
        assert!(added, "the add of {name} was heard (control)");
        assert!(removed, "the removal of {name} was heard");
    }

    #[test]
    fn other_events_and_foreign_messages_are_told_apart() {
        let add = message(&[
            "add@/devices/virtual/block/loop0",
            "ACTION=add",
            "SUBSYSTEM=block",
            "DEVNAME=loop0",
            "MAJOR=7",
            "MINOR=0",
        ]);
        assert!(!Uevent::parse(&add).unwrap().is_block_removal());
        let usb = message(&[
            "remove@/devices/pci0000:00/usb1/1-1",
            "ACTION=remove",
            "SUBSYSTEM=usb",
        ]);
        let e = Uevent::parse(&usb).unwrap();
        assert!(!e.is_block_removal());
        assert_eq!(e.dev, None);
        // udev's own re-broadcast starts with a binary header.
        assert_eq!(Uevent::parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(Uevent::parse(b""), None);
    }
}
