//! Resolution's rules, from layers to a validated configuration.

use std::path::Path;

use super::*;

fn host() -> Host {
    Host {
        cpus: 2,
        web_concurrency: None,
        in_kubernetes: false,
        listen_fds: vec![],
    }
}

fn yaml(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_yaml(Path::new("corral.yaml"), text)
}

#[test]
fn defaults_follow_the_host() {
    let c = Config::resolve(Settings::default(), Settings::default(), &host()).unwrap();
    assert_eq!(c.workers, 2);
    assert_eq!(c.max_workers, 8);
    assert_eq!(c.min_workers, 1);
    assert_eq!(c.max_surge, 1);
    assert_eq!(c.backlog, 2048);
    assert_eq!(c.readiness, Readiness::Notify);
    assert_eq!(c.shutdown_delay, Duration::ZERO);
    assert_eq!(c.timeout, Some(Duration::from_secs(30)));
    let in_pod = Host {
        in_kubernetes: true,
        ..host()
    };
    let c = Config::resolve(Settings::default(), Settings::default(), &in_pod).unwrap();
    assert_eq!(c.shutdown_delay, Duration::from_secs(5));
}

#[test]
fn socket_activation_supplies_the_default_binds() {
    let h = Host {
        listen_fds: vec![3, 4],
        ..host()
    };
    let c = Config::resolve(Settings::default(), Settings::default(), &h).unwrap();
    assert_eq!(c.binds, vec![BindAddr::Fd(3), BindAddr::Fd(4)]);
}

#[test]
fn web_concurrency_sets_the_default_count() {
    let h = Host {
        web_concurrency: Some("3".into()),
        ..host()
    };
    assert_eq!(
        Config::resolve(Settings::default(), Settings::default(), &h)
            .unwrap()
            .workers,
        3
    );
    let bad = Host {
        web_concurrency: Some("many".into()),
        ..host()
    };
    let err = Config::resolve(Settings::default(), Settings::default(), &bad).unwrap_err();
    assert!(err.to_string().contains("WEB_CONCURRENCY"), "{err}");
}

#[test]
fn flags_beat_file_and_file_beats_defaults() {
    let file = yaml("workers: 3\nbacklog: 100\ngraceful-timeout: 5s\n").unwrap();
    let cli = Settings {
        workers: Some(4),
        ..Settings::default()
    };
    let c = Config::resolve(cli, file, &host()).unwrap();
    assert_eq!(c.workers, 4);
    assert_eq!(c.backlog, 100);
    assert_eq!(c.graceful_timeout, Duration::from_secs(5));
}

#[test]
fn a_command_defaults_to_auto_readiness() {
    let file = yaml("command: [uvicorn, --fd, '{fd}', app:app]\n").unwrap();
    let c = Config::resolve(Settings::default(), file, &host()).unwrap();
    assert_eq!(c.readiness, Readiness::Auto);
    assert_eq!(c.command.unwrap()[0], "uvicorn");
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        ("workers: 0\n", "workers"),
        ("workers: 10\nmax-workers: 4\n", "workers"),
        ("min-workers: 5\nmax-workers: 2\n", "max-workers"),
        ("memory-headroom: 2\n", "memory-headroom"),
        ("backlog: 0\n", "backlog"),
        ("bind: ['127.0.0.1:1', '127.0.0.1:1']\n", "bind"),
        ("log-level: 'a=b=c'\n", "log-level"),
        ("workers: 100000\n", "workers"),
        ("max-workers: 5000\n", "max-workers"),
        ("max-surge: 2000\n", "max-surge"),
    ];
    for (text, field) in cases {
        let file = yaml(text).unwrap();
        let err = Config::resolve(Settings::default(), file, &host()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { field: f, .. } if *f == field),
            "{text}: {err}"
        );
    }
}

#[test]
fn bad_files_name_the_key() {
    let err = yaml("wrokers: 3\n").unwrap_err().to_string();
    assert!(err.contains("wrokers"), "{err}");
    let err = yaml("workers: -1\n").unwrap_err().to_string();
    assert!(err.contains("workers"), "{err}");
    let err = yaml("bind: [nowhere]\n").unwrap_err().to_string();
    assert!(err.contains("nowhere"), "{err}");
    assert!(yaml("workers: [\n").is_err());
}

#[test]
fn printed_config_reads_back_the_same() {
    let file =
        yaml("workers: 3\nbind: ['127.0.0.1:8001', 'unix:/tmp/x.sock']\nmemory-limit: 512Mi\n")
            .unwrap();
    let c = Config::resolve(Settings::default(), file, &host()).unwrap();
    let text = serde_saphyr::to_string(&c.printed).unwrap();
    let again = Config::resolve(Settings::default(), yaml(&text).unwrap(), &host()).unwrap();
    assert_eq!(c, again);
}

#[test]
fn proxy_mode_has_defaults_and_reads_back() {
    let file = yaml(
        "proxy: true\nworker-concurrency: 4\nmax-requests: 20\nmax-requests-jitter: 5\nforwarded-allow-ips: 10.0.0.0/8, ::1\nrequest-timeout: 2s\nkill-stuck: true\n",
    )
    .unwrap();
    let c = Config::resolve(Settings::default(), file, &host()).unwrap();
    let p = c.proxy.clone().expect("proxy mode");
    assert_eq!(p.worker_concurrency, Some(4));
    assert_eq!((p.max_requests, p.max_requests_jitter), (Some(20), 5));
    assert_eq!(p.max_queue, 1024);
    assert_eq!(p.queue_timeout, Duration::from_secs(30));
    assert!(p.forwarded_allow_ips.allows("10.1.2.3".parse().unwrap()));
    assert!(!p.forwarded_allow_ips.allows("127.0.0.1".parse().unwrap()));
    assert!(p.kill_stuck);
    assert_eq!(p.front_threads, 2, "the host's CPUs");
    let text = serde_saphyr::to_string(&c.printed).unwrap();
    let again = Config::resolve(Settings::default(), yaml(&text).unwrap(), &host()).unwrap();
    assert_eq!(c, again);
    let off = Config::resolve(Settings::default(), Settings::default(), &host()).unwrap();
    let text = serde_saphyr::to_string(&off.printed).unwrap();
    let again = Config::resolve(Settings::default(), yaml(&text).unwrap(), &host()).unwrap();
    assert_eq!(again.proxy, None);
}

#[test]
fn socket_placeholder_needs_a_unix_worker_socket() {
    let resolve =
        |text: &str| yaml(text).and_then(|f| Config::resolve(Settings::default(), f, &host()));
    let command = "command: [uvicorn, --uds, '{socket}', app:app]\n";
    let unix = resolve(&format!("proxy: true\n{command}")).unwrap();
    assert_eq!(unix.proxy.unwrap().worker_socket, SocketKind::Unix);
    let err = resolve(&format!("proxy: true\nworker-socket: tcp\n{command}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--worker-socket tcp") && err.contains("{fd}"),
        "{err}"
    );
    assert!(resolve(&format!("worker-socket: tcp\n{command}")).is_err());
    let fd = "proxy: true\nworker-socket: tcp\ncommand: [uvicorn, --fd, '{fd}', app:app]\n";
    let tcp = resolve(fd).unwrap().proxy.unwrap();
    assert_eq!(tcp.worker_socket, SocketKind::Tcp);
}

#[test]
fn the_front_s_threads_follow_the_cpu_quota_unless_given() {
    let proxied = |text: &str, cpus: u32| {
        let h = Host { cpus, ..host() };
        Config::resolve(Settings::default(), yaml(text).unwrap(), &h)
            .unwrap()
            .proxy
            .unwrap()
            .front_threads
    };
    assert_eq!(proxied("proxy: true\n", 6), 6);
    assert_eq!(proxied("proxy: true\nfront-threads: 1\n", 6), 1);
}

#[test]
fn proxy_settings_without_proxy_mode_are_refused_by_name() {
    for (text, key) in [
        ("worker-concurrency: 2\n", "worker-concurrency"),
        ("max-requests: 100\n", "max-requests"),
        (
            "proxy: false\nforwarded-allow-ips: '*'\n",
            "forwarded-allow-ips",
        ),
        ("kill-stuck: true\n", "kill-stuck"),
        ("proxy: true\nkill-stuck: true\n", "kill-stuck"),
        ("proxy: true\nqueue-timeout: 0\n", "queue-timeout"),
        ("front-threads: 2\n", "front-threads"),
        ("worker-socket: tcp\n", "worker-socket"),
        (
            "proxy: true\nlimit-request-fields: 0\n",
            "limit-request-fields",
        ),
        (
            "proxy: true\nlimit-request-line: 70000\n",
            "limit-request-line",
        ),
        (
            "proxy: true\nlimit-request-field-size: 70000\n",
            "limit-request-field-size",
        ),
        ("proxy: true\nmax-connections: 0\n", "max-connections"),
        ("proxy: true\nfront-threads: 0\n", "front-threads"),
        ("proxy: true\nfront-threads: 5000\n", "front-threads"),
        (
            "proxy: true\nworker-ready-path: healthz\n",
            "worker-ready-path",
        ),
        (
            "proxy: true\nforwarded-allow-ips: 10.0.0.0/40\n",
            "forwarded-allow-ips",
        ),
    ] {
        let err = yaml(text)
            .and_then(|f| Config::resolve(Settings::default(), f, &host()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn out_of_range_values_in_the_file_name_their_key() {
    for (text, key) in [
        ("graceful-timeout: 1e300\n", "graceful-timeout"),
        ("timeout: 1e20\n", "timeout"),
        ("memory-limit: 99Ei\n", "memory-limit"),
        ("backlog: 1e12\n", "backlog"),
    ] {
        let err = yaml(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn the_default_maximum_stays_under_the_cap_on_huge_machines() {
    let big = Host {
        cpus: 100_000,
        ..host()
    };
    let c = Config::resolve(Settings::default(), Settings::default(), &big).unwrap();
    assert_eq!((c.workers, c.max_workers), (MAX_WORKERS, MAX_WORKERS));
}

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_config_file_text_is_an_error_or_a_config(text in any::<String>()) {
            if let Ok(file) = Settings::from_yaml(Path::new("c.yaml"), &text) {
                let _ = Config::resolve(Settings::default(), file, &host());
            }
        }

        #[test]
        fn any_yaml_mapping_of_known_keys_is_an_error_or_a_config(
            key in prop::sample::select(vec![
                "bind", "backlog", "workers", "max-workers", "memory-limit",
                "memory-headroom", "timeout", "graceful-timeout", "shutdown-delay",
                "socket-mode", "admin-bind", "readiness", "command", "proxy",
                "worker-concurrency", "max-queue", "queue-timeout", "max-requests",
                "forwarded-allow-ips", "request-timeout", "worker-ready-path",
            ]),
            value in "[ -~]{0,24}",
        ) {
            let text = format!("{key}: {value}\n");
            if let Ok(file) = Settings::from_yaml(Path::new("c.yaml"), &text) {
                let _ = Config::resolve(Settings::default(), file, &host());
            }
        }

        #[test]
        fn any_web_concurrency_is_an_error_or_a_config(value in any::<String>()) {
            let h = Host { web_concurrency: Some(value), ..host() };
            let _ = Config::resolve(Settings::default(), Settings::default(), &h);
        }
    }
}
