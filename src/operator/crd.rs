//! The `WorkerAutoscaler` custom resource (`corral.dev/v1alpha1`). The Rust
//! types are the source of truth: `corral crd` prints the CRD generated
//! from them and `manifests/crd.yaml` is kept equal by a test. Every field's
//! doc comment becomes its schema description, which `kubectl explain` shows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Sets the worker count of each selected pod's corral manager from its
/// metrics.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "corral.dev",
    version = "v1alpha1",
    kind = "WorkerAutoscaler",
    namespaced,
    shortname = "wa",
    status = "WorkerAutoscalerStatus",
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minWorkers"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxWorkers"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"Workers","type":"integer","jsonPath":".status.workers"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Utilisation","type":"string","jsonPath":".status.utilisation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerAutoscalerSpec {
    /// Pods whose corral managers this autoscaler sizes, in its namespace.
    pub selector: LabelSelector,

    /// Port of the corral admin API in each pod.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: u16,

    /// Secret key holding the admin API bearer token (the content of the
    /// manager's --admin-token-file). Without it the managers refuse changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,

    /// Fewest workers per pod.
    #[schemars(range(min = 1))]
    pub min_workers: u32,

    /// Most workers per pod.
    #[schemars(range(min = 1))]
    pub max_workers: u32,

    /// What to scale on. Each metric proposes ceil(workers * current / target)
    /// per pod; the largest proposal wins. Empty means CPU at 0.7.
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,

    /// How fast to move, as in a HorizontalPodAutoscaler.
    #[serde(default)]
    pub behavior: Behavior,

    /// Seconds between two passes over the pods.
    #[serde(default = "default_poll")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: u32,

    /// Observe and report, change nothing.
    #[serde(default)]
    pub paused: bool,

    /// The workload whose replicas this autoscaler also sets, as an HPA
    /// names it: anything with a scale subresource (Deployment,
    /// StatefulSet...) in the autoscaler's namespace, whose pods the
    /// selector selects. Pods are filled to their ceiling before replicas
    /// rise, and shed workers before replicas fall. Without it only
    /// workers are scaled. If a HorizontalPodAutoscaler targets the same
    /// workload, replicas are left to it (the ScalingReplicas condition
    /// names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target_ref: Option<ScaleTargetRef>,

    /// Fewest replicas, with scaleTargetRef. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<u32>,

    /// Most replicas; required with scaleTargetRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<u32>,

    /// How fast replicas move, as an HPA's `behavior` (policy type Pods or
    /// Percent). Defaults, an HPA's: up at once by 4 pods or 100% per 15s;
    /// down after 300s of lower recommendations, by up to 100% per 15s.
    #[serde(default)]
    pub replica_behavior: Behavior,
}

/// A workload with a scale subresource, as in an HPA's scaleTargetRef.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// API version of the workload, e.g. apps/v1.
    pub api_version: String,
    /// Kind of the workload, e.g. Deployment or StatefulSet.
    pub kind: String,
    /// Name of the workload, in the autoscaler's namespace.
    pub name: String,
}

fn default_admin_port() -> u16 {
    9000
}

fn default_poll() -> u32 {
    5
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of a Secret in the autoscaler's namespace.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// One metric. `type` is `CPU` (mean CPU per worker, in cores), `QueueLength`
/// (connections waiting in the listen backlog; target 0 adds one worker per
/// waiting connection), `Concurrency` (mean requests in flight per worker,
/// as Knative's concurrency target; only pods whose corral runs with
/// --proxy report it, and the others are named in their status and not
/// scaled on it) or `Prometheus` (any PromQL query, with `{{pod}}` and
/// `{{namespace}}` templated). An unknown type is reported in the
/// InvalidSpec condition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// CPU, QueueLength, Concurrency or Prometheus.
    #[serde(rename = "type")]
    pub metric_type: String,

    /// Target value per pod, for CPU, QueueLength and Concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub target: Option<f64>,

    /// The query and its target, for type Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PrometheusMetric {
    /// Base URL of the Prometheus server, http or https, e.g. http://prometheus:9090.
    pub address: String,
    /// An instant query returning one number; `{{pod}}` and `{{namespace}}`
    /// are replaced by the pod's name and namespace.
    pub query: String,
    /// The value the query should have.
    #[schemars(range(min = 0.0))]
    pub target: f64,
}

/// Scale-up and scale-down rules.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    /// Defaults: no stabilization; at most 4 workers or 100% more per 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Defaults: 120s stabilization; at most 50% fewer per 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Look back this long and take the most conservative recommendation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<u32>,

    /// Which policy applies when several do: Max (the one allowing the most
    /// change), Min, or Disabled (no change in this direction).
    // Not an Option: a nullable enum puts `null` among the enum values,
    // which Kubernetes 1.20.0-1.20.10 cannot convert (kubernetes#104969).
    #[serde(default)]
    pub select_policy: SelectPolicy,

    /// Limits on how much may change per period.
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// Workers (a count, in `behavior`), Pods (a count, in
    /// `replicaBehavior`) or Percent (of the count at the period's start).
    #[serde(rename = "type")]
    pub policy_type: PolicyType,
    /// How many workers or pods, or what percentage.
    #[schemars(range(min = 1))]
    pub value: u32,
    /// The period the limit applies to.
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: u32,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PolicyType {
    Workers,
    Pods,
    Percent,
}

/// What the operator last saw and did.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerAutoscalerStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods selected.
    #[serde(default)]
    pub pods: u32,
    /// Workers desired over all reachable pods.
    #[serde(default)]
    pub workers: u32,
    /// Mean of the first metric over the pods against its target, e.g. "54%/70%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilisation: Option<String>,
    /// With scaleTargetRef: the target's replicas now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// With scaleTargetRef: the replicas the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
    /// With scaleTargetRef: what held the replicas back: minReplicas,
    /// maxReplicas, fillingPods (some pod is below its ceiling),
    /// podsStarting, stabilization, scaleUpPolicy, scaleDownPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_limited_by: Option<String>,
    /// Per pod: what it runs, what it should run, and why not more.
    #[serde(default)]
    pub pod_status: Vec<PodScaleStatus>,
    /// Ready, ScalingActive, ScalingLimited, InvalidSpec, and with
    /// scaleTargetRef ScalingReplicas.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodScaleStatus {
    pub name: String,
    /// Workers the pod's manager drives towards now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u32>,
    /// Workers the operator wants there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    /// What held the decision back: maxWorkers, minWorkers, memoryGuard,
    /// scaleUpPolicy, scaleDownPolicy, stabilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<String>,
    /// When the operator last changed this pod's count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Why the pod was skipped, or which metrics it could not be scaled
    /// on this pass (e.g. no concurrency outside proxy mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
