//! Each running container's CPU and memory, for the node page (Beszel's
//! container stats): read from Docker's one-shot stats every
//! [`crate::STATS_EVERY`] and sent with the vitals in the agent's retained
//! status, not as events (figures that change on every read would make
//! every snapshot new and fill the durable log). CPU is worked out from
//! two readings, as `docker stats` does; the arithmetic is pure.

use std::collections::HashMap;

pub use homelab_core::agentstatus::ContainerStats;

/// One reading of a container's counters, as Docker gives them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    pub id: String,
    pub name: String,
    /// CPU time the container used, in nanoseconds, since it started.
    pub cpu_total_ns: u64,
    /// CPU time the whole host used, in nanoseconds (all cores).
    pub system_ns: u64,
    pub online_cpus: u32,
    /// Memory charged to it, page cache included.
    pub memory_usage: u64,
    /// The inactive page cache within that (`inactive_file` on cgroup v2,
    /// `total_inactive_file` on v1), which `docker stats` leaves out.
    pub inactive_file: u64,
    pub memory_limit: u64,
}

/// What the operator sees of a container: CPU as a percentage of one
/// core (200 % is two cores busy, as `docker stats` shows it), once there
/// is an earlier reading of the same container; memory in use without the
/// inactive page cache.
pub fn figures(before: Option<&Reading>, now: &Reading) -> ContainerStats {
    let cpu_pct = before.filter(|b| b.id == now.id).and_then(|b| {
        let cpu = now.cpu_total_ns.checked_sub(b.cpu_total_ns)?;
        let system = now.system_ns.checked_sub(b.system_ns)?;
        (system > 0).then(|| {
            let pct = cpu as f64 / system as f64 * now.online_cpus.max(1) as f64 * 100.0;
            (pct * 10.0).round() / 10.0
        })
    });
    ContainerStats {
        name: now.name.clone(),
        cpu_pct,
        memory_bytes: now.memory_usage.saturating_sub(now.inactive_file),
        memory_limit_bytes: (now.memory_limit > 0).then_some(now.memory_limit),
    }
}

/// The figures of every container in `now`, each against its reading in
/// `before` (by id); `before` becomes `now`. Sorted by name.
pub fn update(before: &mut HashMap<String, Reading>, now: Vec<Reading>) -> Vec<ContainerStats> {
    let mut out: Vec<ContainerStats> = now.iter().map(|r| figures(before.get(&r.id), r)).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    *before = now.into_iter().map(|r| (r.id.clone(), r)).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(id: &str, cpu: u64, system: u64) -> Reading {
        Reading {
            id: id.into(),
            name: format!("{id}-1"),
            cpu_total_ns: cpu,
            system_ns: system,
            online_cpus: 2,
            memory_usage: 300_000_000,
            inactive_file: 100_000_000,
            memory_limit: 1_000_000_000,
        }
    }

    #[test]
    fn cpu_from_two_readings_memory_without_the_cache() {
        // (before, now, cpu %)
        let cases = [
            // No earlier reading: no CPU yet.
            (None, reading("a", 5, 100), None),
            // A quarter of the host's time on two cores: half a core.
            (
                Some(reading("a", 0, 0)),
                reading("a", 250, 1_000),
                Some(50.0),
            ),
            // All of both cores.
            (
                Some(reading("a", 0, 0)),
                reading("a", 1_000, 1_000),
                Some(200.0),
            ),
            // Another container under the same name (recreated): no CPU.
            (Some(reading("b", 0, 0)), reading("a", 250, 1_000), None),
            // Counters that went back (a restart): no CPU.
            (Some(reading("a", 900, 0)), reading("a", 250, 1_000), None),
            // No host time passed: no CPU.
            (Some(reading("a", 0, 1_000)), reading("a", 250, 1_000), None),
        ];
        for (before, now, cpu) in cases {
            let got = figures(before.as_ref(), &now);
            assert_eq!(got.cpu_pct, cpu, "{before:?} → {now:?}");
            assert_eq!(got.memory_bytes, 200_000_000);
            assert_eq!(got.memory_limit_bytes, Some(1_000_000_000));
        }
    }

    #[test]
    fn each_container_against_its_last_reading() {
        let mut before = HashMap::new();
        let first = update(&mut before, vec![reading("b", 0, 0), reading("a", 0, 0)]);
        assert_eq!(
            first
                .iter()
                .map(|s| (s.name.as_str(), s.cpu_pct))
                .collect::<Vec<_>>(),
            vec![("a-1", None), ("b-1", None)]
        );
        let second = update(&mut before, vec![reading("a", 100, 1_000)]);
        assert_eq!(
            second
                .iter()
                .map(|s| (s.name.as_str(), s.cpu_pct))
                .collect::<Vec<_>>(),
            vec![("a-1", Some(20.0))]
        );
        assert_eq!(before.len(), 1, "b is gone");
    }
}
