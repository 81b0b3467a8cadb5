//! One reconcile pass over a WorkerAutoscaler: check the spec, read every
//! selected pod's manager (and Prometheus), decide, PUT the changes, and
//! write status, conditions and Events. Deletion hands the pods back to
//! their configured default (finalizer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::http::client as http;
use crate::limits::Bounds;

use super::crd::{PodScaleStatus, WorkerAutoscaler, WorkerAutoscalerStatus};
use super::decide::{self, History, PodInput};
use super::metrics::OperatorMetrics;
use super::pods::{self, PodError};
use super::spec::{self, MetricPlan, Plan};

pub const FINALIZER: &str = "corral.dev/release-workers";
const MANAGER: &str = "corral-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the object has no namespace")]
    NoNamespace,
}

/// Per pod, what the operator remembers between passes.
#[derive(Debug, Clone)]
struct PodMemory {
    history: History,
    last_scale: Option<String>,
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    /// One pool for every pod's admin API and Prometheus.
    http: http::Client,
    memory: Mutex<HashMap<String, PodMemory>>,
    /// Pods already named in a `ConcurrencyUnreported` Event, so that a
    /// shared-mode pod gets one when it is first seen so, not one a pass.
    unreported: Mutex<HashSet<String>>,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<OperatorMetrics>) -> Context {
        Context {
            client,
            recorder,
            metrics,
            http: http::Client::new(),
            memory: Mutex::new(HashMap::new()),
            unreported: Mutex::new(HashSet::new()),
        }
    }
}

/// Pods worked on at once in a pass: enough that a slow pod does not hold
/// up the rest, few enough that a pass over a thousand pods does not open
/// hundreds of connections to the API server (its Events) at once.
const POD_CONCURRENCY: usize = 32;

fn now_secs() -> f64 {
    Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// Entry point for the controller: times the pass and counts its result.
pub async fn reconcile(wa: Arc<WorkerAutoscaler>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.duration.start_timer();
    let ns = wa.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<WorkerAutoscaler> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, wa, |event| async {
        match event {
            Finalizer::Apply(wa) => apply(&wa, &ctx).await,
            Finalizer::Cleanup(wa) => release(&wa, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    timer.observe_duration();
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciliations
        .with_label_values(&[label])
        .inc();
    result
}

pub fn error_policy(wa: Arc<WorkerAutoscaler>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(autoscaler = %wa.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// What one pod yielded this pass.
struct PodOutcome {
    status: PodScaleStatus,
    desired: Option<u32>,
    first_metric: Option<f64>,
    reachable: bool,
    unauthorized: bool,
    limited: bool,
    /// The change made this pass, for its Event: up or down, and the note.
    scaled: Option<(bool, String)>,
    /// The pod has just been found not to report concurrency: an Event is due.
    unreported: bool,
}

/// What a pod's status (and its Event) says when a `Concurrency` metric
/// finds no value: the manager only measures it in the request path.
const CONCURRENCY_UNREPORTED: &str =
    "no concurrency reported (its corral runs without --proxy): not scaled on Concurrency";
const UNREPORTED_REASON: &str = "ConcurrencyUnreported";

/// Pods whose change gets an Event of its own in one pass; past that one
/// Event sums up the rest. A rollout of a large Deployment would otherwise
/// write an Event per pod per pass, which the API server rate-limits and
/// `kubectl describe` cannot show anyway.
const POD_EVENTS_PER_PASS: usize = 10;

async fn apply(wa: &WorkerAutoscaler, ctx: &Context) -> Result<Action, Error> {
    let ns = wa.namespace().ok_or(Error::NoNamespace)?;
    let name = wa.name_any();
    let previous = wa.status.clone().unwrap_or_default();
    let plan = match spec::plan(&wa.spec) {
        Ok(plan) => plan,
        Err(message) => {
            warn!(autoscaler = %name, %message, "invalid spec");
            let status = WorkerAutoscalerStatus {
                observed_generation: wa.metadata.generation,
                conditions: vec![
                    condition(&previous, "InvalidSpec", true, "InvalidSpec", &message, wa),
                    condition(
                        &previous,
                        "Ready",
                        false,
                        "InvalidSpec",
                        "the spec is invalid",
                        wa,
                    ),
                    condition(
                        &previous,
                        "ScalingActive",
                        false,
                        "InvalidSpec",
                        "no pod is touched",
                        wa,
                    ),
                ],
                ..previous.clone()
            };
            if !condition_is(&previous, "InvalidSpec", "True", wa.metadata.generation) {
                publish(ctx, wa, None, EventType::Warning, "InvalidSpec", &message).await;
            }
            write_status(ctx, wa, status).await?;
            return Ok(Action::await_change());
        }
    };

    let token = read_token(ctx, wa, &ns).await?;
    let selected = selected_pods(ctx, &ns, &plan).await?;
    let uid = wa.uid().unwrap_or_default();
    let now = now_secs();
    let token_value = token.as_ref().ok().cloned().flatten();
    // Built first, then run a few at a time (a closure inside the stream
    // would make the pass's future not Send).
    let passes: Vec<_> = selected
        .iter()
        .map(|pod| {
            scale_pod(
                ctx,
                wa,
                &plan,
                pod,
                &uid,
                token_value.as_deref(),
                token.is_err(),
                now,
            )
        })
        .collect();
    let outcomes: Vec<PodOutcome> = stream::iter(passes)
        .buffered(POD_CONCURRENCY)
        .collect()
        .await;
    forget_gone_pods(ctx, &uid, &selected);

    record_scaling(ctx, wa, &selected, &outcomes).await;
    record_unreported(ctx, wa, &selected, &outcomes).await;
    let reachable = outcomes.iter().filter(|o| o.reachable).count();
    let workers: u32 = outcomes.iter().filter_map(|o| o.desired).sum();
    let unauthorized = outcomes.iter().any(|o| o.unauthorized);
    let limited: Vec<&PodOutcome> = outcomes.iter().filter(|o| o.limited).collect();
    let values: Vec<f64> = outcomes.iter().filter_map(|o| o.first_metric).collect();
    let utilisation = (!values.is_empty()).then(|| {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        match &plan.metrics[0] {
            MetricPlan::Cpu { target } => format!("{:.0}%/{:.0}%", mean * 100.0, target * 100.0),
            MetricPlan::Queue { target }
            | MetricPlan::Concurrency { target }
            | MetricPlan::Prometheus { target, .. } => format!("{mean:.1}/{target}"),
        }
    });

    let (active, active_reason, active_message) = if plan.paused {
        (
            false,
            "Paused",
            "spec.paused is set: observing only".to_string(),
        )
    } else if let Err(e) = &token {
        (false, "TokenUnavailable", e.clone())
    } else if unauthorized {
        (
            false,
            "Unauthorized",
            "a pod's manager refused the token: check tokenSecretRef".to_string(),
        )
    } else if selected.is_empty() {
        (false, "NoPods", "the selector matches no pod".to_string())
    } else if reachable == 0 {
        (
            false,
            "PodsUnreachable",
            "no selected pod's admin API answered".to_string(),
        )
    } else {
        (
            true,
            "Scaling",
            format!("{reachable} of {} pods measured", selected.len()),
        )
    };
    let (limited_now, limited_message) = match limited.first() {
        Some(o) => (
            true,
            format!(
                "{} pod(s) held back, e.g. {} by {}",
                limited.len(),
                o.status.name,
                o.status.limited_by.as_deref().unwrap_or("-")
            ),
        ),
        None => (false, "no pod is held back".to_string()),
    };
    let status = WorkerAutoscalerStatus {
        observed_generation: wa.metadata.generation,
        pods: selected.len() as u32,
        workers,
        utilisation,
        pod_status: outcomes.into_iter().map(|o| o.status).collect(),
        conditions: vec![
            condition(
                &previous,
                "Ready",
                reachable > 0,
                if reachable > 0 {
                    "PodsMeasured"
                } else {
                    "NoPodMeasured"
                },
                &format!("{reachable} of {} pods reachable", selected.len()),
                wa,
            ),
            condition(
                &previous,
                "ScalingActive",
                active,
                active_reason,
                &active_message,
                wa,
            ),
            condition(
                &previous,
                "ScalingLimited",
                limited_now,
                if limited_now { "Limited" } else { "NotLimited" },
                &limited_message,
                wa,
            ),
            condition(
                &previous,
                "InvalidSpec",
                false,
                "Valid",
                "the spec is valid",
                wa,
            ),
        ],
    };
    if !active
        && !plan.paused
        && !condition_is(&previous, "ScalingActive", "False", wa.metadata.generation)
        && active_reason != "NoPods"
    {
        publish(
            ctx,
            wa,
            None,
            EventType::Warning,
            active_reason,
            &active_message,
        )
        .await;
    }
    write_status(ctx, wa, status).await?;
    Ok(Action::requeue(Duration::from_secs(u64::from(
        plan.poll_seconds,
    ))))
}

#[allow(
    clippy::too_many_arguments,
    reason = "one pod's pass needs the whole pass's context"
)]
async fn scale_pod(
    ctx: &Context,
    wa: &WorkerAutoscaler,
    plan: &Plan,
    pod: &Pod,
    uid: &str,
    token: Option<&str>,
    token_missing: bool,
    now: f64,
) -> PodOutcome {
    let pod_name = pod.name_any();
    let mut outcome = PodOutcome {
        status: PodScaleStatus {
            name: pod_name.clone(),
            current: None,
            desired: None,
            limited_by: None,
            last_scale_time: None,
            message: None,
        },
        desired: None,
        first_metric: None,
        reachable: false,
        unauthorized: false,
        limited: false,
        scaled: None,
        unreported: false,
    };
    let Some(ip) = pod_ready_ip(pod) else {
        outcome.status.message = Some("not running and ready: skipped".into());
        return outcome;
    };
    let addr = admin_addr(&ip, plan.admin_port);
    let doc = match pods::workers(&ctx.http, &addr).await {
        Ok(doc) => doc,
        Err(e) => {
            outcome.status.message = Some(format!("unreachable: {e}"));
            return outcome;
        }
    };
    outcome.reachable = true;
    let current = doc.desired;
    outcome.status.current = Some(current);
    let namespace = wa.namespace().unwrap_or_default();
    let key = format!("{uid}/{pod_name}");
    let mut values = Vec::new();
    let mut concurrency_missing = false;
    for m in &plan.metrics {
        let value = match m {
            MetricPlan::Cpu { .. } => Some(doc.cpu_utilisation),
            MetricPlan::Queue { .. } => Some(
                doc.listeners
                    .iter()
                    .filter_map(|l| l.queue_max_window)
                    .max()
                    .unwrap_or(0) as f64,
            ),
            // Absent means "not measured", never 0: read as 0 it would
            // shrink every shared-mode pod to minWorkers.
            MetricPlan::Concurrency { .. } => {
                if doc.concurrency.is_none() && !concurrency_missing {
                    add_message(&mut outcome.status, CONCURRENCY_UNREPORTED.into());
                    concurrency_missing = true;
                }
                doc.concurrency
            }
            MetricPlan::Prometheus { server, query, .. } => {
                let q = spec::render_query(query, &pod_name, &namespace);
                match pods::prometheus(&ctx.http, server, &q).await {
                    Ok(v) => v,
                    Err(e) => {
                        add_message(&mut outcome.status, format!("prometheus: {e}"));
                        None
                    }
                }
            }
        };
        values.push((m.metric(), value));
    }
    outcome.first_metric = values.first().and_then(|v| v.1);
    outcome.unreported = newly_unreported(&ctx.unreported, &key, concurrency_missing);
    // The manager's own bounds narrow the autoscaler's, so a PUT is never
    // refused for a count the manager cannot take.
    let min = plan.min.max(doc.limits.min).min(doc.limits.max);
    let max = plan.max.min(doc.limits.max).max(min);
    let input = PodInput {
        current,
        bounds: Bounds {
            min,
            max,
            memory_cap: doc.limits.memory_cap,
        },
        values,
    };
    let mut memory = ctx
        .memory
        .lock()
        .map(|m| m.get(&key).cloned())
        .unwrap_or(None)
        .unwrap_or_else(|| PodMemory {
            history: History::starting_at(current, now, plan.behavior.down.window),
            last_scale: None,
        });
    let Some(decision) = decide::decide(&input, &memory.history, &plan.behavior, now) else {
        add_message(&mut outcome.status, "no metric could be read".into());
        outcome.status.desired = Some(current);
        outcome.desired = Some(current);
        return outcome;
    };
    outcome.status.limited_by = decision.limited_by.map(|l| l.as_str().to_string());
    outcome.limited = decision.limited_by.is_some();
    let mut change = 0i64;
    let mut applied = current;
    // What the status shows: the decision, or what the manager took of it.
    let mut shown = decision.desired;
    if decision.desired != current && !plan.paused && !token_missing {
        let mut answer = pods::set_desired(&ctx.http, &addr, token, Some(decision.desired)).await;
        // The manager knows its limits best (its memory guard moves with
        // the workers' size): asked too much, go as far as it allows.
        if let Err(PodError::Limited { by, limit, .. }) = &answer {
            outcome.status.limited_by = Some(decide::Limit::Bound(*by).as_str().to_string());
            outcome.limited = true;
            if *limit != current {
                answer = pods::set_desired(&ctx.http, &addr, token, Some(*limit)).await;
            }
        }
        match answer {
            Ok(after) => {
                applied = after.desired;
                shown = applied;
                change = i64::from(applied) - i64::from(current);
            }
            Err(PodError::Unauthorized { .. }) => {
                outcome.unauthorized = true;
                add_message(&mut outcome.status, "the manager refused the token".into());
            }
            Err(e) => add_message(&mut outcome.status, format!("scale refused: {e}")),
        }
        if change != 0 {
            let direction = if change > 0 { "up" } else { "down" };
            ctx.metrics
                .scale_events
                .with_label_values(&[direction])
                .inc();
            memory.last_scale = Some(Timestamp::now().to_string());
            let note = format!(
                "pod {pod_name}: {current} -> {applied} workers{}",
                outcome
                    .status
                    .limited_by
                    .as_ref()
                    .map(|l| format!(" (limited by {l})"))
                    .unwrap_or_default()
            );
            info!(autoscaler = %wa.name_any(), pod = %pod_name, from = current, to = applied, "scaled");
            outcome.scaled = Some((change > 0, note));
        }
    }
    outcome.status.desired = Some(shown);
    outcome.desired = Some(applied);
    outcome.status.last_scale_time = memory.last_scale.clone();
    memory
        .history
        .record(now, decision.recommendation, change, history_keep(plan));
    if let Ok(mut m) = ctx.memory.lock() {
        m.insert(key, memory);
    }
    outcome
}

/// Drops what the operator remembers of this autoscaler's pods that are
/// no longer selected (rolled out, deleted, relabelled): a long-running
/// controller would otherwise keep every pod it ever saw.
fn forget_gone_pods(ctx: &Context, uid: &str, selected: &[Pod]) {
    let prefix = format!("{uid}/");
    let live: std::collections::HashSet<String> = selected
        .iter()
        .map(|p| format!("{prefix}{}", p.name_any()))
        .collect();
    let keep = |k: &String| !k.starts_with(&prefix) || live.contains(k);
    if let Ok(mut m) = ctx.memory.lock() {
        m.retain(|k, _| keep(k));
    }
    if let Ok(mut u) = ctx.unreported.lock() {
        u.retain(keep);
    }
}

/// Whether the pod has just stopped reporting concurrency (or is seen for
/// the first time without it); a pod that reports it again is forgotten,
/// so that losing it later is told again.
fn newly_unreported(unreported: &Mutex<HashSet<String>>, key: &str, missing: bool) -> bool {
    let Ok(mut unreported) = unreported.lock() else {
        return false;
    };
    if missing {
        unreported.insert(key.to_string())
    } else {
        unreported.remove(key);
        false
    }
}

/// Adds to the pod's message: one pass can have several things to say
/// (a metric left out, then a refused change).
fn add_message(status: &mut PodScaleStatus, text: String) {
    status.message = Some(match status.message.take() {
        Some(before) => format!("{before}; {text}"),
        None => text,
    });
}

/// How much history the longest window or period needs.
fn history_keep(plan: &Plan) -> f64 {
    let b = &plan.behavior;
    let periods =
        b.up.policies
            .iter()
            .chain(&b.down.policies)
            .map(|p| p.period);
    f64::from(
        periods
            .chain([b.up.window, b.down.window])
            .max()
            .unwrap_or(0)
            + 1,
    )
}

/// `host:port` of a pod's admin API; IPv6 pod IPs need brackets.
fn admin_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The pod's IP, when it is Running and Ready.
fn pod_ready_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    status.pod_ip.clone()
}

/// The admin token from `tokenSecretRef`: `Ok(None)` without a reference,
/// `Err` (the condition message) when the Secret or its key is missing.
async fn read_token(
    ctx: &Context,
    wa: &WorkerAutoscaler,
    ns: &str,
) -> Result<Result<Option<String>, String>, Error> {
    let Some(r) = &wa.spec.token_secret_ref else {
        return Ok(Ok(None));
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&r.name)
        .await?;
    Ok(match secret {
        None => Err(format!("secret {} not found", r.name)),
        Some(s) => s
            .data
            .and_then(|d| d.get(&r.key).cloned())
            .map(|b| Some(String::from_utf8_lossy(&b.0).trim().to_string()))
            .ok_or_else(|| format!("secret {} has no key {}", r.name, r.key)),
    })
}

/// Pods asked for per page of the list: a thousand pods' JSON in one
/// answer would be the pass's peak of memory.
const LIST_PAGE: u32 = 250;

async fn selected_pods(ctx: &Context, ns: &str, plan: &Plan) -> Result<Vec<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut params = ListParams::default()
        .labels(&plan.selector.to_string())
        .limit(LIST_PAGE);
    let mut all = Vec::new();
    loop {
        let page = pods.list(&params).await?;
        all.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(all),
        }
    }
}

/// On deletion: every selected pod goes back to its configured count.
async fn release(wa: &WorkerAutoscaler, ctx: &Context) -> Result<Action, Error> {
    let ns = wa.namespace().ok_or(Error::NoNamespace)?;
    let Ok(plan) = spec::plan(&wa.spec) else {
        return Ok(Action::await_change());
    };
    // Without a usable token the managers refuse, and say so in the log.
    let token = read_token(ctx, wa, &ns).await?.ok().flatten();
    let selected = selected_pods(ctx, &ns, &plan).await?;
    for pod in &selected {
        let Some(ip) = pod_ready_ip(pod) else {
            continue;
        };
        let addr = admin_addr(&ip, plan.admin_port);
        match pods::set_desired(&ctx.http, &addr, token.as_deref(), None).await {
            Ok(_) => {
                info!(autoscaler = %wa.name_any(), pod = %pod.name_any(), "returned to its default worker count")
            }
            Err(e) => {
                warn!(autoscaler = %wa.name_any(), pod = %pod.name_any(), error = %e, "could not release")
            }
        }
    }
    if let Some(uid) = wa.uid() {
        let prefix = format!("{uid}/");
        if let Ok(mut m) = ctx.memory.lock() {
            m.retain(|k, _| !k.starts_with(&prefix));
        }
        if let Ok(mut u) = ctx.unreported.lock() {
            u.retain(|k| !k.starts_with(&prefix));
        }
    }
    Ok(Action::await_change())
}

fn condition_is(
    status: &WorkerAutoscalerStatus,
    type_: &str,
    value: &str,
    generation: Option<i64>,
) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == value && c.observed_generation == generation)
}

/// A condition, keeping the previous transition time when the status holds.
fn condition(
    previous: &WorkerAutoscalerStatus,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    wa: &WorkerAutoscaler,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: since,
        observed_generation: wa.metadata.generation,
    }
}

async fn write_status(
    ctx: &Context,
    wa: &WorkerAutoscaler,
    status: WorkerAutoscalerStatus,
) -> Result<(), Error> {
    if wa.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<WorkerAutoscaler> = Api::namespaced(
        ctx.client.clone(),
        &wa.namespace().ok_or(Error::NoNamespace)?,
    );
    let patch = serde_json::json!({
        "apiVersion": WorkerAutoscaler::api_version(&()),
        "kind": WorkerAutoscaler::kind(&()),
        "status": status,
    });
    api.patch_status(
        &wa.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The pass's scale Events: the first pods' each with its own (naming the
/// pod as related object), then one for all the others.
async fn record_scaling(
    ctx: &Context,
    wa: &WorkerAutoscaler,
    pods: &[Pod],
    outcomes: &[PodOutcome],
) {
    let changes: Vec<(&Pod, bool, &str)> = pods
        .iter()
        .zip(outcomes)
        .filter_map(|(pod, o)| {
            o.scaled
                .as_ref()
                .map(|(up, note)| (pod, *up, note.as_str()))
        })
        .collect();
    for (pod, up, note) in changes.iter().take(POD_EVENTS_PER_PASS) {
        let reason = if *up { "ScaledUp" } else { "ScaledDown" };
        publish(ctx, wa, Some(pod), EventType::Normal, reason, note).await;
    }
    let rest = &changes[changes.len().min(POD_EVENTS_PER_PASS)..];
    if !rest.is_empty() {
        let up = rest.iter().filter(|c| c.1).count();
        let note = format!(
            "{} more pods scaled: {up} up, {} down",
            rest.len(),
            rest.len() - up
        );
        publish(ctx, wa, None, EventType::Normal, "Scaled", &note).await;
    }
}

/// The pass's Events for pods that do not report concurrency, capped as
/// the scale Events are: a rollout of shared-mode pods under a
/// `Concurrency` metric would otherwise write one per new pod.
async fn record_unreported(
    ctx: &Context,
    wa: &WorkerAutoscaler,
    pods: &[Pod],
    outcomes: &[PodOutcome],
) {
    let unreported: Vec<&Pod> = pods
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.unreported)
        .map(|(pod, _)| pod)
        .collect();
    for pod in unreported.iter().take(POD_EVENTS_PER_PASS) {
        let note = format!("pod {}: {CONCURRENCY_UNREPORTED}", pod.name_any());
        publish(
            ctx,
            wa,
            Some(pod),
            EventType::Warning,
            UNREPORTED_REASON,
            &note,
        )
        .await;
    }
    let rest = unreported.len().saturating_sub(POD_EVENTS_PER_PASS);
    if rest > 0 {
        let note = format!("{rest} more pods: {CONCURRENCY_UNREPORTED}");
        publish(ctx, wa, None, EventType::Warning, UNREPORTED_REASON, &note).await;
    }
}

/// Records an Event about `wa`, related to `pod` when it concerns one, so
/// that Kubernetes' aggregation of repeated Events keeps pods apart.
async fn publish(
    ctx: &Context,
    wa: &WorkerAutoscaler,
    pod: Option<&Pod>,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Scale".into(),
        secondary: pod.map(|p| p.object_ref(&())),
    };
    if let Err(e) = ctx.recorder.publish(&event, &wa.object_ref(&())).await {
        warn!(error = %e, "cannot record event");
    }
}

/// Labels of a pod, for mapping pod changes to the autoscalers selecting it.
pub fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_without_concurrency_is_told_once_until_it_reports_it() {
        let set = Mutex::new(HashSet::new());
        assert!(newly_unreported(&set, "uid/web-1", true));
        assert!(!newly_unreported(&set, "uid/web-1", true));
        assert!(newly_unreported(&set, "uid/web-2", true));
        assert!(!newly_unreported(&set, "uid/web-1", false));
        assert!(newly_unreported(&set, "uid/web-1", true));
    }

    #[test]
    fn messages_of_one_pass_are_joined() {
        let mut status = PodScaleStatus {
            name: "web-1".into(),
            current: Some(2),
            desired: None,
            limited_by: None,
            last_scale_time: None,
            message: None,
        };
        add_message(&mut status, CONCURRENCY_UNREPORTED.into());
        assert_eq!(status.message.as_deref(), Some(CONCURRENCY_UNREPORTED));
        add_message(&mut status, "no metric could be read".into());
        assert_eq!(
            status.message.unwrap(),
            format!("{CONCURRENCY_UNREPORTED}; no metric could be read")
        );
    }
}
