//! One reconcile pass over a WorkerAutoscaler: check the spec, read every
//! selected pod's manager (and Prometheus), decide, PUT the changes, and
//! write status, conditions and Events. Deletion hands the pods back to
//! their configured default (finalizer). The rooms:
//!
//! - `pod`: one pod's part of a pass (measure, decide, PUT);
//! - `records`: what the operator remembers of each pod between passes;
//! - `replicas`: the replica level, with scaleTargetRef (scale subresource,
//!   HPAs);
//! - `status`: the conditions and columns from what a pass found (pure);
//! - `events`: the Events, capped per pass.

mod events;
mod pod;
mod records;
mod replicas;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::http::client as http;

use super::crd::{WorkerAutoscaler, WorkerAutoscalerStatus};
use super::metrics::OperatorMetrics;
use super::pods;
use super::spec::{self, Plan};
use pod::{Pass, PodOutcome};
use records::PodRecords;
use status::Findings;

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

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    /// One pool for every pod's admin API and Prometheus.
    http: http::Client,
    records: PodRecords,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<OperatorMetrics>) -> Context {
        Context {
            client,
            recorder,
            metrics,
            http: http::Client::new(),
            records: PodRecords::default(),
        }
    }
}

/// Pods worked on at once in a pass: enough that a slow pod does not hold
/// up the rest, few enough that a pass over a thousand pods does not open
/// hundreds of connections to the API server (its Events) at once.
const POD_CONCURRENCY: usize = 32;

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

async fn apply(wa: &WorkerAutoscaler, ctx: &Context) -> Result<Action, Error> {
    let ns = wa.namespace().ok_or(Error::NoNamespace)?;
    let previous = wa.status.clone().unwrap_or_default();
    let generation = wa.metadata.generation;
    let plan = match spec::plan(&wa.spec) {
        Ok(plan) => plan,
        Err(message) => {
            warn!(autoscaler = %wa.name_any(), %message, "invalid spec");
            let status = WorkerAutoscalerStatus {
                observed_generation: generation,
                conditions: status::invalid_spec_conditions(
                    &previous,
                    &message,
                    generation,
                    Timestamp::now(),
                ),
                ..previous.clone()
            };
            if !status::condition_is(&previous, "InvalidSpec", "True", generation) {
                let notice = events::about_autoscaler(true, "InvalidSpec", &message);
                events::publish(ctx, wa, notice).await;
            }
            write_status(ctx, wa, status).await?;
            return Ok(Action::await_change());
        }
    };

    let token = read_token(ctx, wa, &ns).await?;
    let selected = selected_pods(ctx, &ns, &plan).await?;
    let uid = wa.uid().unwrap_or_default();
    // The pass's one reading of the clock.
    let now = Timestamp::now();
    let pass = Pass {
        ctx,
        wa,
        plan: &plan,
        uid: &uid,
        token: &token,
        now,
    };
    // Built first, then run a few at a time (a closure inside the stream
    // would make the pass's future not Send).
    let passes: Vec<_> = selected.iter().map(|pod| pass.scale(pod)).collect();
    let outcomes: Vec<PodOutcome> = stream::iter(passes)
        .buffered(POD_CONCURRENCY)
        .collect()
        .await;
    ctx.records.keep_only(
        &uid,
        selected
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or("")),
    );

    let scaled: Vec<(&Pod, (bool, String))> = selected
        .iter()
        .zip(&outcomes)
        .filter_map(|(pod, o)| o.scaled.clone().map(|s| (pod, s)))
        .collect();
    let unreported: Vec<(&Pod, String)> = selected
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.unreported)
        .map(|(pod, _)| (pod, pod.name_any()))
        .collect();
    for notice in events::scaled(&scaled)
        .into_iter()
        .chain(events::unreported(&unreported))
    {
        events::publish(ctx, wa, notice).await;
    }

    // The replica level, after the workers: it counts what they were set to.
    let replica = match &plan.replicas {
        Some(replica_plan) => {
            let fleet = outcomes.iter().filter_map(|o| o.fleet).collect();
            let seconds = now.as_millisecond() as f64 / 1000.0;
            let outcome =
                replicas::size(ctx, wa, replica_plan, &uid, fleet, plan.paused, seconds).await;
            let told = status::condition_reason_is(
                &previous,
                status::REPLICAS,
                outcome.reason,
                generation,
            );
            let notice = match &outcome.scaled {
                Some((up, note)) => Some(events::about_autoscaler(
                    false,
                    if *up {
                        "ScaledReplicasUp"
                    } else {
                        "ScaledReplicasDown"
                    },
                    note,
                )),
                None if !outcome.active && !told => Some(events::about_autoscaler(
                    true,
                    outcome.reason,
                    &outcome.message,
                )),
                None => None,
            };
            if let Some(notice) = notice {
                events::publish(ctx, wa, notice).await;
            }
            Some(outcome)
        }
        None => None,
    };

    let limited: Vec<&PodOutcome> = outcomes.iter().filter(|o| o.limited).collect();
    let findings = Findings {
        paused: plan.paused,
        token_error: token.as_ref().err().map(String::as_str),
        unauthorized: outcomes.iter().any(|o| o.unauthorized),
        selected: selected.len(),
        reachable: outcomes.iter().filter(|o| o.reachable).count(),
        limited: limited.len(),
        first_limited: limited.first().map(|o| {
            (
                o.status.name.as_str(),
                o.status.limited_by.as_deref().unwrap_or("-"),
            )
        }),
    };
    let values: Vec<f64> = outcomes.iter().filter_map(|o| o.first_metric).collect();
    let mut conditions = findings.conditions(&previous, generation, now);
    if let Some(r) = &replica {
        conditions.push(status::replicas_condition(
            &previous, generation, now, r.active, r.reason, &r.message,
        ));
    }
    if findings.warn_inactive(&previous, generation) {
        let activity = findings.activity();
        let notice = events::about_autoscaler(true, activity.reason, &activity.message);
        events::publish(ctx, wa, notice).await;
    }
    let status = WorkerAutoscalerStatus {
        observed_generation: generation,
        pods: selected.len() as u32,
        workers: outcomes.iter().filter_map(|o| o.desired).sum(),
        utilisation: status::utilisation(&plan.metrics[0], &values),
        replicas: replica.as_ref().and_then(|r| r.replicas),
        desired_replicas: replica.as_ref().and_then(|r| r.desired),
        replicas_limited_by: replica
            .as_ref()
            .and_then(|r| r.limited_by.map(str::to_string)),
        conditions,
        pod_status: outcomes.into_iter().map(|o| o.status).collect(),
    };
    write_status(ctx, wa, status).await?;
    Ok(Action::requeue(Duration::from_secs(u64::from(
        plan.poll_seconds,
    ))))
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
        let Some(ip) = pod::ready_ip(pod) else {
            continue;
        };
        let addr = pod::admin_addr(&ip, plan.admin_port);
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
        ctx.records.forget(&uid);
    }
    Ok(Action::await_change())
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

/// Labels of a pod, for mapping pod changes to the autoscalers selecting it.
pub fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}
