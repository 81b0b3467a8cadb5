//! Pure scaling maths for one pod, in the manner of the Kubernetes
//! HorizontalPodAutoscaler: each metric proposes ceil(workers * current /
//! target) outside a tolerance band, the largest proposal wins, then come
//! the min/max bounds, stabilization windows, rate policies and the pod's
//! memory guard. Values in, values out: time is a number of seconds given
//! by the caller, and the history is data the caller keeps.

use std::collections::VecDeque;

use crate::contract::LimitReason;
use crate::limits::Bounds;

/// Relative distance from the target inside which nothing changes.
pub const TOLERANCE: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// Mean CPU per worker, in cores.
    Cpu { target: f64 },
    /// Connections waiting in the listen backlog (max over the window).
    Queue { target: f64 },
    /// A Prometheus query's value.
    Prometheus { target: f64 },
    /// Mean requests in flight per worker (proxy mode only), as Knative's
    /// concurrency target: unlike CPU it sees an I/O-bound worker that is
    /// busy waiting.
    Concurrency { target: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// A count: workers at the worker level, pods at the replica level.
    Workers,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: u32,
    pub period: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub window: u32,
    pub select: Select,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    pub up: Rules,
    pub down: Rules,
}

impl Behavior {
    /// Seconds of history the longest window or period needs.
    pub fn history_keep(&self) -> f64 {
        let periods = self
            .up
            .policies
            .iter()
            .chain(&self.down.policies)
            .map(|p| p.period);
        f64::from(
            periods
                .chain([self.up.window, self.down.window])
                .max()
                .unwrap_or(0)
                + 1,
        )
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            up: Rules {
                window: 0,
                select: Select::Max,
                policies: vec![
                    Policy {
                        kind: PolicyKind::Workers,
                        value: 4,
                        period: 15,
                    },
                    Policy {
                        kind: PolicyKind::Percent,
                        value: 100,
                        period: 15,
                    },
                ],
            },
            down: Rules {
                window: 120,
                select: Select::Max,
                policies: vec![Policy {
                    kind: PolicyKind::Percent,
                    value: 50,
                    period: 60,
                }],
            },
        }
    }
}

/// What limited a decision, as shown in the autoscaler's status: one of
/// the manager's own limits, or the autoscaler's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Bound(LimitReason),
    ScaleUpPolicy,
    ScaleDownPolicy,
    Stabilization,
}

impl Limit {
    /// The name in the status, as the spec's own field names are written.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Bound(LimitReason::MinWorkers) => "minWorkers",
            Limit::Bound(LimitReason::MaxWorkers) => "maxWorkers",
            Limit::Bound(LimitReason::MemoryGuard) => "memoryGuard",
            Limit::ScaleUpPolicy => "scaleUpPolicy",
            Limit::ScaleDownPolicy => "scaleDownPolicy",
            Limit::Stabilization => "stabilization",
        }
    }
}

/// One pod as read from its manager, with its metric values (None where a
/// metric could not be read).
#[derive(Debug, Clone, PartialEq)]
pub struct PodInput {
    /// The count the manager drives towards now.
    pub current: u32,
    /// The autoscaler's bounds, already narrowed to the manager's own,
    /// and the manager's memory cap.
    pub bounds: Bounds,
    pub values: Vec<(Metric, Option<f64>)>,
}

/// Recommendations and changes of one pod, kept between passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    recommendations: VecDeque<(f64, u32)>,
    changes: VecDeque<(f64, i64)>,
}

impl History {
    /// A history for a pod seen for the first time: as if `current` had been
    /// recommended all along, so that a fresh operator (or a new leader)
    /// does not scale down before a full window has passed.
    pub fn starting_at(current: u32, now: f64, window: u32) -> History {
        History {
            recommendations: VecDeque::from([(now - f64::from(window), current)]),
            changes: VecDeque::new(),
        }
    }

    /// Records a pass: the recommendation, and the change made, if any.
    pub fn record(&mut self, now: f64, recommendation: u32, change: i64, keep: f64) {
        self.recommendations.push_back((now, recommendation));
        if change != 0 {
            self.changes.push_back((now, change));
        }
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| now - t > keep)
            && self.recommendations.len() > 1
        {
            self.recommendations.pop_front();
        }
        while self.changes.front().is_some_and(|(t, _)| now - t > keep) {
            self.changes.pop_front();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What the metrics asked for before any bound: the pod's part of the
    /// fleet's demand at the replica level.
    pub wanted: u32,
    /// What metrics asked for, within min/max: the value to record.
    pub recommendation: u32,
    pub desired: u32,
    pub limited_by: Option<Limit>,
}

/// One metric's proposal, or None when its value is unknown.
pub fn propose(metric: Metric, value: f64, current: u32) -> Option<u32> {
    let current_f = f64::from(current.max(1));
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let target = match metric {
        Metric::Queue { target } if target <= 0.0 => {
            // Target 0: every waiting connection wants a worker of its own;
            // an empty queue asks for as few workers as the bounds allow.
            return Some(if value > 0.0 {
                current.saturating_add(value.ceil() as u32)
            } else {
                0
            });
        }
        Metric::Cpu { target }
        | Metric::Queue { target }
        | Metric::Prometheus { target }
        | Metric::Concurrency { target } => target,
    };
    if target <= 0.0 {
        return None;
    }
    let ratio = value / target;
    if (ratio - 1.0).abs() <= TOLERANCE {
        return Some(current);
    }
    let proposal = (current_f * ratio).ceil();
    Some(if proposal >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        proposal as u32
    })
}

/// The decision for one pod; `None` when no metric could be read (the pod
/// is skipped, not scaled to zero).
pub fn decide(
    input: &PodInput,
    history: &History,
    behavior: &Behavior,
    now: f64,
) -> Option<Decision> {
    let current = input.current;
    let raw = input
        .values
        .iter()
        .filter_map(|(metric, value)| propose(*metric, (*value)?, current))
        .max()?;
    let bounds = &input.bounds;
    let mut limited_by = None;
    let recommendation = if raw > bounds.max {
        limited_by = Some(Limit::Bound(LimitReason::MaxWorkers));
        bounds.max
    } else if raw < bounds.min {
        limited_by = Some(Limit::Bound(LimitReason::MinWorkers));
        bounds.min
    } else {
        raw
    };

    let (mut desired, held) = behave(current, recommendation, history, behavior, now);
    match held {
        Some(Limit::Stabilization) if limited_by.is_some() => {}
        Some(held) => limited_by = Some(held),
        None => {}
    }

    if let Some(held) = bounds.memory_guard(desired, current) {
        desired = held;
        limited_by = Some(Limit::Bound(LimitReason::MemoryGuard));
    }
    // The bounds win over everything, as in an HPA.
    desired = desired.clamp(bounds.min, bounds.max);
    Some(Decision {
        wanted: raw,
        recommendation,
        desired,
        limited_by,
    })
}

/// Where `current` may move towards `recommendation` now: the
/// stabilization windows (the lowest recent recommendation bounds a
/// scale-up, the highest a scale-down), then the rate policies against the
/// count at the start of each period. Shared by the worker level and the
/// replica level ([`fleet`]), each with its own history and rules; the
/// limit says which of them held the move back.
pub fn behave(
    current: u32,
    recommendation: u32,
    history: &History,
    behavior: &Behavior,
    now: f64,
) -> (u32, Option<Limit>) {
    let within = |window: u32| {
        history
            .recommendations
            .iter()
            .filter(move |(t, _)| now - t <= f64::from(window))
            .map(|(_, r)| *r)
    };
    let up = within(behavior.up.window).fold(recommendation, u32::min);
    let down = within(behavior.down.window).fold(recommendation, u32::max);
    let mut desired = if current < up {
        up
    } else if current > down {
        down
    } else {
        current
    };
    let mut limited_by = (desired != recommendation).then_some(Limit::Stabilization);
    if desired > current {
        let limit = rate_limit(current, &history.changes, &behavior.up, now, true);
        if desired > limit {
            desired = limit.max(current);
            limited_by = Some(Limit::ScaleUpPolicy);
        }
    } else if desired < current {
        let limit = rate_limit(current, &history.changes, &behavior.down, now, false);
        if desired < limit {
            desired = limit.min(current);
            limited_by = Some(Limit::ScaleDownPolicy);
        }
    }
    (desired, limited_by)
}

/// The most (`up`) or fewest workers the policies allow now.
fn rate_limit(
    current: u32,
    changes: &VecDeque<(f64, i64)>,
    rules: &Rules,
    now: f64,
    up: bool,
) -> u32 {
    if rules.select == Select::Disabled {
        return current;
    }
    if rules.policies.is_empty() {
        return if up { u32::MAX } else { 0 };
    }
    let limits = rules.policies.iter().map(|p| {
        let moved: i64 = changes
            .iter()
            .filter(|(t, d)| now - t < f64::from(p.period) && (*d > 0) == up)
            .map(|(_, d)| d.abs())
            .sum();
        let start = if up {
            (i64::from(current) - moved).max(0) as f64
        } else {
            (i64::from(current) + moved) as f64
        };
        let value = f64::from(p.value);
        let limit = match (p.kind, up) {
            (PolicyKind::Workers, true) => start + value,
            (PolicyKind::Workers, false) => start - value,
            (PolicyKind::Percent, true) => (start * (1.0 + value / 100.0)).ceil(),
            (PolicyKind::Percent, false) => (start * (1.0 - value / 100.0)).floor(),
        };
        limit.clamp(0.0, f64::from(u32::MAX)) as u32
    });
    // Max: the policy allowing the most change.
    match (rules.select, up) {
        (Select::Max, true) | (Select::Min, false) => limits.max().unwrap_or(current),
        _ => limits.min().unwrap_or(current),
    }
}

pub mod fleet;

#[cfg(test)]
mod tests;
