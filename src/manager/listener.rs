//! The manager's listeners: bound once here, or adopted from the process
//! that started corral (systemd's LISTEN_FDS, or corral itself across a
//! USR2 re-exec), then handed to every worker. TCP listeners get
//! TCP_NODELAY, which accepted sockets inherit: without it `uvicorn --fd`
//! answers keep-alive requests ~40 ms late (Nagle meets delayed ACK).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::values::BindAddr;

/// One listening socket the manager holds for its workers.
#[derive(Debug)]
pub struct Listener {
    pub bind: BindAddr,
    /// What the socket is bound to, for logs, metrics and LISTEN_FDNAMES.
    pub name: String,
    pub socket: Socket,
    pub is_tcp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: BindAddr, source: io::Error },
    #[error("cannot use {addr}: {message}")]
    Unusable { addr: BindAddr, message: String },
}

impl Listener {
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// A second descriptor of the socket for corral's own server (proxy
    /// mode's front), non-blocking; the socket closes once both are gone.
    /// An `https://` bind is served with `certs`.
    pub fn serve_copy(
        &self,
        certs: Option<&std::sync::Arc<crate::http::tls::Certs>>,
    ) -> io::Result<crate::http::server::Listener> {
        use crate::http::server::Listener as Served;
        let copy = self.socket.try_clone()?;
        copy.set_nonblocking(true)?;
        let fd = std::os::fd::OwnedFd::from(copy);
        let tcp = |fd| tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd));
        Ok(
            if let (BindAddr::Tls(_), Some(certs)) = (&self.bind, certs) {
                Served::Tls(tcp(fd)?, certs.clone())
            } else if self.is_tcp {
                Served::Tcp(tcp(fd)?)
            } else {
                crate::http::server::Listener::Unix(tokio::net::UnixListener::from_std(
                    std::os::unix::net::UnixListener::from(fd),
                )?)
            },
        )
    }
}

/// Sockets handed to this process at start, matched to binds by address.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Socket>,
}

impl Inherited {
    /// Adopts descriptors the parent passed; they must be listening sockets.
    pub fn from_fds(fds: &[RawFd]) -> io::Result<Inherited> {
        let mut sockets = Vec::new();
        for &fd in fds {
            // SAFETY: the protocol that named these descriptors (LISTEN_FDS,
            // or our own re-exec state) transfers their ownership to us, and
            // each is taken once.
            let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
            socket.set_cloexec(true)?;
            sockets.push(socket);
        }
        Ok(Inherited { sockets })
    }

    /// The inherited socket bound to `wanted`. Port 0 asks for whatever
    /// port the kernel picks, so across a re-exec it is the port the
    /// previous image was given: any inherited socket on that address.
    fn take_matching(&mut self, wanted: &SockAddr) -> Option<Socket> {
        let same = |a: &SockAddr| {
            let ip_port = match (a.as_socket(), wanted.as_socket()) {
                (Some(a), Some(w)) if w.port() == 0 => a.ip() == w.ip(),
                (a, w) => a == w,
            };
            ip_port && a.as_pathname() == wanted.as_pathname()
        };
        let pos = self
            .sockets
            .iter()
            .position(|s| s.local_addr().is_ok_and(|a| same(&a)))?;
        Some(self.sockets.remove(pos))
    }

    fn take_fd(&mut self, fd: RawFd) -> Option<Socket> {
        let pos = self.sockets.iter().position(|s| s.as_raw_fd() == fd)?;
        Some(self.sockets.remove(pos))
    }
}

/// Binds or adopts every address, all or nothing: on error the sockets
/// opened so far are closed again.
pub fn open_all(
    binds: &[BindAddr],
    backlog: u32,
    socket_mode: u32,
    inherited: &mut Inherited,
) -> Result<Vec<Listener>, ListenError> {
    binds
        .iter()
        .map(|bind| open(bind, backlog, socket_mode, inherited))
        .collect()
}

fn open(
    bind: &BindAddr,
    backlog: u32,
    socket_mode: u32,
    inherited: &mut Inherited,
) -> Result<Listener, ListenError> {
    let err = |source: io::Error| ListenError::Bind {
        addr: bind.clone(),
        source,
    };
    let socket = match bind {
        BindAddr::Tcp(addr) | BindAddr::Tls(addr) => {
            let wanted = SockAddr::from(*addr);
            match inherited.take_matching(&wanted) {
                Some(s) => s,
                None => bind_tcp(*addr, backlog).map_err(err)?,
            }
        }
        BindAddr::Unix(path) => {
            let wanted = SockAddr::unix(path).map_err(err)?;
            match inherited.take_matching(&wanted) {
                Some(s) => s,
                None => bind_unix(path, backlog, socket_mode).map_err(err)?,
            }
        }
        BindAddr::Fd(fd) => match inherited.take_fd(*fd) {
            Some(s) => s,
            None => adopt_fd(*fd).map_err(|message| ListenError::Unusable {
                addr: bind.clone(),
                message,
            })?,
        },
    };
    let local = socket.local_addr().map_err(err)?;
    let is_tcp = local.as_socket().is_some();
    if is_tcp {
        socket.set_tcp_nodelay(true).map_err(err)?;
    }
    let name = match (local.as_socket(), local.as_pathname()) {
        (Some(addr), _) if matches!(bind, BindAddr::Tls(_)) => format!("https://{addr}"),
        (Some(addr), _) => addr.to_string(),
        (None, Some(path)) => format!("unix:{}", path.display()),
        _ => bind.to_string(),
    };
    Ok(Listener {
        bind: bind.clone(),
        name,
        socket,
        is_tcp,
    })
}

fn bind_tcp(addr: std::net::SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog as i32)?;
    Ok(socket)
}

fn bind_unix(path: &Path, backlog: u32, mode: u32) -> io::Result<Socket> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        // A socket file nobody answers on is left over from a previous run.
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on it",
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    socket.listen(backlog as i32)?;
    Ok(socket)
}

fn adopt_fd(fd: RawFd) -> Result<Socket, String> {
    // SAFETY: `fd://N` names a descriptor this process was started with and
    // hands it to corral; nothing else in the process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = Socket::from(owned);
    match socket.is_listener() {
        Ok(true) => {
            socket.set_cloexec(true).map_err(|e| e.to_string())?;
            Ok(socket)
        }
        Ok(false) => {
            // Not ours to close: give it back untouched.
            std::mem::forget(socket);
            Err(format!("descriptor {fd} is not a listening socket"))
        }
        Err(e) => {
            std::mem::forget(socket);
            Err(format!("descriptor {fd} is not an open socket ({e})"))
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let BindAddr::Unix(path) = &self.bind {
            // Only remove the file if it is still the one we bound.
            if self
                .socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .is_some_and(|p| p == *path)
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_listeners_get_nodelay_and_the_backlog() {
        let binds = ["127.0.0.1:0".parse::<BindAddr>().unwrap()];
        let listeners = open_all(&binds, 77, 0o660, &mut Inherited::default()).unwrap();
        let l = &listeners[0];
        assert!(l.is_tcp);
        assert!(l.socket.tcp_nodelay().unwrap(), "TCP_NODELAY must be set");
        assert!(l.socket.is_listener().unwrap());
        assert!(l.name.starts_with("127.0.0.1:"));
        let queue = crate::manager::readings::listen_queue(l.fd()).unwrap();
        assert_eq!(queue.backlog, 77);
    }

    #[test]
    fn an_inherited_socket_is_adopted_by_address() {
        let original = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = original.local_addr().unwrap().as_socket().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(original);
        let mut inherited = Inherited::from_fds(&[fd]).unwrap();
        let listeners = open_all(&[BindAddr::Tcp(addr)], 2048, 0o660, &mut inherited).unwrap();
        assert_eq!(
            listeners[0].fd(),
            fd,
            "the inherited socket is reused, not a new one bound"
        );
    }

    #[test]
    fn port_zero_adopts_the_inherited_socket_of_that_address() {
        // As across a re-exec of `--bind 127.0.0.1:0`: the port the first
        // image got is the one to keep serving on.
        let original = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let other = bind_tcp("127.0.0.2:0".parse().unwrap(), 16).unwrap();
        let fds = [other, original].map(std::os::fd::IntoRawFd::into_raw_fd);
        let mut inherited = Inherited::from_fds(&fds).unwrap();
        let wanted = "127.0.0.1:0".parse::<BindAddr>().unwrap();
        let listeners = open_all(&[wanted], 2048, 0o660, &mut inherited).unwrap();
        assert_eq!(listeners[0].fd(), fds[1]);
    }
}
