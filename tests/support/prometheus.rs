//! A real Prometheus server (Debian's package) scraping given targets every
//! second, each with the labels a PodMonitor would add; killed on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use hyper::Method;

use super::{fetch, free_port, unique, wait_http};

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(targets: &[(SocketAddr, &[(&str, &str)])]) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("corral-prom"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = String::from(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
             scrape_configs:\n  - job_name: corral\n    static_configs:\n",
        );
        for (target, labels) in targets {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            config += &format!(
                "      - targets: ['{target}']\n        labels: {{{}}}\n",
                labels.join(", ")
            );
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        // Prometheus logs the address it was given, not the one bound: the
        // port is chosen here.
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("prometheus (Debian package) is installed by .ci/test");
        wait_http(addr, "/-/ready", Duration::from_secs(90));
        Prometheus { child, addr, dir }
    }

    /// An instant query's `data.result`; panics on an error answer.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let uri = corral::http::client::url(
            &self.addr.to_string(),
            "/api/v1/query",
            &[("query", promql)],
        )
        .unwrap();
        let answer = fetch(Method::GET, uri, None, None).unwrap();
        let (status, body) = (answer.status, String::from_utf8_lossy(&answer.body));
        let answer: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: {status} {body}: {e}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "{promql}: {status} {body}"
        );
        answer["data"]["result"].as_array().unwrap().clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
