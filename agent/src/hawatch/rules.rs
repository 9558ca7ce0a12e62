//! What the Home Assistant watcher says, decided from what it saw: pure,
//! tested by table. Each problem is said once when it begins (and the
//! websocket's recovery when it ends), not on every look.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use homelab_core::time::Timestamp;
use homelab_core::Severity;
use serde_json::{json, Value};

/// One look at Home Assistant over its WebSocket API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Look {
    /// `get_config`: `state` (`RUNNING`, `NOT_RUNNING`, …) and whether it
    /// runs in safe or recovery mode.
    pub core_state: String,
    pub safe_mode: bool,
    /// `config_entries/get`.
    pub entries: Vec<Entry>,
    /// `get_states`: every entity.
    pub states: Vec<State>,
    /// `recorder/info`, if the recorder runs.
    pub recorder: Option<Recorder>,
    /// `trace/list` for automations: the runs that ended in an error.
    pub failed_runs: Vec<FailedRun>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub entry_id: String,
    pub domain: String,
    pub title: String,
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub entity_id: String,
    pub state: String,
    pub last_changed: Timestamp,
    /// For `update.*`: `installed_version`, `latest_version`, `title`.
    pub attributes: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recorder {
    pub backlog: u64,
    pub thread_running: bool,
    pub recording: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailedRun {
    /// `automation.<item_id>`.
    pub automation: String,
    pub run_id: String,
    pub error: String,
    pub at: Timestamp,
}

/// Thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// An entity unavailable this long is reported.
    pub unavailable_after: Duration,
    /// A recorder backlog above this is lag.
    pub recorder_backlog: u64,
    /// Home Assistant not `RUNNING` this long is degraded.
    pub not_running_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            unavailable_after: Duration::minutes(30),
            recorder_backlog: 1_000,
            not_running_after: Duration::minutes(5),
        }
    }
}

/// An event to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct Said {
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
    pub data: Value,
}

/// What has been said and is still true: said again only after it stopped
/// being true.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watch {
    /// `None` before the first look; then whether the websocket answered.
    pub up: Option<bool>,
    entries: BTreeSet<String>,
    unavailable: BTreeSet<String>,
    updates: BTreeSet<String>,
    recorder_lag: bool,
    degraded: bool,
    not_running_since: Option<Timestamp>,
    /// Failed automation runs already told, by run id (the newest few).
    runs: BTreeMap<String, Timestamp>,
}

/// What stays told after a look: what is true now, and what was told and
/// has not been seen well since. Something is forgotten (so told again if
/// it comes back) only when Home Assistant runs and shows it well
/// (`fine(id)` is `Some(true)`) or no longer has it (`None`). While Home
/// Assistant starts (or restarts), its entries are not loaded yet and its
/// entities are restored as unavailable, which says nothing new: a
/// restart does not repeat what was told before it.
fn remembered<'a>(
    told: &BTreeSet<String>,
    now: impl Iterator<Item = &'a str>,
    running: bool,
    fine: impl Fn(&str) -> Option<bool>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = now.map(str::to_string).collect();
    for id in told {
        let forget = running && fine(id).is_none_or(|fine| fine);
        if !forget {
            out.insert(id.clone());
        }
    }
    out
}

const FAILED_STATES: [&str; 4] = [
    "setup_error",
    "setup_retry",
    "migration_error",
    "failed_unload",
];

impl Watch {
    /// The websocket did not answer (refused, closed, auth failed, timed
    /// out): `why` says which.
    pub fn lost(&mut self, why: &str) -> Vec<Said> {
        let was = self.up.replace(false);
        if was == Some(false) {
            return Vec::new();
        }
        vec![Said {
            kind: "ha_websocket_dead",
            severity: Severity::Error,
            message: format!("Home Assistant's websocket does not answer: {why}"),
            data: json!({"reason": why}),
        }]
    }

    /// A whole look: what began since the last one.
    pub fn look(&mut self, look: &Look, now: Timestamp, settings: &Settings) -> Vec<Said> {
        let mut out = Vec::new();
        if self.up.replace(true) == Some(false) {
            out.push(Said {
                kind: "ha_websocket_recovered",
                severity: Severity::Info,
                message: "Home Assistant's websocket answers again".into(),
                data: json!({}),
            });
        }

        // Integrations that failed to set up.
        let failed: BTreeMap<&str, &Entry> = look
            .entries
            .iter()
            .filter(|e| FAILED_STATES.contains(&e.state.as_str()))
            .map(|e| (e.entry_id.as_str(), e))
            .collect();
        for (id, e) in &failed {
            if !self.entries.contains(*id) {
                out.push(Said {
                    kind: "ha_integration_failed",
                    severity: Severity::Error,
                    message: format!(
                        "integration {} ({}) is {}{}",
                        e.title,
                        e.domain,
                        e.state,
                        e.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                    data: json!({"entry_id": e.entry_id, "domain": e.domain, "title": e.title,
                                 "state": e.state, "reason": e.reason}),
                });
            }
        }
        self.entries = remembered(
            &self.entries,
            failed.keys().copied(),
            look.core_state == "RUNNING",
            |id| {
                look.entries
                    .iter()
                    .find(|e| e.entry_id == id)
                    .map(|e| e.state == "loaded")
            },
        );

        // Entities unavailable for long.
        let long: BTreeMap<&str, &State> = look
            .states
            .iter()
            .filter(|s| {
                s.state == "unavailable" && now - s.last_changed >= settings.unavailable_after
            })
            .map(|s| (s.entity_id.as_str(), s))
            .collect();
        for (id, s) in &long {
            if !self.unavailable.contains(*id) {
                let minutes = (now - s.last_changed).num_minutes();
                out.push(Said {
                    kind: "ha_entity_unavailable_long",
                    severity: Severity::Warning,
                    message: format!("{id} has been unavailable for {minutes} min"),
                    data: json!({"entity_id": id, "since": homelab_core::time::format(&s.last_changed)}),
                });
            }
        }
        self.unavailable = remembered(
            &self.unavailable,
            long.keys().copied(),
            look.core_state == "RUNNING",
            |id| {
                look.states
                    .iter()
                    .find(|s| s.entity_id == id)
                    .map(|s| s.state != "unavailable")
            },
        );

        // Updates available (`update.*` on), once per version.
        let updates: BTreeMap<String, &State> = look
            .states
            .iter()
            .filter(|s| s.entity_id.starts_with("update.") && s.state == "on")
            .map(|s| {
                let latest = s.attributes["latest_version"].as_str().unwrap_or("");
                (format!("{}@{latest}", s.entity_id), s)
            })
            .collect();
        for (key, s) in &updates {
            if !self.updates.contains(key) {
                let title = s.attributes["title"].as_str().unwrap_or(&s.entity_id);
                let installed = s.attributes["installed_version"].as_str().unwrap_or("?");
                let latest = s.attributes["latest_version"].as_str().unwrap_or("?");
                out.push(Said {
                    kind: "ha_update_available",
                    severity: Severity::Info,
                    message: format!("{title}: {installed} → {latest}"),
                    data: json!({"entity_id": s.entity_id, "installed_version": installed,
                                 "latest_version": latest}),
                });
            }
        }
        self.updates = updates.into_keys().collect();

        // The recorder.
        let lag = look.recorder.as_ref().and_then(|r| {
            if !r.thread_running {
                Some(("the recorder's thread is not running".to_string(), r))
            } else if r.backlog > settings.recorder_backlog {
                Some((format!("the recorder is {} events behind", r.backlog), r))
            } else {
                None
            }
        });
        match lag {
            Some((message, r)) if !self.recorder_lag => {
                self.recorder_lag = true;
                out.push(Said {
                    kind: "ha_recorder_lag",
                    severity: Severity::Warning,
                    message,
                    data: json!({"backlog": r.backlog, "thread_running": r.thread_running,
                                 "recording": r.recording}),
                });
            }
            Some(_) => {}
            None => self.recorder_lag = false,
        }

        // Home Assistant itself: safe mode, or not running for long.
        let not_running = look.core_state != "RUNNING";
        self.not_running_since = match (not_running, self.not_running_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
        let degraded = look.safe_mode
            || self
                .not_running_since
                .is_some_and(|since| now - since >= settings.not_running_after);
        if degraded && !self.degraded {
            let message = if look.safe_mode {
                "Home Assistant runs in safe mode".to_string()
            } else {
                format!("Home Assistant is {}, not RUNNING", look.core_state)
            };
            out.push(Said {
                kind: "ha_system_health_degraded",
                severity: Severity::Warning,
                message,
                data: json!({"state": look.core_state, "safe_mode": look.safe_mode}),
            });
        }
        self.degraded = degraded;

        // Automation runs that ended in an error, each once; the first look
        // only notes what is there (old runs are not news).
        let first = self.runs.is_empty() && out.iter().all(|s| s.kind != "ha_websocket_recovered");
        for run in &look.failed_runs {
            if self.runs.contains_key(&run.run_id) {
                continue;
            }
            self.runs.insert(run.run_id.clone(), run.at);
            if first && now - run.at > Duration::minutes(5) {
                continue;
            }
            out.push(Said {
                kind: "ha_automation_failing",
                severity: Severity::Warning,
                message: format!("{} failed: {}", run.automation, run.error),
                data: json!({"automation": run.automation, "run_id": run.run_id, "error": run.error}),
            });
        }
        // Keep the newest 500 run ids.
        while self.runs.len() > 500 {
            let oldest = self
                .runs
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| id.clone())
                .expect("not empty");
            self.runs.remove(&oldest);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn running() -> Look {
        Look {
            core_state: "RUNNING".into(),
            ..Default::default()
        }
    }

    fn kinds(said: &[Said]) -> Vec<&'static str> {
        said.iter().map(|s| s.kind).collect()
    }

    #[test]
    fn the_websocket_dies_once_and_recovers_once() {
        let now = at("2026-11-24T10:00:00Z");
        let s = Settings::default();
        let mut watch = Watch::default();
        assert_eq!(
            kinds(&watch.look(&running(), now, &s)),
            Vec::<&str>::new(),
            "first look: nothing to say"
        );
        let dead = watch.lost("connection refused");
        assert_eq!(kinds(&dead), ["ha_websocket_dead"]);
        assert!(dead[0].message.contains("connection refused"));
        assert!(watch.lost("connection refused").is_empty(), "said once");
        assert_eq!(
            kinds(&watch.look(&running(), now, &s)),
            ["ha_websocket_recovered"]
        );
        assert!(watch.look(&running(), now, &s).is_empty());
        // Down from the start: said at the first failed look.
        let mut fresh = Watch::default();
        assert_eq!(kinds(&fresh.lost("refused")), ["ha_websocket_dead"]);
    }

    #[test]
    fn each_problem_is_said_when_it_begins() {
        let now = at("2026-11-24T10:00:00Z");
        let s = Settings::default();
        let entry = |state: &str| Entry {
            entry_id: "e1".into(),
            domain: "mqtt".into(),
            title: "Broker".into(),
            state: state.into(),
            reason: Some("connection refused".into()),
        };
        let entity = |id: &str, state: &str, changed: &str, attributes: Value| State {
            entity_id: id.into(),
            state: state.into(),
            last_changed: at(changed),
            attributes,
        };
        let update = json!({"title": "Home Assistant Core", "installed_version": "2024.3.3", "latest_version": "2024.4.0"});
        // One look with just this part.
        let entries = |state: &str| Look {
            entries: vec![entry(state)],
            ..running()
        };
        let states = |s: State| Look {
            states: vec![s],
            ..running()
        };
        let recorder = |backlog: u64, thread_running: bool| Look {
            recorder: Some(Recorder {
                backlog,
                thread_running,
                recording: thread_running,
            }),
            ..running()
        };
        let unavailable_since =
            |changed: &str| states(entity("sensor.t", "unavailable", changed, json!({})));
        let core_update = || {
            states(entity(
                "update.core",
                "on",
                "2026-11-24T09:00:00Z",
                update.clone(),
            ))
        };
        let safe_mode = || Look {
            safe_mode: true,
            ..running()
        };
        // (look, what is said)
        let cases: Vec<(Look, Vec<&str>)> = vec![
            (running(), vec![]),
            (entries("setup_retry"), vec!["ha_integration_failed"]),
            (entries("setup_retry"), vec![]),
            (entries("loaded"), vec![]),
            (entries("setup_error"), vec!["ha_integration_failed"]),
            // Unavailable for 10 min: not yet; for 31: said once.
            (unavailable_since("2026-11-24T09:50:00Z"), vec![]),
            (
                unavailable_since("2026-11-24T09:29:00Z"),
                vec!["ha_entity_unavailable_long"],
            ),
            (unavailable_since("2026-11-24T09:29:00Z"), vec![]),
            (core_update(), vec!["ha_update_available"]),
            (core_update(), vec![]),
            (recorder(5_000, true), vec!["ha_recorder_lag"]),
            (recorder(6_000, true), vec![]),
            (recorder(0, false), vec![]),
            (recorder(0, true), vec![]),
            (recorder(0, false), vec!["ha_recorder_lag"]),
            (safe_mode(), vec!["ha_system_health_degraded"]),
            (safe_mode(), vec![]),
        ];
        let mut watch = Watch::default();
        for (i, (look, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                kinds(&watch.look(&look, now, &s)),
                expected,
                "case {i}: {look:?}"
            );
        }
    }

    #[test]
    fn not_running_for_long_is_degraded_and_failed_runs_are_said_once() {
        let s = Settings::default();
        let mut watch = Watch::default();
        let starting = Look {
            core_state: "NOT_RUNNING".into(),
            ..Default::default()
        };
        assert!(watch
            .look(&starting, at("2026-11-24T10:00:00Z"), &s)
            .is_empty());
        assert!(watch
            .look(&starting, at("2026-11-24T10:04:00Z"), &s)
            .is_empty());
        let said = watch.look(&starting, at("2026-11-24T10:05:00Z"), &s);
        assert_eq!(kinds(&said), ["ha_system_health_degraded"]);
        assert!(said[0].message.contains("NOT_RUNNING"));
        assert!(watch
            .look(&running(), at("2026-11-24T10:06:00Z"), &s)
            .is_empty());

        let run = |id: &str, when: &str| FailedRun {
            automation: "automation.lights".into(),
            run_id: id.into(),
            error: "Error rendering template".into(),
            at: at(when),
        };
        let mut watch = Watch::default();
        let now = at("2026-11-24T12:00:00Z");
        // An old failure seen at the first look is not news; a fresh one is.
        let first = Look {
            failed_runs: vec![
                run("old", "2026-11-24T08:00:00Z"),
                run("r1", "2026-11-24T11:58:00Z"),
            ],
            ..running()
        };
        assert_eq!(
            kinds(&watch.look(&first, now, &s)),
            ["ha_automation_failing"]
        );
        assert!(watch.look(&first, now, &s).is_empty());
        let next = Look {
            failed_runs: vec![
                run("r1", "2026-11-24T11:58:00Z"),
                run("r2", "2026-11-24T11:59:00Z"),
            ],
            ..running()
        };
        let said = watch.look(&next, now, &s);
        assert_eq!(kinds(&said), ["ha_automation_failing"]);
        assert_eq!(said[0].data["run_id"], "r2");
    }
    /// Home Assistant restarts (the websocket goes, it comes back starting,
    /// its entries not loaded yet and its entities restored unavailable,
    /// then it runs with the same failures): nothing told before is told
    /// again. What recovers while it runs is forgotten, and told again
    /// when it fails again.
    #[test]
    fn a_restart_does_not_repeat_what_was_told() {
        let s = Settings::default();
        let t0 = at("2026-11-24T10:00:00Z");
        let entry = |state: &str| Entry {
            entry_id: "e1".into(),
            domain: "broken".into(),
            title: "Broken".into(),
            state: state.into(),
            reason: None,
        };
        let entity = |state: &str, since: Timestamp| State {
            entity_id: "sensor.x".into(),
            state: state.into(),
            last_changed: since,
            attributes: json!({}),
        };
        let look = |core: &str, e: &str, x: &str, since: Timestamp| Look {
            core_state: core.into(),
            entries: vec![entry(e)],
            states: vec![entity(x, since)],
            ..Default::default()
        };
        let mut watch = Watch::default();
        let later = t0 + s.unavailable_after;
        let told = watch.look(
            &look("RUNNING", "setup_retry", "unavailable", t0),
            later,
            &s,
        );
        assert_eq!(
            kinds(&told),
            ["ha_integration_failed", "ha_entity_unavailable_long"]
        );
        // The restart.
        assert_eq!(kinds(&watch.lost("closed")), ["ha_websocket_dead"]);
        let t1 = later + Duration::minutes(1);
        let starting = look("NOT_RUNNING", "not_loaded", "unavailable", t1);
        assert_eq!(
            kinds(&watch.look(&starting, t1, &s)),
            ["ha_websocket_recovered"]
        );
        let t2 = t1 + Duration::seconds(30);
        let no_entity = Look {
            states: Vec::new(),
            ..look("STARTING", "setup_in_progress", "unavailable", t1)
        };
        assert!(watch.look(&no_entity, t2, &s).is_empty());
        let t3 = t1 + s.unavailable_after + Duration::minutes(1);
        let running = look("RUNNING", "setup_retry", "unavailable", t1);
        assert!(watch.look(&running, t3, &s).is_empty(), "said again");

        // Both recover while it runs: forgotten; failing again is told.
        let t4 = t3 + Duration::minutes(1);
        assert!(watch
            .look(&look("RUNNING", "loaded", "on", t4), t4, &s)
            .is_empty());
        let t5 = t4 + s.unavailable_after + Duration::minutes(1);
        assert_eq!(
            kinds(&watch.look(&look("RUNNING", "setup_error", "unavailable", t4), t5, &s)),
            ["ha_integration_failed", "ha_entity_unavailable_long"]
        );
        // Gone while it runs (the entry deleted, the entity removed):
        // forgotten too.
        let t6 = t5 + Duration::minutes(1);
        let empty = Look {
            core_state: "RUNNING".into(),
            ..Default::default()
        };
        assert!(watch.look(&empty, t6, &s).is_empty());
        assert_eq!(
            kinds(&watch.look(&look("RUNNING", "setup_error", "unavailable", t4), t6, &s)),
            ["ha_integration_failed", "ha_entity_unavailable_long"]
        );
    }
}
