//! Readings the manager takes without any help from its workers: CPU time
//! and resident memory from /proc, the accept-queue depth of each listener
//! from TCP_INFO, and the cgroup's CPU quota and memory limit (v2 and v1).
//! Parsers are pure functions over file contents; the readers around them
//! are thin.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// CPU time and memory of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/statm`.
pub fn proc_usage(pid: i32) -> Option<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    Some(ProcUsage {
        cpu_seconds: parse_stat_cpu_ticks(&stat)? as f64 / clock_ticks(),
        rss_bytes: parse_statm_rss_pages(&statm)? * page_size(),
    })
}

/// The manager's own resident memory.
pub fn self_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    Some(parse_statm_rss_pages(&statm)? * page_size())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// utime + stime, in clock ticks. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn parse_statm_rss_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// A listener's accept queue: connections waiting, and the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub waiting: u32,
    pub backlog: u32,
}

/// For a listening TCP socket, Linux reports the accept queue in TCP_INFO:
/// `tcpi_unacked` is its length and `tcpi_sacked` its limit.
pub fn listen_queue(fd: RawFd) -> Option<Queue> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(Queue {
            waiting: info.tcpi_unacked,
            backlog: info.tcpi_sacked,
        })
    }
}

/// The cgroup limits that bound this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cgroup {
    pub cpu_quota_cores: Option<f64>,
    pub memory_limit: Option<u64>,
    pub memory_usage: Option<u64>,
}

/// Where this process's cgroup files are.
#[derive(Debug, Clone, PartialEq)]
pub enum CgroupPaths {
    V2(PathBuf),
    V1 {
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
}

impl CgroupPaths {
    /// From `/proc/self/cgroup` and the mounts under /sys/fs/cgroup.
    pub fn detect() -> Option<CgroupPaths> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let root = Path::new("/sys/fs/cgroup");
        let unified = root.join("cgroup.controllers").exists();
        parse_proc_cgroup(&text, unified, root)
    }

    pub fn read(&self) -> Cgroup {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        match self {
            CgroupPaths::V2(dir) => Cgroup {
                cpu_quota_cores: read(dir.join("cpu.max")).and_then(|t| parse_cpu_max(&t)),
                memory_limit: read(dir.join("memory.max")).and_then(|t| parse_limit(&t)),
                memory_usage: read(dir.join("memory.current")).and_then(|t| t.trim().parse().ok()),
            },
            CgroupPaths::V1 { cpu, memory } => Cgroup {
                cpu_quota_cores: cpu.as_ref().and_then(|d| {
                    parse_cfs(
                        &read(d.join("cpu.cfs_quota_us"))?,
                        &read(d.join("cpu.cfs_period_us"))?,
                    )
                }),
                memory_limit: memory
                    .as_ref()
                    .and_then(|d| parse_limit(&read(d.join("memory.limit_in_bytes"))?)),
                memory_usage: memory
                    .as_ref()
                    .and_then(|d| read(d.join("memory.usage_in_bytes"))?.trim().parse().ok()),
            },
        }
    }
}

/// Maps `/proc/self/cgroup` lines to directories. Inside a container the
/// path may name the host's hierarchy while the container sees its own
/// cgroup at the mount root; then the root is used.
pub fn parse_proc_cgroup(text: &str, unified: bool, root: &Path) -> Option<CgroupPaths> {
    let locate = |mount: PathBuf, path: &str| {
        let dir = mount.join(path.trim_start_matches('/'));
        if dir.exists() { dir } else { mount }
    };
    if unified {
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        return Some(CgroupPaths::V2(locate(root.to_path_buf(), path)));
    }
    let mut cpu = None;
    let mut memory = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        for c in controllers.split(',') {
            match c {
                "cpu" => cpu = Some(locate(root.join(controllers), path)),
                "memory" => memory = Some(locate(root.join("memory"), path)),
                _ => {}
            }
        }
    }
    Some(CgroupPaths::V1 { cpu, memory })
}

/// `cpu.max`: "max 100000" or "<quota> <period>".
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

/// v1 CFS quota: -1 means none.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `memory.max` ("max") or v1 `memory.limit_in_bytes` (a huge number).
pub fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    let n: u64 = text.parse().ok()?;
    (n < 1 << 60).then_some(n)
}

/// CPUs this process may run on (its affinity mask), before any quota.
/// Not `available_parallelism`, which already rounds the quota down.
pub fn machine_cpus() -> u32 {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return libc::CPU_COUNT(&set).max(1) as u32;
        }
        libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as u32
    }
}

/// Whole CPUs a quota allows, rounded up; the machine's count without one.
pub fn cpus_allowed(quota: Option<f64>, machine: u32) -> u32 {
    match quota {
        Some(q) => (q.ceil() as u32).clamp(1, machine.max(1)),
        None => machine.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let stat = "1234 (my (weird) app) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_statm_rss_pages("2000 512 100 1 0 300 0"), Some(512));
    }

    #[test]
    fn own_usage_is_readable() {
        let me = proc_usage(std::process::id() as i32).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(self_rss().unwrap() > 0);
    }

    #[test]
    fn cgroup_v2_files() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(536870912));
    }

    #[test]
    fn cgroup_v1_files() {
        assert_eq!(parse_cfs("-1", "100000"), None);
        assert_eq!(parse_cfs("50000", "100000"), Some(0.5));
        assert_eq!(parse_limit("9223372036854771712"), None);
    }

    #[test]
    fn cpu_count_from_quota() {
        assert_eq!(cpus_allowed(Some(1.5), 8), 2);
        assert_eq!(cpus_allowed(Some(0.2), 8), 1);
        assert_eq!(cpus_allowed(Some(16.0), 8), 8);
        assert_eq!(cpus_allowed(None, 4), 4);
    }

    #[test]
    fn proc_cgroup_lines() {
        let root = Path::new("/nonexistent");
        assert_eq!(
            parse_proc_cgroup("0::/kubepods/pod1\n", true, root),
            Some(CgroupPaths::V2(root.to_path_buf()))
        );
        let v1 = "12:memory:/test\n11:cpu,cpuacct:/test\n1:name=systemd:/\n";
        assert_eq!(
            parse_proc_cgroup(v1, false, root),
            Some(CgroupPaths::V1 {
                cpu: Some(root.join("cpu,cpuacct")),
                memory: Some(root.join("memory")),
            })
        );
    }

    #[test]
    fn listen_queue_of_a_tcp_listener() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _c1 = std::net::TcpStream::connect(addr).unwrap();
        let _c2 = std::net::TcpStream::connect(addr).unwrap();
        let q = listen_queue(l.as_raw_fd()).unwrap();
        assert_eq!(q.waiting, 2);
        assert!(q.backlog >= 2, "backlog {}", q.backlog);
    }
}
