//! From a WorkerAutoscaler spec to the plan the reconciler follows: every
//! rule the API server's schema cannot express (min <= max, a known metric
//! type, a Prometheus address that parses) is checked here, and a failure is
//! what the InvalidSpec condition says. Pure.

use kube::core::Selector;

use super::crd::{PolicyType, ScaleTargetRef, ScalingRules, SelectPolicy, WorkerAutoscalerSpec};
use super::decide::{self, Behavior, Metric, Policy, PolicyKind, Rules, Select, fleet};

#[derive(Debug, Clone, PartialEq)]
pub enum MetricPlan {
    Cpu {
        target: f64,
    },
    Queue {
        target: f64,
    },
    Concurrency {
        target: f64,
    },
    Prometheus {
        server: PromServer,
        query: String,
        target: f64,
    },
}

impl MetricPlan {
    pub fn metric(&self) -> Metric {
        match self {
            MetricPlan::Cpu { target } => Metric::Cpu { target: *target },
            MetricPlan::Queue { target } => Metric::Queue { target: *target },
            MetricPlan::Concurrency { target } => Metric::Concurrency { target: *target },
            MetricPlan::Prometheus { target, .. } => Metric::Prometheus { target: *target },
        }
    }
}

/// Where a Prometheus server answers: its base URL (`http://` or
/// `https://`, with any path prefix), checked once when the spec is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromServer {
    pub base: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub selector: Selector,
    pub admin_port: u16,
    pub min: u32,
    pub max: u32,
    pub metrics: Vec<MetricPlan>,
    pub behavior: Behavior,
    pub poll_seconds: u32,
    pub paused: bool,
    /// The replica level, with scaleTargetRef.
    pub replicas: Option<ReplicaPlan>,
}

/// The replica level of a plan: the target and its bounds and behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaPlan {
    pub target: ScaleTargetRef,
    pub min: u32,
    pub max: u32,
    pub behavior: Behavior,
}

impl Plan {
    /// The CPU metric's target, if the plan scales on CPU: what the
    /// workers a CPU limit can feed are counted against.
    pub fn cpu_target(&self) -> Option<f64> {
        self.metrics.iter().find_map(|m| match m {
            MetricPlan::Cpu { target } => Some(*target),
            _ => None,
        })
    }
}

fn parse_server(address: &str) -> Result<PromServer, String> {
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(format!(
            "prometheus address `{address}` must start with http:// or https://"
        ));
    }
    crate::http::client::url(address, "/api/v1/query", &[])
        .map_err(|e| format!("prometheus address: {e}"))?;
    Ok(PromServer {
        base: address.trim_end_matches('/').to_string(),
    })
}

/// One direction's rules; `count` is the policy type that counts units at
/// this level (Workers for workers, Pods for replicas) and `field` names
/// the block in messages.
fn rules(
    spec: Option<&ScalingRules>,
    default: Rules,
    count: PolicyType,
    field: &str,
) -> Result<Rules, String> {
    let Some(spec) = spec else { return Ok(default) };
    let policies = if spec.policies.is_empty() {
        default.policies
    } else {
        spec.policies
            .iter()
            .map(|p| {
                if p.value == 0 || p.period_seconds == 0 {
                    return Err(
                        "scaling policies need value and periodSeconds of at least 1".to_string(),
                    );
                }
                Ok(Policy {
                    kind: match p.policy_type {
                        PolicyType::Percent => PolicyKind::Percent,
                        t if t == count => PolicyKind::Workers,
                        t => {
                            return Err(format!(
                                "{field}: policy type {t:?} does not apply here (use {count:?} or Percent)"
                            ));
                        }
                    },
                    value: p.value,
                    period: p.period_seconds,
                })
            })
            .collect::<Result<_, _>>()?
    };
    Ok(Rules {
        window: spec.stabilization_window_seconds.unwrap_or(default.window),
        select: match spec.select_policy {
            SelectPolicy::Max => Select::Max,
            SelectPolicy::Min => Select::Min,
            SelectPolicy::Disabled => Select::Disabled,
        },
        policies,
    })
}

/// Checks a spec completely; the error names what is wrong.
pub fn plan(spec: &WorkerAutoscalerSpec) -> Result<Plan, String> {
    if spec.min_workers < 1 {
        return Err("minWorkers must be at least 1".into());
    }
    if spec.min_workers > spec.max_workers {
        return Err(format!(
            "minWorkers ({}) is above maxWorkers ({})",
            spec.min_workers, spec.max_workers
        ));
    }
    if spec.admin_port == 0 {
        return Err("adminPort must be 1-65535".into());
    }
    let selector =
        Selector::try_from(spec.selector.clone()).map_err(|e| format!("selector: {e}"))?;
    if selector.selects_all() {
        return Err("selector is empty: it would select every pod in the namespace".into());
    }
    let mut metrics = Vec::new();
    for (i, m) in spec.metrics.iter().enumerate() {
        let target = |what: &str| {
            m.target
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| format!("metrics[{i}]: type {what} needs a target of 0 or more"))
        };
        metrics.push(match m.metric_type.as_str() {
            "CPU" => {
                let t = target("CPU")?;
                if t == 0.0 {
                    return Err(format!("metrics[{i}]: a CPU target must be above 0"));
                }
                MetricPlan::Cpu { target: t }
            }
            "QueueLength" => MetricPlan::Queue {
                target: target("QueueLength")?,
            },
            "Concurrency" => {
                let t = target("Concurrency")?;
                if t == 0.0 {
                    return Err(format!("metrics[{i}]: a Concurrency target must be above 0"));
                }
                MetricPlan::Concurrency { target: t }
            }
            "Prometheus" => {
                let p = m.prometheus.as_ref().ok_or_else(|| {
                    format!("metrics[{i}]: type Prometheus needs a `prometheus` block")
                })?;
                if p.query.trim().is_empty() {
                    return Err(format!("metrics[{i}]: the Prometheus query is empty"));
                }
                if !p.target.is_finite() || p.target <= 0.0 {
                    return Err(format!("metrics[{i}]: a Prometheus target must be above 0"));
                }
                MetricPlan::Prometheus {
                    server: parse_server(&p.address).map_err(|e| format!("metrics[{i}]: {e}"))?,
                    query: p.query.clone(),
                    target: p.target,
                }
            }
            other => {
                return Err(format!(
                    "metrics[{i}]: unknown type `{other}` (expected CPU, QueueLength, Concurrency or Prometheus)"
                ));
            }
        });
    }
    if metrics.is_empty() {
        metrics.push(MetricPlan::Cpu { target: 0.7 });
    }
    let defaults = decide::Behavior::default();
    let behavior = Behavior {
        up: rules(
            spec.behavior.scale_up.as_ref(),
            defaults.up,
            PolicyType::Workers,
            "behavior.scaleUp",
        )?,
        down: rules(
            spec.behavior.scale_down.as_ref(),
            defaults.down,
            PolicyType::Workers,
            "behavior.scaleDown",
        )?,
    };
    Ok(Plan {
        selector,
        admin_port: spec.admin_port,
        min: spec.min_workers,
        max: spec.max_workers,
        metrics,
        behavior,
        poll_seconds: spec.poll_interval_seconds.max(1),
        paused: spec.paused,
        replicas: replica_plan(spec)?,
    })
}

/// The replica level, checked: a complete target, maxReplicas, and
/// 1 <= minReplicas <= maxReplicas; replica fields without a target are
/// an error rather than silently ignored.
fn replica_plan(spec: &WorkerAutoscalerSpec) -> Result<Option<ReplicaPlan>, String> {
    let Some(target) = &spec.scale_target_ref else {
        if spec.min_replicas.is_some() || spec.max_replicas.is_some() {
            return Err("minReplicas and maxReplicas need a scaleTargetRef".into());
        }
        return Ok(None);
    };
    for (field, value) in [
        ("apiVersion", &target.api_version),
        ("kind", &target.kind),
        ("name", &target.name),
    ] {
        if value.trim().is_empty() {
            return Err(format!("scaleTargetRef.{field} is empty"));
        }
    }
    let max = spec
        .max_replicas
        .ok_or("scaleTargetRef needs maxReplicas")?;
    let min = spec.min_replicas.unwrap_or(1);
    if min < 1 {
        return Err("minReplicas must be at least 1".into());
    }
    if min > max {
        return Err(format!("minReplicas ({min}) is above maxReplicas ({max})"));
    }
    let defaults = fleet::default_behavior();
    let given = &spec.replica_behavior;
    Ok(Some(ReplicaPlan {
        target: target.clone(),
        min,
        max,
        behavior: Behavior {
            up: rules(
                given.scale_up.as_ref(),
                defaults.up,
                PolicyType::Pods,
                "replicaBehavior.scaleUp",
            )?,
            down: rules(
                given.scale_down.as_ref(),
                defaults.down,
                PolicyType::Pods,
                "replicaBehavior.scaleDown",
            )?,
        },
    }))
}

/// Fills `{{pod}}` and `{{namespace}}` in a query.
pub fn render_query(query: &str, pod: &str, namespace: &str) -> String {
    query
        .replace("{{pod}}", pod)
        .replace("{{namespace}}", namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{MetricSpec, PrometheusMetric};

    fn spec(yaml: &str) -> WorkerAutoscalerSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const BASE: &str = "selector: {matchLabels: {app: web}}\nminWorkers: 2\nmaxWorkers: 12\n";

    #[test]
    fn a_minimal_spec_scales_on_cpu() {
        let p = plan(&spec(BASE)).unwrap();
        assert_eq!(p.metrics, vec![MetricPlan::Cpu { target: 0.7 }]);
        assert_eq!(
            (p.admin_port, p.poll_seconds, p.min, p.max),
            (9000, 5, 2, 12)
        );
        assert_eq!(p.selector.to_string(), "app=web");
        assert_eq!(p.behavior, Behavior::default());
    }

    #[test]
    fn the_design_example_is_valid() {
        let text = format!(
            "{BASE}adminPort: 9000\ntokenSecretRef: {{name: web-corral, key: token}}\n\
             metrics:\n  - {{type: CPU, target: 0.7}}\n  - {{type: QueueLength, target: 0}}\n  \
             - {{type: Prometheus, prometheus: {{address: 'http://prometheus:9090', query: 'sum(x{{pod=\"{{{{pod}}}}\"}})', target: 20}}}}\n\
             behavior:\n  scaleUp: {{stabilizationWindowSeconds: 0, policies: [{{type: Workers, value: 4, periodSeconds: 15}}]}}\n  \
             scaleDown: {{stabilizationWindowSeconds: 120, policies: [{{type: Percent, value: 50, periodSeconds: 60}}]}}\n"
        );
        let p = plan(&spec(&text)).unwrap();
        assert_eq!(p.metrics.len(), 3);
        assert!(
            matches!(&p.metrics[2], MetricPlan::Prometheus { server, .. } if server.base == "http://prometheus:9090")
        );
        assert_eq!(p.behavior.down.window, 120);
        assert_eq!(p.behavior.up.policies.len(), 1);
    }

    #[test]
    fn invalid_specs_say_why() {
        let mut s = spec(BASE);
        s.min_workers = 13;
        assert!(plan(&s).unwrap_err().contains("above maxWorkers"));
        let mut s = spec(BASE);
        s.metrics = vec![MetricSpec {
            metric_type: "Memory".into(),
            target: Some(1.0),
            prometheus: None,
        }];
        assert!(plan(&s).unwrap_err().contains("unknown type `Memory`"));
        let mut s = spec(BASE);
        s.metrics = vec![MetricSpec {
            metric_type: "Prometheus".into(),
            target: None,
            prometheus: Some(PrometheusMetric {
                address: "prometheus:9090".into(),
                query: "up".into(),
                target: 1.0,
            }),
        }];
        assert!(plan(&s).unwrap_err().contains("http://"));
        let s = spec("selector: {}\nminWorkers: 1\nmaxWorkers: 2\n");
        assert!(plan(&s).unwrap_err().contains("selector is empty"));
        let mut s = spec(BASE);
        s.metrics = vec![MetricSpec {
            metric_type: "CPU".into(),
            target: None,
            prometheus: None,
        }];
        assert!(plan(&s).unwrap_err().contains("needs a target"));
    }

    #[test]
    fn concurrency_needs_a_target_above_zero() {
        let with = |target: Option<f64>| {
            let mut s = spec(BASE);
            s.metrics = vec![MetricSpec {
                metric_type: "Concurrency".into(),
                target,
                prometheus: None,
            }];
            plan(&s)
        };
        assert_eq!(
            with(Some(8.0)).unwrap().metrics,
            vec![MetricPlan::Concurrency { target: 8.0 }]
        );
        assert_eq!(
            with(Some(8.0)).unwrap().metrics[0].metric(),
            Metric::Concurrency { target: 8.0 }
        );
        let zero = with(Some(0.0)).unwrap_err();
        assert!(
            zero.contains("metrics[0]") && zero.contains("above 0"),
            "{zero}"
        );
        for bad in [None, Some(-1.0), Some(f64::NAN), Some(f64::INFINITY)] {
            let e = with(bad).unwrap_err();
            assert!(
                e.contains("type Concurrency needs a target"),
                "{bad:?}: {e}"
            );
        }
        let text = format!(
            "{BASE}metrics:\n  - {{type: Concurrency, target: 10}}\n  - {{type: CPU, target: 0.7}}\n"
        );
        assert_eq!(
            plan(&spec(&text)).unwrap().metrics,
            vec![
                MetricPlan::Concurrency { target: 10.0 },
                MetricPlan::Cpu { target: 0.7 }
            ]
        );
    }

    const TWO_LEVEL: &str = "scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n";

    #[test]
    fn a_scale_target_adds_the_replica_level() {
        assert_eq!(plan(&spec(BASE)).unwrap().replicas, None);
        let p = plan(&spec(&format!("{BASE}{TWO_LEVEL}maxReplicas: 5\n"))).unwrap();
        let r = p.replicas.unwrap();
        assert_eq!((r.target.kind.as_str(), r.min, r.max), ("Deployment", 1, 5));
        assert_eq!(r.behavior, fleet::default_behavior());
        let text = format!(
            "{BASE}{TWO_LEVEL}minReplicas: 2\nmaxReplicas: 5\nreplicaBehavior:\n  \
             scaleUp: {{policies: [{{type: Pods, value: 1, periodSeconds: 60}}]}}\n"
        );
        let r = plan(&spec(&text)).unwrap().replicas.unwrap();
        assert_eq!(r.min, 2);
        assert_eq!(
            r.behavior.up.policies,
            vec![Policy {
                kind: PolicyKind::Workers,
                value: 1,
                period: 60
            }]
        );
    }

    #[test]
    fn invalid_replica_fields_say_why() {
        let err = |text: String| plan(&spec(&text)).unwrap_err();
        assert!(err(format!("{BASE}{TWO_LEVEL}")).contains("needs maxReplicas"));
        assert!(err(format!("{BASE}maxReplicas: 3\n")).contains("need a scaleTargetRef"));
        assert!(
            err(format!("{BASE}{TWO_LEVEL}minReplicas: 4\nmaxReplicas: 3\n"))
                .contains("minReplicas (4) is above maxReplicas (3)")
        );
        let no_name = "scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ''}\n";
        assert!(err(format!("{BASE}{no_name}maxReplicas: 3\n")).contains("scaleTargetRef.name"));
        let workers = format!(
            "{BASE}{TWO_LEVEL}maxReplicas: 3\nreplicaBehavior:\n  \
             scaleDown: {{policies: [{{type: Workers, value: 1, periodSeconds: 60}}]}}\n"
        );
        assert!(err(workers).contains("replicaBehavior.scaleDown: policy type Workers"));
        let pods = format!(
            "{BASE}behavior:\n  scaleUp: {{policies: [{{type: Pods, value: 1, periodSeconds: 60}}]}}\n"
        );
        assert!(err(pods).contains("behavior.scaleUp: policy type Pods"));
    }

    #[test]
    fn queries_are_templated() {
        assert_eq!(
            render_query(
                r#"rate(x{pod="{{pod}}",ns="{{namespace}}"}[1m])"#,
                "web-1",
                "prod"
            ),
            r#"rate(x{pod="web-1",ns="prod"}[1m])"#
        );
    }
}
