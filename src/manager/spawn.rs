//! Starting a worker process: the one corner of corral that needs `unsafe`.
//!
//! The child must see its listeners at descriptors 3.. and `LISTEN_PID`
//! equal to its own pid, which only exists after `fork`. Everything the
//! child needs (argv, envp with a blank `LISTEN_PID` buffer, descriptor
//! numbers) is prepared before `fork`; between `fork` and `execve` the child
//! only makes async-signal-safe system calls, so no lock held by another
//! thread of the manager can deadlock it.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::unistd::Pid;

use super::env::MANAGED_ENV;
use crate::config::SOCKET_PLACEHOLDER;

/// Everything that differs from one worker to the next.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    /// Environment without `LISTEN_PID`, which is filled in after `fork`.
    pub env: Vec<(OsString, OsString)>,
    /// Listener descriptors in the manager, moved to 3.. in the child.
    pub listen_fds: &'a [RawFd],
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {program}: {source}")]
    Exec { program: String, source: io::Error },
    #[error("cannot prepare worker: {0}")]
    Prepare(#[from] io::Error),
    #[error("argument contains a NUL byte")]
    Nul,
}

/// Replaces `{fd}` (the first listener) and `{fdN}` in each argument, and
/// in proxy mode `{socket}` with the worker's socket path.
pub fn render_args(
    args: &[String],
    first_fd: RawFd,
    count: usize,
    socket: Option<&Path>,
) -> Vec<String> {
    args.iter()
        .map(|arg| {
            let mut out = arg.replace("{fd}", &first_fd.to_string());
            for i in 0..count {
                out = out.replace(&format!("{{fd{i}}}"), &(first_fd + i as RawFd).to_string());
            }
            if let Some(path) = socket {
                out = out.replace(SOCKET_PLACEHOLDER, &path.to_string_lossy());
            }
            out
        })
        .collect()
}

/// Whether the command is given its descriptors as `{fd}`, `{fd0}`...
pub fn names_descriptors(args: &[String]) -> bool {
    args.iter().any(|a| a.contains("{fd"))
}

/// A command that names `{socket}` and no `{fd}` binds the path itself
/// (`gunicorn -b unix:{socket}`): corral must not bind it first.
pub fn binds_itself(args: &[String]) -> bool {
    args.iter().any(|a| a.contains(SOCKET_PLACEHOLDER)) && !names_descriptors(args)
}

fn cstring(bytes: Vec<u8>) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul)
}

/// Forks and execs one worker in its own process group, returning its pid
/// once `execve` has succeeded.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Pid, SpawnError> {
    let program = cstring(spec.program.as_os_str().as_bytes().to_vec())?;
    let mut argv: Vec<CString> = vec![program.clone()];
    for arg in spec.args {
        argv.push(cstring(arg.clone().into_bytes())?);
    }
    let mut envs: Vec<CString> = Vec::with_capacity(spec.env.len() + 1);
    for (k, v) in &spec.env {
        let mut entry = k.clone().into_vec();
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        envs.push(cstring(entry)?);
    }
    // "LISTEN_PID=" then room for any pid and the NUL the child writes.
    let mut listen_pid = [0u8; 32];
    listen_pid[..11].copy_from_slice(b"LISTEN_PID=");
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(listen_pid.as_ptr().cast());
    env_ptrs.push(std::ptr::null());

    let devnull = std::fs::File::open("/dev/null")?;
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let fds = spec.listen_fds;
    let parent = std::process::id() as libc::pid_t;

    // SAFETY: the child branch below only calls async-signal-safe functions
    // on memory prepared before the fork, then execs or `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if pid == 0 {
        // SAFETY: see above; every pointer stays valid in the child's copy
        // of this stack frame.
        unsafe {
            child(
                parent,
                devnull.as_raw_fd(),
                err_write.as_raw_fd(),
                fds,
                &mut listen_pid,
                &argv_ptrs,
                &env_ptrs,
            )
        }
    }
    drop(err_write);
    drop(devnull);
    let mut errno = [0u8; 4];
    let mut file = std::fs::File::from(err_read);
    let n = read_full(&mut file, &mut errno);
    if n == 4 {
        // Exec failed: the child is gone; reap it so it never shows as a worker.
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        return Err(SpawnError::Exec {
            program: spec.program.display().to_string(),
            source: io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
        });
    }
    Ok(Pid::from_raw(pid))
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> usize {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    n
}

/// The child between `fork` and `execve`. Never returns.
unsafe fn child(
    parent: libc::pid_t,
    devnull: RawFd,
    err_pipe: RawFd,
    fds: &[RawFd],
    listen_pid: &mut [u8; 32],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    unsafe {
        let fail = |err_pipe: RawFd| -> ! {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err_pipe, bytes.as_ptr().cast(), 4);
            libc::_exit(127)
        };
        // Own process group: the worker's children can be killed with it.
        libc::setpgid(0, 0);
        // If the manager dies without a word, its workers go too.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Rust ignores SIGPIPE; a worker must get the default back.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::dup2(devnull, 0) < 0 {
            fail(err_pipe);
        }
        // Two steps, so a listener already sitting at 3.. is not
        // overwritten before it is moved.
        let n = fds.len() as RawFd;
        let mut tmp = [0 as RawFd; 64];
        for (i, fd) in fds.iter().enumerate().take(64) {
            let t = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3 + n);
            if t < 0 {
                fail(err_pipe);
            }
            tmp[i] = t;
        }
        for (i, t) in tmp.iter().enumerate().take(fds.len().min(64)) {
            if libc::dup2(*t, 3 + i as RawFd) < 0 {
                fail(err_pipe);
            }
        }
        // Write our pid into the prepared LISTEN_PID buffer.
        let mut pid = libc::getpid() as u32;
        let mut digits = [0u8; 10];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (pid % 10) as u8;
            len += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..len {
            listen_pid[11 + i] = digits[len - 1 - i];
        }
        listen_pid[11 + len] = 0;
        libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        fail(err_pipe)
    }
}

/// Builds a worker's environment: the manager's own, minus what the manager
/// owns or sets itself (so a variable never appears twice, where libc's
/// getenv would take the manager's), plus the worker's settings.
pub fn worker_env(
    base: impl Iterator<Item = (OsString, OsString)>,
    extra: Vec<(&'static str, String)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = base
        .filter(|(k, _)| {
            !MANAGED_ENV.iter().any(|m| OsStr::new(m) == k)
                && !extra.iter().any(|(e, _)| OsStr::new(e) == k)
        })
        .collect();
    env.extend(
        extra
            .into_iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_placeholders_are_rendered() {
        let args: Vec<String> = ["--fd", "{fd}", "--other={fd1}", "{fd0}", "plain"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            render_args(&args, 3, 2, None),
            vec!["--fd", "3", "--other=4", "3", "plain"]
        );
    }

    #[test]
    fn the_socket_placeholder_is_rendered_and_tells_who_binds() {
        let own: Vec<String> = ["-b", "unix:{socket}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            render_args(&own, 3, 0, Some(Path::new("/run/c/worker-1.sock"))),
            vec!["-b", "unix:/run/c/worker-1.sock"]
        );
        assert!(binds_itself(&own));
        let fd: Vec<String> = ["--fd", "{fd}", "--log={socket}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(!binds_itself(&fd), "given {{fd}}, corral binds");
        assert!(!binds_itself(&[]));
    }

    #[test]
    fn managed_and_overridden_variables_are_not_passed_through() {
        let base = vec![
            (OsString::from("PATH"), OsString::from("/bin")),
            (OsString::from("LISTEN_FDS"), OsString::from("9")),
            (OsString::from("NOTIFY_SOCKET"), OsString::from("/run/x")),
            (OsString::from("CORRAL_LOG_FORMAT"), OsString::from("text")),
        ];
        let env = worker_env(
            base.into_iter(),
            vec![
                ("LISTEN_FDS", "1".into()),
                ("CORRAL_LOG_FORMAT", "json".into()),
            ],
        );
        assert_eq!(
            env,
            vec![
                (OsString::from("PATH"), OsString::from("/bin")),
                (OsString::from("LISTEN_FDS"), OsString::from("1")),
                (OsString::from("CORRAL_LOG_FORMAT"), OsString::from("json")),
            ]
        );
    }
}
