//! What the operator remembers of each pod between passes: its scaling
//! history (for stabilization windows and rate policies), when it last
//! changed the pod, and whether the pod was already named for not
//! reporting concurrency; and of each autoscaler, its replica-level
//! history and each pod's share of its fleet's demand. Keyed `autoscaler-uid/pod-name`, so that two
//! autoscalers selecting one pod keep apart; pruned to the pods each pass
//! still selects.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::super::decide::History;

/// One pod's record.
#[derive(Debug, Clone)]
pub struct PodRecord {
    pub history: History,
    /// When the operator last changed the pod's count (RFC 3339).
    pub last_scale: Option<String>,
}

/// Every pod's record, shared by the passes of all autoscalers.
#[derive(Debug, Default)]
pub struct PodRecords {
    records: Mutex<HashMap<String, PodRecord>>,
    /// Pods already named in a `ConcurrencyUnreported` Event, so that a
    /// shared-mode pod gets one when it is first seen so, not one a pass.
    unreported: Mutex<HashSet<String>>,
    /// Each autoscaler's replica-level history, keyed by its uid.
    replicas: Mutex<HashMap<String, History>>,
    /// Each autoscaler's last share per pod (`decide::fleet::share`),
    /// for the pods it has not seen yet; keyed by its uid.
    shares: Mutex<HashMap<String, u32>>,
}

/// The key of `pod` under the autoscaler `uid`.
pub fn key(uid: &str, pod: &str) -> String {
    format!("{uid}/{pod}")
}

impl PodRecords {
    pub fn get(&self, key: &str) -> Option<PodRecord> {
        self.records.lock().ok()?.get(key).cloned()
    }

    pub fn put(&self, key: String, record: PodRecord) {
        if let Ok(mut records) = self.records.lock() {
            records.insert(key, record);
        }
    }

    /// Whether the pod has just stopped reporting concurrency (or is seen
    /// for the first time without it); a pod that reports it again is
    /// forgotten, so that losing it later is told again.
    pub fn newly_unreported(&self, key: &str, missing: bool) -> bool {
        let Ok(mut unreported) = self.unreported.lock() else {
            return false;
        };
        if missing {
            unreported.insert(key.to_string())
        } else {
            unreported.remove(key);
            false
        }
    }

    /// Keeps, of autoscaler `uid`'s records, only those of the pods in
    /// `live` (rolled-out, deleted and relabelled pods go): a long-running
    /// controller would otherwise keep every pod it ever saw. Other
    /// autoscalers' records stay.
    pub fn keep_only<'a>(&self, uid: &str, live: impl IntoIterator<Item = &'a str>) {
        let prefix = key(uid, "");
        let live: HashSet<String> = live.into_iter().map(|pod| key(uid, pod)).collect();
        let keep = |k: &String| !k.starts_with(&prefix) || live.contains(k);
        if let Ok(mut records) = self.records.lock() {
            records.retain(|k, _| keep(k));
        }
        if let Ok(mut unreported) = self.unreported.lock() {
            unreported.retain(keep);
        }
    }

    /// Autoscaler `uid`'s replica-level history, if it has one.
    pub fn replica_history(&self, uid: &str) -> Option<History> {
        self.replicas.lock().ok()?.get(uid).cloned()
    }

    pub fn put_replica_history(&self, uid: &str, history: History) {
        if let Ok(mut replicas) = self.replicas.lock() {
            replicas.insert(uid.to_string(), history);
        }
    }

    /// The share a pod autoscaler `uid` has not seen yet is brought to.
    pub fn share(&self, uid: &str) -> Option<u32> {
        self.shares.lock().ok()?.get(uid).copied()
    }

    /// Sets (or, with `None`: the replica level is not sizing the fleet,
    /// clears) autoscaler `uid`'s share.
    pub fn put_share(&self, uid: &str, share: Option<u32>) {
        if let Ok(mut shares) = self.shares.lock() {
            match share {
                Some(share) => shares.insert(uid.to_string(), share),
                None => shares.remove(uid),
            };
        }
    }

    /// Forgets every record of autoscaler `uid` (it was deleted).
    pub fn forget(&self, uid: &str) {
        self.keep_only(uid, []);
        if let Ok(mut replicas) = self.replicas.lock() {
            replicas.remove(uid);
        }
        self.put_share(uid, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PodRecord {
        PodRecord {
            history: History::starting_at(2, 0.0, 0),
            last_scale: None,
        }
    }

    #[test]
    fn a_pod_without_concurrency_is_told_once_until_it_reports_it() {
        let records = PodRecords::default();
        assert!(records.newly_unreported("uid/web-1", true));
        assert!(!records.newly_unreported("uid/web-1", true));
        assert!(records.newly_unreported("uid/web-2", true));
        assert!(!records.newly_unreported("uid/web-1", false));
        assert!(records.newly_unreported("uid/web-1", true));
    }

    #[test]
    fn pods_no_longer_selected_are_forgotten_and_other_autoscalers_kept() {
        let records = PodRecords::default();
        for k in ["a/web-1", "a/web-2", "b/web-1"] {
            records.put(k.into(), record());
            records.newly_unreported(k, true);
        }
        records.keep_only("a", ["web-2"]);
        assert!(records.get("a/web-1").is_none());
        assert!(records.get("a/web-2").is_some());
        assert!(records.get("b/web-1").is_some());
        // web-1 of a is seen anew: it is told again.
        assert!(records.newly_unreported("a/web-1", true));
        assert!(!records.newly_unreported("b/web-1", true));
        records.put_share("b", Some(3));
        records.put_share("a", Some(2));
        records.forget("b");
        assert_eq!((records.share("a"), records.share("b")), (Some(2), None));
        assert!(records.get("b/web-1").is_none());
        assert!(records.get("a/web-2").is_some());
        assert!(records.newly_unreported("b/web-1", true));
    }
}
