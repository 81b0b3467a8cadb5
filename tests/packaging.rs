//! What users apply: the generated CRD must be the one in manifests/.

mod support;

use std::process::Command;

use support::BIN;

#[test]
fn manifests_crd_yaml_is_what_corral_crd_prints() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/crd.yaml");
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        printed == committed,
        "manifests/crd.yaml is stale: regenerate it with `corral crd > manifests/crd.yaml`"
    );
    let crd: serde_json::Value = serde_saphyr::from_str(&printed).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "wa");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in ["selector", "minWorkers", "maxWorkers"] {
        assert!(
            required.contains(&field),
            "{field} not required: {required:?}"
        );
    }
    assert!(spec["properties"]["minWorkers"]["description"].is_string());
    // Kubernetes 1.20.0-1.20.10 cannot convert `null` inside an enum
    // (kubernetes#104969): the CRD would be refused there.
    assert!(!printed.contains("- null"), "an enum lists null");
}

/// No Docker engine here, so the Dockerfile is checked statically: two
/// stages, a non-root runtime holding /usr/local/bin/corral, `corral` as
/// the entrypoint, and a default command the binary really accepts.
#[test]
fn the_dockerfile_builds_a_non_root_image_whose_command_the_binary_accepts() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let build_stage = lines[stages[0]].rsplit(' ').next().unwrap();
    let runtime = &lines[*stages.last().unwrap()..];
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with(&format!("COPY --from={build_stage} "))
                && l.ends_with("/usr/local/bin/corral")),
        "{runtime:?}"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as {user}");
    let exec_form = |key: &str| -> Vec<String> {
        let raw = runtime
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"));
        serde_json::from_str(raw.trim()).unwrap_or_else(|e| panic!("{key} is not exec form: {e}"))
    };
    assert_eq!(exec_form("ENTRYPOINT "), vec!["corral"]);
    let mut cmd = exec_form("CMD ");
    cmd.push("--check-config".into());
    let out = Command::new(BIN).args(&cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`corral {cmd:?}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The ports it exposes are the defaults it listens on.
    let printed = Command::new(BIN)
        .args(["run", "--print-config"])
        .env_remove("WEB_CONCURRENCY")
        .output()
        .unwrap();
    let config = String::from_utf8(printed.stdout).unwrap();
    let expose = runtime
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .unwrap();
    for port in ["8000", "9000"] {
        assert!(expose.split(' ').any(|p| p == port), "EXPOSE {expose}");
        assert!(config.contains(&format!(":{port}")), "{config}");
    }
    let help = Command::new(BIN)
        .args(["operator", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("0.0.0.0:8080") && expose.contains("8080")
    );
    let ignore =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}
