//! The workers' own sockets in proxy mode, and the manager's private
//! directory. Each worker slot gets a directory of its own there, its
//! `XDG_RUNTIME_DIR`, in both modes; in proxy mode also a socket, bound by
//! corral but not yet listening: the worker inherits it (`{fd}`) and
//! listens once its app is loaded, so a connect that succeeds means the
//! worker is ready, with no boot grace to guess. The socket is a Unix one
//! in the directory, or with `--worker-socket tcp` a loopback TCP port
//! (for servers that take only a TCP listener); [`Address`] is where the
//! front reaches it either way. The directory is mode 0700, made fresh per
//! manager, and removed when the manager ends.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

/// The longest Unix socket path the kernel takes (sun_path less its NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot make a private directory in {base}: {source}")]
    Create { base: PathBuf, source: io::Error },
    #[error(
        "{base} is too long a path for Unix sockets (at most {MAX_SOCKET_PATH} bytes with the socket name)"
    )]
    TooLong { base: PathBuf },
}

/// Where a worker's own socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// A fresh loopback TCP socket on a port the kernel picks, bound and not
/// listening, close-on-exec, with TCP_NODELAY, which the connections the
/// worker accepts inherit (without it `uvicorn --fd` answers keep-alive
/// requests ~40 ms late). The port stays the worker's while the socket is
/// open: no outgoing connection takes it as its source port meanwhile.
pub fn bind_loopback() -> io::Result<(OwnedFd, SocketAddr)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("a loopback socket without an address"))?;
    Ok((socket.into(), addr))
}

fn socket_path(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("worker-{slot}.sock"))
}

fn worker_dir(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("worker-{slot}"))
}

#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// `--runtime-dir`, else `$XDG_RUNTIME_DIR`, else the temporary
    /// directory: a new `corral-<pid>-<n>` inside it, only ours to open.
    pub fn create(base: Option<&Path>) -> Result<RuntimeDir, DirError> {
        let base = base.map(Path::to_path_buf).unwrap_or_else(|| {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .unwrap_or_else(std::env::temp_dir)
        });
        let pid = std::process::id();
        let fits = |dir: &Path| {
            socket_path(dir, crate::limits::MAX_WORKERS)
                .as_os_str()
                .len()
                <= MAX_SOCKET_PATH
        };
        for n in 0..100 {
            let path = base.join(format!("corral-{pid}-{n}"));
            if !fits(&path) {
                return Err(DirError::TooLong { base });
            }
            // Made before it is owned: a directory someone else holds is
            // never removed by a drop here.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(RuntimeDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(DirError::Create { base, source }),
            }
        }
        Err(DirError::Create {
            base,
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn socket_path(&self, slot: u32) -> PathBuf {
        socket_path(&self.path, slot)
    }

    /// A fresh socket for `slot`, bound and not listening, close-on-exec
    /// (the spawner moves it to the worker's descriptor 3).
    pub fn bind(&self, slot: u32) -> io::Result<(OwnedFd, PathBuf)> {
        let path = self.socket_path(slot);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        socket.bind(&SockAddr::unix(&path)?)?;
        Ok((socket.into(), path))
    }

    /// A fresh, empty directory for the worker of `slot`, mode 0700: its
    /// `XDG_RUNTIME_DIR`. What a server makes there for its own process
    /// tree (Gunicorn's control socket, `gunicorn.ctl`) is then never
    /// shared with a sibling worker, nor unlinked by one that stops: two
    /// workers of one slot never run at once, a slot's next worker starts
    /// after the last one was reaped.
    pub fn worker_dir(&self, slot: u32) -> io::Result<PathBuf> {
        let path = worker_dir(&self.path, slot);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(path)
    }

    /// The socket of a worker that is gone.
    pub fn remove(&self, slot: u32) {
        let _ = std::fs::remove_file(self.socket_path(slot));
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_directory_is_private_and_goes_away() {
        let base = std::env::temp_dir();
        let dir = RuntimeDir::create(Some(&base)).unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let (fd, socket) = dir.bind(3).unwrap();
        assert!(socket.exists());
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "bound but not listening: nobody answers yet"
        );
        socket2::Socket::from(fd).listen(8).unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn a_loopback_socket_has_its_port_and_answers_only_once_listening() {
        let (fd, addr) = bind_loopback().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "bound but not listening: nobody answers yet"
        );
        let socket = socket2::Socket::from(fd);
        assert!(socket.tcp_nodelay().unwrap());
        socket.listen(8).unwrap();
        std::net::TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn each_slot_gets_a_private_directory_made_anew() {
        let dir = RuntimeDir::create(Some(&std::env::temp_dir())).unwrap();
        let one = dir.worker_dir(1).unwrap();
        let two = dir.worker_dir(2).unwrap();
        assert_ne!(one, two);
        let mode = std::fs::metadata(&one).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(one.join("gunicorn.ctl"), "left by the last worker").unwrap();
        assert_eq!(dir.worker_dir(1).unwrap(), one);
        assert!(std::fs::read_dir(&one).unwrap().next().is_none());
    }

    #[test]
    fn a_base_too_long_for_socket_paths_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(100)));
        assert!(matches!(
            RuntimeDir::create(Some(&long)),
            Err(DirError::TooLong { .. })
        ));
    }
}
