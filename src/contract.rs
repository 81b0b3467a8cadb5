//! The admin API's JSON documents. The manager writes them and every client
//! (the `corral status` CLI, the operator) reads them through these types
//! only, so a change here is a change of the contract: bump [`VERSION`]
//! when a field changes meaning or goes away. The same types, with their
//! doc comments, are the schemas of `/openapi.json`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version of the `/workers` document.
pub const VERSION: u32 = 1;

/// `GET /workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkersDoc {
    pub version: u32,
    /// The count the manager is driving towards.
    pub desired: u32,
    /// The configured count, which `{"desired": null}` returns to.
    pub configured: u32,
    /// The count set at runtime (signal or API), if one is in force.
    pub requested: Option<u32>,
    /// Worker processes alive, draining ones included.
    pub running: u32,
    pub ready: u32,
    pub shutting_down: bool,
    pub generation: u64,
    pub limits: Limits,
    /// The last request that a limit cut down, if any.
    pub last_limited: Option<Limited>,
    /// Mean CPU use per active worker over the last window, in cores.
    pub cpu_utilisation: f64,
    /// Proxy mode only: mean requests in flight per ready worker over the
    /// last window (about 3 s), the signal the operator's `Concurrency`
    /// metric reads; absent in shared-socket mode, where corral does not
    /// see requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<f64>,
    /// Proxy mode only: requests waiting in corral's queue for a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<u32>,
    pub workers: Vec<WorkerDoc>,
    /// The last workers to end, newest first (at most 16).
    pub recent_exits: Vec<RecentExit>,
    pub listeners: Vec<ListenerDoc>,
    pub cgroup: CgroupDoc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecentExit {
    pub id: u32,
    pub pid: i32,
    pub generation: u64,
    #[serde(flatten)]
    pub exit: ExitDoc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Limits {
    pub min: u32,
    pub max: u32,
    /// Workers the memory limit holds at the measured per-worker memory.
    pub memory_cap: Option<u32>,
    pub memory_limit_bytes: Option<u64>,
    /// Where the memory limit comes from: `cgroup` or `flag`.
    pub memory_limit_source: Option<String>,
    /// The largest resident memory of a running worker.
    pub per_worker_memory_bytes: Option<u64>,
}

/// Why a requested worker count was not applied as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitReason {
    MinWorkers,
    MaxWorkers,
    MemoryGuard,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Limited {
    pub requested: u32,
    pub applied: u32,
    pub by: LimitReason,
    /// Unix time, seconds.
    pub at: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Starting,
    Ready,
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerDoc {
    /// Stable slot number, also the worker's `CORRAL_WORKER_ID`.
    pub id: u32,
    pub pid: i32,
    pub state: WorkerState,
    pub generation: u64,
    /// Unix time, seconds.
    pub started_at: f64,
    /// Times this slot's worker was replaced after it died unasked.
    pub restarts: u32,
    pub cpu_seconds: f64,
    /// CPU use over the last window, in cores.
    pub cpu_utilisation: f64,
    pub rss_bytes: u64,
    /// The last `STATUS=` the worker sent.
    pub status: Option<String>,
    /// Proxy mode only: requests this worker holds now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
    /// Proxy mode only: requests sent to this worker since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// How the previous worker in this slot ended.
    pub last_exit: Option<ExitDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExitDoc {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: ExitReason,
    /// Unix time, seconds.
    pub at: f64,
}

/// Why a worker ended; also the `reason` label of `corral_worker_exits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Stopped by corral (scale-down, restart, shutdown) and exited.
    Drained,
    /// Died without being asked.
    Crashed,
    /// Missed its watchdog heartbeat.
    Watchdog,
    /// Did not become ready within the boot timeout.
    BootTimeout,
    /// Did not finish within the graceful timeout and was killed.
    Killed,
    /// Replaced for its age or its memory (`--max-worker-lifetime`,
    /// `--max-worker-memory`), its successor ready first, and exited.
    Recycled,
}

impl ExitReason {
    pub const ALL: [ExitReason; 6] = [
        ExitReason::Drained,
        ExitReason::Crashed,
        ExitReason::Watchdog,
        ExitReason::BootTimeout,
        ExitReason::Killed,
        ExitReason::Recycled,
    ];

    /// corral asked the worker to go and it went: no crash, no restart.
    pub fn is_asked(self) -> bool {
        matches!(self, ExitReason::Drained | ExitReason::Recycled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Drained => "drained",
            ExitReason::Crashed => "crashed",
            ExitReason::Watchdog => "watchdog",
            ExitReason::BootTimeout => "boot_timeout",
            ExitReason::Killed => "killed",
            ExitReason::Recycled => "recycled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListenerDoc {
    pub address: String,
    /// Connections waiting in the accept queue now (TCP only).
    pub queue_length: Option<u32>,
    /// The largest queue seen over the last window.
    pub queue_max_window: Option<u32>,
    pub backlog: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CgroupDoc {
    /// CPUs the quota allows, fractional.
    pub cpu_quota_cores: Option<f64>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
}

/// `PUT /workers`. `desired: null` returns to the configured count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Required; `null` is how a client says "back to the default".
    #[serde(deserialize_with = "nullable")]
    // Required but nullable: schemars would otherwise read an Option as
    // "may be left out" and the document would promise a default there is not.
    #[schemars(required, extend("nullable" = true))]
    pub desired: Option<u32>,
}

fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u32>::deserialize(d)
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDoc {
    pub error: String,
    /// For 422: the limit that refused the request.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub limited_by: Option<LimitReason>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub limit: Option<u32>,
}

/// `GET /readyz` and `GET /livez`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProbeDoc {
    pub ok: bool,
    pub reason: String,
}
