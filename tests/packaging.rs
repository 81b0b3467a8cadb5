//! What users apply and build: the generated CRD must be the one in
//! manifests/, and the Dockerfiles are checked against the binary.

mod support;

use std::process::Command;

use support::{BIN, path_with_venv, root, stdout_of, strings};

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
    let required: Vec<&str> = strings(&spec["required"]);
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

/// A Dockerfile's instructions, comments and blank lines dropped.
struct Dockerfile(Vec<String>);

impl Dockerfile {
    fn read(path: &str) -> Dockerfile {
        let text = std::fs::read_to_string(root().join(path)).unwrap();
        Dockerfile(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect(),
        )
    }

    /// The stages' names (`FROM image AS name`), in order.
    fn stages(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|l| l.starts_with("FROM "))
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect()
    }

    /// The instructions of the last stage, the image that ships.
    fn runtime(&self) -> &[String] {
        let last = self.0.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
        &self.0[last..]
    }

    fn value(&self, key: &str) -> &str {
        self.runtime()
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"))
            .trim()
    }

    fn exec_form(&self, key: &str) -> Vec<String> {
        serde_json::from_str(self.value(key))
            .unwrap_or_else(|e| panic!("{key} is not exec form: {e}"))
    }

    fn assert_non_root(&self) {
        let user = self.value("USER ");
        let uid = user.split(':').next().unwrap();
        assert!(uid != "root" && uid != "0", "runs as {user}");
    }

    fn copies_corral_from(&self, stage: &str) -> bool {
        self.runtime().iter().any(|l| {
            l.starts_with(&format!("COPY --from={stage} /usr/local/bin/corral "))
                || (l.starts_with(&format!("COPY --from={stage} "))
                    && l.ends_with("/usr/local/bin/corral"))
        })
    }
}

/// No Docker engine here, so the Dockerfile is checked statically: two
/// stages, a non-root runtime holding /usr/local/bin/corral, `corral` as
/// the entrypoint, and a default command the binary really accepts.
#[test]
fn the_dockerfile_builds_a_non_root_image_whose_command_the_binary_accepts() {
    let file = Dockerfile::read("Dockerfile");
    let stages = file.stages();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(file.copies_corral_from(stages[0]), "{:?}", file.runtime());
    file.assert_non_root();
    assert_eq!(file.exec_form("ENTRYPOINT "), vec!["corral"]);
    let mut cmd = file.exec_form("CMD ");
    cmd.push("--check-config".into());
    stdout_of(Command::new(BIN).args(&cmd));
    // The ports it exposes are the defaults it listens on.
    let printed = Command::new(BIN)
        .args(["run", "--print-config"])
        .env_remove("WEB_CONCURRENCY")
        .output()
        .unwrap();
    let config = String::from_utf8(printed.stdout).unwrap();
    let expose = file.value("EXPOSE ");
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
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    // The crates Cargo.toml patches in from vendor/ reach the build stage
    // before its first `cargo build --locked`.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    if manifest.contains("path = \"vendor/") {
        let lines = &file.0;
        let copied = lines.iter().position(|l| l == "COPY vendor ./vendor");
        let built = lines.iter().position(|l| l.contains("cargo build"));
        assert!(
            matches!((copied, built), (Some(c), Some(b)) if c < b),
            "vendor/ copied before the first build: {lines:?}"
        );
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == "vendor")
        );
    }
}

/// The Django example's image: corral copied from corral's own image (of
/// the chart's version) to where that image keeps it, a non-root user, and
/// `corral run` in front of Uvicorn as a command the binary accepts.
#[test]
fn the_django_example_dockerfile_copies_corral_in_and_runs_it() {
    let file = Dockerfile::read("manifests/examples/django/Dockerfile");
    let stages = file.stages();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(file.copies_corral_from(stages[0]), "{:?}", file.runtime());
    let chart = std::fs::read_to_string(root().join("charts/corral/Chart.yaml")).unwrap();
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .unwrap()
        .trim_matches('"');
    assert!(
        file.0
            .contains(&format!("ARG CORRAL_IMAGE=corral:{app_version}")),
        "the example should copy corral from the image of this version"
    );
    file.assert_non_root();
    let entrypoint = file.exec_form("ENTRYPOINT ");
    assert_eq!(entrypoint, vec!["corral", "run"]);
    let mut args = vec!["run".to_string(), "--check-config".into()];
    args.extend(file.exec_form("CMD "));
    assert!(args.contains(&"{fd}".to_string()), "{args:?}");
    stdout_of(Command::new(BIN).args(&args).env("PATH", path_with_venv()));
}

/// hadolint (from PyPI, installed by .ci/test) on both Dockerfiles, at its
/// strictest threshold.
#[test]
fn hadolint_finds_nothing_in_the_dockerfiles() {
    let hadolint = std::env::var_os("CORRAL_HADOLINT")
        .expect("CORRAL_HADOLINT is not set: run the tests with .ci/test, which installs hadolint");
    let lint = |args: &[&str], stdin: &[u8]| {
        support::run_with_stdin(
            Command::new(&hadolint)
                .args(["--failure-threshold", "info"])
                .args(args)
                .current_dir(root()),
            stdin,
        )
    };
    for file in ["Dockerfile", "manifests/examples/django/Dockerfile"] {
        let (ok, text) = lint(&[file], b"");
        assert!(ok, "{file}: {text}");
    }
    // It does report: an unpinned base image and apt without versions.
    let (ok, text) = lint(
        &["-"],
        b"FROM debian\nRUN apt-get update && apt-get install -y curl\n",
    );
    assert!(
        !ok && text.contains("DL3006") && text.contains("DL3008"),
        "{text}"
    );
}
