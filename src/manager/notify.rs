//! The manager's end of the sd_notify protocol. One datagram socket in the
//! abstract namespace (nothing on disk, so a read-only root is fine) with
//! SO_PASSCRED: the kernel stamps each message with the sender's pid, which
//! is how a message is tied to its worker.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram as StdDatagram};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// One thing a worker said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ready,
    Watchdog,
    /// `WATCHDOG=trigger`: the worker asks to be treated as hung.
    WatchdogTrigger,
    Stopping,
    Status(String),
}

/// Parses one datagram: newline-separated `KEY=VALUE` pairs; unknown keys
/// are ignored, as systemd does.
pub fn parse(datagram: &[u8]) -> Vec<Message> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            match (key, value) {
                ("READY", "1") => Some(Message::Ready),
                ("WATCHDOG", "1") => Some(Message::Watchdog),
                ("WATCHDOG", "trigger") => Some(Message::WatchdogTrigger),
                ("STOPPING", "1") => Some(Message::Stopping),
                ("STATUS", text) => Some(Message::Status(text.chars().take(256).collect())),
                _ => None,
            }
        })
        .collect()
}

pub struct NotifySocket {
    socket: UnixDatagram,
    /// The `NOTIFY_SOCKET` value workers get (`@name` for abstract).
    pub address: String,
}

impl NotifySocket {
    pub fn bind() -> io::Result<NotifySocket> {
        let name = format!("corral-notify-{}-{}", std::process::id(), nonce());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let std = StdDatagram::bind_addr(&addr)?;
        NotifySocket::from_std(std, format!("@{name}"))
    }

    /// Re-adopts the socket across a re-exec, so workers keep being heard.
    pub fn from_fd(fd: RawFd, address: String) -> io::Result<NotifySocket> {
        // SAFETY: the re-exec state hands this descriptor to us, once.
        let std = StdDatagram::from(unsafe { OwnedFd::from_raw_fd(fd) });
        NotifySocket::from_std(std, address)
    }

    fn from_std(std: StdDatagram, address: String) -> io::Result<NotifySocket> {
        setsockopt(&std, sockopt::PassCred, &true).map_err(io::Error::from)?;
        std.set_nonblocking(true)?;
        Ok(NotifySocket {
            socket: UnixDatagram::from_std(std)?,
            address,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Waits for the next datagram; returns the sender's pid and its messages.
    pub async fn recv(&self) -> io::Result<(i32, Vec<Message>)> {
        let fd = self.socket.as_raw_fd();
        self.socket
            .async_io(Interest::READABLE, || {
                let mut buf = [0u8; 4096];
                let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                let mut iov = [io::IoSliceMut::new(&mut buf)];
                let msg = nix::sys::socket::recvmsg::<()>(
                    fd,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                let mut pid = 0;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmCredentials(cred) = c {
                        pid = cred.pid();
                    }
                }
                let len = msg.bytes;
                Ok((pid, parse(&buf[..len])))
            })
            .await
    }

    /// Gives up ownership for a re-exec: the descriptor stays open.
    pub fn into_raw_fd(self) -> io::Result<RawFd> {
        Ok(self.socket.into_std()?.into_raw_fd())
    }
}

fn nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_messages() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=serving 3 apps\nMAINPID=4\nWATCHDOG=1"),
            vec![
                Message::Ready,
                Message::Status("serving 3 apps".into()),
                Message::Watchdog
            ]
        );
        assert_eq!(parse(b"WATCHDOG=trigger"), vec![Message::WatchdogTrigger]);
        assert_eq!(parse(b"READY=0\ngarbage"), vec![]);
    }

    #[tokio::test]
    async fn messages_carry_the_sender_pid() {
        let sock = NotifySocket::bind().unwrap();
        let client = StdDatagram::unbound().unwrap();
        let name = sock.address.trim_start_matches('@');
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        client.send_to_addr(b"READY=1", &addr).unwrap();
        let (pid, msgs) = sock.recv().await.unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(msgs, vec![Message::Ready]);
    }
}
