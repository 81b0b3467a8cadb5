//! The reference in docs/ against the code it describes, so it cannot
//! drift: every flag and config key the binary accepts, every admin route
//! in /openapi.json, every metric a live manager and operator export, and
//! every property of the generated CRD is documented; the saturation
//! recipes' PromQL answers from a real Prometheus.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use support::prometheus::Prometheus;
use support::*;

fn doc(name: &str) -> String {
    std::fs::read_to_string(root().join("docs").join(name)).unwrap()
}

fn output(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("WEB_CONCURRENCY")
        .output()
        .unwrap();
    assert!(out.status.success(), "corral {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The long flags `--help` lists.
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| {
            l.split([' ', ',', '=', ')', ']'])
                .find(|t| t.len() > 2 && t.starts_with("--"))
                .map(String::from)
        })
        .collect()
}

fn assert_mentions(doc_name: &str, text: &str, items: impl IntoIterator<Item = String>) {
    let missing: Vec<String> = items
        .into_iter()
        .filter(|item| !text.contains(&format!("`{item}`")))
        .collect();
    assert!(missing.is_empty(), "docs/{doc_name} lacks {missing:?}");
}

#[test]
fn the_configuration_reference_covers_every_flag_and_key() {
    let text = doc("configuration.md");
    let mut flags = BTreeSet::new();
    for sub in ["run", "operator", "status", "scale", "restart", "worker"] {
        flags.extend(long_flags(&output(&[sub, "--help"])));
        assert!(text.contains(&format!("corral {sub}")), "no `corral {sub}`");
    }
    assert!(flags.len() > 30, "{flags:?}");
    assert_mentions("configuration.md", &text, flags);
    let config: serde_json::Value =
        serde_saphyr::from_str(&output(&["run", "--print-config"])).unwrap();
    let keys: Vec<String> = config.as_object().unwrap().keys().cloned().collect();
    assert!(keys.contains(&"graceful-timeout".to_string()), "{keys:?}");
    assert_mentions("configuration.md", &text, keys);
}

#[test]
fn the_admin_api_reference_covers_every_route_and_metric() {
    let text = doc("admin-api.md");
    let c = corral().start();
    c.wait_for("a ready worker", Duration::from_secs(30), |d| d.ready >= 1);
    let (_, body) = get(c.admin, "/openapi.json").unwrap();
    let spec: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut routes = Vec::new();
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    assert!(routes.len() >= 7, "{routes:?}");
    assert_mentions("admin-api.md", &text, routes);

    let (_, manager) = get(c.admin, "/metrics").unwrap();
    // Proxy mode adds the request series.
    let proxied = corral().args(&["--proxy"]).start();
    proxied.wait_for("a ready worker", Duration::from_secs(30), |d| d.ready >= 1);
    assert_eq!(get(proxied.http, "/").unwrap().0, 200);
    let (_, front) = get(proxied.admin, "/metrics").unwrap();
    drop(proxied);
    // The operator serves its metrics while it cannot reach an API server.
    let dir = std::env::temp_dir().join(format!("corral-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = cluster::write_kubeconfig(&dir, "https://127.0.0.1:1", "docs", "x");
    let args: Vec<String> = vec!["operator".into(), "--metrics-bind=127.0.0.1:0".into()];
    let operator = cluster::Operator::spawn(&kubeconfig, "docs", &args, &[]);
    wait_http(operator.metrics, "/livez", Duration::from_secs(30));
    let (_, op) = get(operator.metrics, "/metrics").unwrap();
    drop(operator);
    let _ = std::fs::remove_dir_all(&dir);
    let names: BTreeSet<String> = metrics::type_names(&format!("{manager}{front}{op}"));
    for name in [
        "corral_workers",
        "corral_operator_scale_events_total",
        "corral_http_requests_total",
        "corral_worker_requests_total",
    ] {
        assert!(names.contains(name), "{name} not exported: {names:?}");
    }
    assert_mentions("admin-api.md", &text, names);
}

/// Dotted paths of every property under `schema`: `spec.metrics[].target`.
fn property_paths(prefix: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            out.push(path.clone());
            property_paths(&path, sub, out);
        }
    }
    if schema["items"].is_object() {
        property_paths(&format!("{prefix}[]"), &schema["items"], out);
    }
}

#[test]
fn the_crd_reference_covers_every_property() {
    let crd: serde_json::Value = serde_saphyr::from_str(&output(&["crd"])).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut paths = Vec::new();
    for root in ["spec", "status"] {
        paths.push(root.to_string());
        property_paths(root, &schema["properties"][root], &mut paths);
    }
    assert!(paths.contains(&"spec.metrics[].prometheus.query".to_string()));
    assert_mentions("crd.md", &doc("crd.md"), paths);
}

/// What follows `key` on the first line of crd.md's saturation section
/// that starts with it, without its quotes.
fn recipe(text: &str, key: &str) -> String {
    let section = text
        .split_once("### Keeping an HPA or KEDA for pods")
        .expect("crd.md has the saturation section")
        .1;
    let line = section
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in crd.md's saturation section"));
    line.trim().trim_matches('\'').to_string()
}

#[test]
fn the_saturation_recipes_answer_from_prometheus() {
    let text = doc("crd.md");
    let keda = recipe(&text, "query: ");
    // prometheus-adapter's template, filled in as it fills it for one pod.
    let adapter = recipe(&text, "metricsQuery: ")
        .replace("<<.Series>>", "corral_pod_saturation")
        .replace(
            "<<.LabelMatchers>>",
            "namespace=\"shop\",pod=~\"web-7d4b9-x2k5q\"",
        )
        .replace("<<.GroupBy>>", "pod");
    assert!(keda.contains(r#"namespace="shop",pod=~"web-.*""#), "{keda}");
    let c = corral()
        .flags("--proxy -w 1 --max-workers 1 --worker-concurrency 1")
        .start();
    c.wait_for("a ready worker", Duration::from_secs(30), |d| d.ready >= 1);
    let prometheus = Prometheus::start(&[(
        c.admin,
        &[("namespace", "shop"), ("pod", "web-7d4b9-x2k5q")],
    )]);
    // Held past Prometheus's first scrape, which follows its service
    // discovery's first update (up to 5 s after it is ready).
    let mut held = sent_requests(c.http, "/delay/12000", 1);
    for query in [&keda, &adapter] {
        let value = eventually(query, Duration::from_secs(30), || {
            let result = prometheus.query(query);
            match result.as_slice() {
                [one] => match one["value"][1].as_str().map(str::parse::<f64>) {
                    Some(Ok(v)) if v > 0.0 => Ok(v),
                    other => Err(format!("{other:?}")),
                },
                other => Err(format!("{other:?}")),
            }
        });
        assert!(value <= 1.0, "{query}: {value} with one busy worker");
    }
    assert_answered(&mut held);
}
