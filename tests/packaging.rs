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
