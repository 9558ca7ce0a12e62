//! Health checks the repo declares for the node's services
//! (`services/<svc>/healthcheck.sh`, with `interval`, `timeout` and
//! `retries` from `service.yaml`), and the MQTT brokers its services depend
//! on. What a result means is pure ([`Tracker`], [`Reachability`]); when a
//! check runs is [`schedule`], tested on tokio's paused clock.

use std::future::Future;
use std::time::Duration;

/// What a run of a health check changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It failed (`healthcheck_failed`): `failures` in a row so far.
    Failed { failures: u32 },
    /// `retries` failures in a row: `service_unhealthy`.
    Unhealthy { failures: u32 },
    /// It passes again after being unhealthy: `service_recovered`.
    Recovered,
}

/// Failures in a row of one health check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    failures: u32,
    unhealthy: bool,
}

impl Tracker {
    pub fn record(&mut self, ok: bool, retries: u32) -> Vec<Change> {
        if ok {
            self.failures = 0;
            if std::mem::take(&mut self.unhealthy) {
                return vec![Change::Recovered];
            }
            return vec![];
        }
        self.failures += 1;
        let mut changes = vec![Change::Failed {
            failures: self.failures,
        }];
        if self.failures >= retries.max(1) && !self.unhealthy {
            self.unhealthy = true;
            changes.push(Change::Unhealthy {
                failures: self.failures,
            });
        }
        changes
    }
}

/// Whether a broker answers, as it changes: `Some(false)` when it stopped
/// answering (`mqtt_unreachable`), `Some(true)` when it answers again
/// (`service_recovered`). A broker that answers from the start says
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    last: Option<bool>,
}

impl Reachability {
    pub fn record(&mut self, reachable: bool) -> Option<bool> {
        let before = self.last.replace(reachable);
        match (before, reachable) {
            (None, false) | (Some(true), false) => Some(false),
            (Some(false), true) => Some(true),
            _ => None,
        }
    }
}

/// Runs `check` right away and then every `interval` (counted from one
/// start to the next; a run that takes longer delays the next instead of
/// piling up), handing each result to `done`, until the future is dropped.
pub async fn schedule<R, F, D>(interval: Duration, mut check: impl FnMut() -> F, mut done: D)
where
    F: Future<Output = R>,
    D: FnMut(R),
{
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check().await;
        done(result);
    }
}

/// Services whose health check `old` had and `new` has not: their last
/// verdict no longer holds.
pub fn removed_checks(
    old: &homelab_core::nodeconfig::NodeConfig,
    new: &homelab_core::nodeconfig::NodeConfig,
) -> Vec<homelab_core::Name> {
    old.healthchecks
        .iter()
        .map(|c| &c.service)
        .filter(|s| !new.healthchecks.iter().any(|c| &c.service == *s))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_then_recovery() {
        use Change::*;
        // (results, retries, changes after each)
        type Case<'a> = (&'a [bool], u32, &'a [&'a [Change]]);
        let cases: &[Case] = &[
            (&[true, true], 3, &[&[], &[]]),
            (
                &[false, false, false, false, true],
                3,
                &[
                    &[Failed { failures: 1 }],
                    &[Failed { failures: 2 }],
                    &[Failed { failures: 3 }, Unhealthy { failures: 3 }],
                    &[Failed { failures: 4 }],
                    &[Recovered],
                ],
            ),
            // A pass before `retries` resets the count; nothing to recover.
            (
                &[false, false, true, false],
                3,
                &[
                    &[Failed { failures: 1 }],
                    &[Failed { failures: 2 }],
                    &[],
                    &[Failed { failures: 1 }],
                ],
            ),
            // retries 1 (and 0, read as 1): unhealthy at the first failure.
            (
                &[false],
                1,
                &[&[Failed { failures: 1 }, Unhealthy { failures: 1 }]],
            ),
            (
                &[false],
                0,
                &[&[Failed { failures: 1 }, Unhealthy { failures: 1 }]],
            ),
        ];
        for (results, retries, want) in cases {
            let mut tracker = Tracker::default();
            let got: Vec<Vec<Change>> = results
                .iter()
                .map(|ok| tracker.record(*ok, *retries))
                .collect();
            let want: Vec<Vec<Change>> = want.iter().map(|w| w.to_vec()).collect();
            assert_eq!(got, want, "{results:?} retries {retries}");
        }
    }

    #[test]
    fn reachability_changes() {
        let cases: &[(&[bool], &[Option<bool>])] = &[
            (&[true, true], &[None, None]),
            (
                &[false, false, true, true],
                &[Some(false), None, Some(true), None],
            ),
            (&[true, false, true], &[None, Some(false), Some(true)]),
        ];
        for (seen, want) in cases {
            let mut r = Reachability::default();
            let got: Vec<Option<bool>> = seen.iter().map(|s| r.record(*s)).collect();
            assert_eq!(got, *want, "{seen:?}");
        }
    }

    /// On the paused clock: a check every 30 s that takes 2 s runs at 0,
    /// 30, 60 s; one that hangs past its interval (here 45 s, cut by the
    /// caller's timeout) delays the next run instead of doubling up.
    #[tokio::test(start_paused = true)]
    async fn runs_every_interval_without_piling_up() {
        use std::sync::{Arc, Mutex};
        let started = tokio::time::Instant::now();
        let runs: Arc<Mutex<Vec<u64>>> = Default::default();
        let durations = Arc::new(Mutex::new(vec![2u64, 45, 2, 2].into_iter()));
        let results: Arc<Mutex<Vec<bool>>> = Default::default();
        let task = {
            let (runs, results) = (runs.clone(), results.clone());
            tokio::spawn(schedule(
                Duration::from_secs(30),
                move || {
                    let runs = runs.clone();
                    let took = durations.lock().unwrap().next().unwrap_or(1);
                    async move {
                        runs.lock().unwrap().push(started.elapsed().as_secs());
                        tokio::time::sleep(Duration::from_secs(took)).await;
                        took < 30
                    }
                },
                move |ok| results.lock().unwrap().push(ok),
            ))
        };
        tokio::time::sleep(Duration::from_secs(140)).await;
        task.abort();
        // 0: 2 s; 30: hangs 45 s, to 75; the tick at 60 is late: runs at
        // 75, then every 30 s from there.
        assert_eq!(*runs.lock().unwrap(), [0, 30, 75, 105, 135]);
        assert_eq!(*results.lock().unwrap(), [true, false, true, true, true]);
    }

    #[test]
    fn a_check_that_leaves_the_config_is_reported() {
        use homelab_core::nodeconfig::{HealthcheckSpec, NodeConfig};
        use homelab_core::Name;
        let node = Name::parse("piha").unwrap();
        let config = |services: &[&str]| NodeConfig {
            healthchecks: services
                .iter()
                .map(|s| HealthcheckSpec {
                    service: Name::parse(s).unwrap(),
                    script: "exit 0".into(),
                    sha256: String::new(),
                    interval_secs: 30,
                    timeout_secs: 10,
                    retries: 3,
                })
                .collect(),
            ..NodeConfig::empty(&node)
        };
        // (old, new, removed)
        let cases: [(&[&str], &[&str], &[&str]); 4] = [
            (&["a", "b"], &["a", "b"], &[]),
            (&["a", "b"], &["b"], &["a"]),
            (&["a"], &[], &["a"]),
            (&[], &["a"], &[]),
        ];
        for (old, new, removed) in cases {
            let got: Vec<String> = removed_checks(&config(old), &config(new))
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(got, removed, "{old:?} -> {new:?}");
        }
    }
}
