//! USR2: replace the running corral binary in place. The manager execs the
//! (possibly new) binary with the same pid, handing over its listeners, its
//! notify socket, its admin listener and the list of live workers in one
//! environment variable. Workers keep serving throughout; the new image
//! adopts them as the old generation and rolls them, new before old.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::env::{MANAGED_ENV, STATE_ENV};

/// What one manager image tells the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandOff {
    pub listener_fds: Vec<RawFd>,
    pub notify_fd: RawFd,
    pub notify_address: String,
    pub admin_fd: RawFd,
    pub generation: u64,
    pub requested: Option<u32>,
    pub workers: Vec<HandedWorker>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandedWorker {
    pub pid: i32,
    pub id: u32,
    pub generation: u64,
    pub ready: bool,
    pub started_at: f64,
    pub restarts: u32,
}

impl HandOff {
    /// The state left by the previous image, if this start is a re-exec.
    pub fn from_env() -> Option<Result<HandOff, serde_json::Error>> {
        let text = std::env::var(STATE_ENV).ok()?;
        Some(serde_json::from_str(&text))
    }
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only change descriptor flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Execs `exe` with `args`; returns only if that failed, with every
/// descriptor as it was.
pub fn exec(
    exe: &Path,
    args: &[OsString],
    env: Vec<(OsString, OsString)>,
    handoff: &HandOff,
) -> io::Error {
    let state = match serde_json::to_string(handoff) {
        Ok(s) => s,
        Err(e) => return io::Error::other(e),
    };
    let fds: Vec<RawFd> = handoff
        .listener_fds
        .iter()
        .copied()
        .chain([handoff.notify_fd, handoff.admin_fd])
        .collect();
    let to_c =
        |bytes: Vec<u8>| CString::new(bytes).map_err(|_| io::Error::other("NUL byte in argument"));
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = to_c(exe.as_os_str().to_owned().into_vec())?;
        let argv = args
            .iter()
            .map(|a| to_c(a.clone().into_vec()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut envp = Vec::new();
        for (k, v) in env
            .iter()
            .filter(|(k, _)| !MANAGED_ENV.iter().any(|m| k == m))
        {
            let mut e = k.clone().into_vec();
            e.push(b'=');
            e.extend_from_slice(&v.clone().into_vec());
            envp.push(to_c(e)?);
        }
        envp.push(to_c(format!("{STATE_ENV}={state}").into_bytes())?);
        Ok((path, argv, envp))
    };
    let (path, argv, envp) = match build() {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    for &fd in &fds {
        if let Err(e) = set_cloexec(fd, false) {
            restore(&fds);
            return e;
        }
    }
    let err = match nix::unistd::execve(&path, &argv, &envp) {
        Err(errno) => io::Error::from(errno),
        Ok(never) => match never {},
    };
    restore(&fds);
    err
}

fn restore(fds: &[RawFd]) {
    for &fd in fds {
        let _ = set_cloexec(fd, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_round_trips_as_json() {
        let h = HandOff {
            listener_fds: vec![7, 8],
            notify_fd: 9,
            notify_address: "@corral-notify-1-2".into(),
            admin_fd: 10,
            generation: 3,
            requested: Some(4),
            workers: vec![HandedWorker {
                pid: 100,
                id: 1,
                generation: 3,
                ready: true,
                started_at: 1.5,
                restarts: 2,
            }],
        };
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HandOff>(&text).unwrap(), h);
    }
}
