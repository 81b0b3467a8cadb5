//! corral: a process manager for HTTP workers in Kubernetes pods.
//!
//! The map, one line per module:
//! - [`cli`]: the command line of the one `corral` binary (clap types only).
//! - [`config`]: flags, `CORRAL_*` environment and YAML file merged and validated (pure).
//! - [`values`]: the value types settings are written in (durations, byte sizes, bind addresses, file modes, address lists, TLS client-certificate rules).
//! - [`contract`]: the admin API's JSON documents, shared by the manager and its clients.
//! - [`backoff`]: how long to wait before trying again (worker restarts, API server reconnects).
//! - [`limits`]: the worker-count bounds and the memory guard, shared by the manager and the operator.
//! - [`manager`]: the supervisor that binds listeners and keeps workers running.
//! - [`proxy`]: proxy mode's front: each request to the least busy worker, queued, retried, drained.
//! - [`admin`]: the manager's HTTP control and observation surface.
//! - [`run`]: `corral run`: config, admin API and manager wired together.
//! - [`worker`]: the built-in tokio/hyper worker (`corral worker`).
//! - [`http`]: the one HTTP client (CLI, operator, tests) and the one accept loop (admin API, operator metrics, built-in worker).
//! - [`operator`]: `corral operator`, the WorkerAutoscaler controller.
//! - [`client`]: `corral status`, `corral scale`, `corral restart` against a running manager.
//! - [`telemetry`]: tracing setup, text or JSON.

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod contract;
pub mod http;
pub mod limits;
pub mod manager;
pub mod operator;
pub mod proxy;
pub mod run;
pub mod telemetry;
pub mod values;
pub mod worker;
