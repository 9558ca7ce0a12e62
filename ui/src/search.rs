//! Searching the event log a page at a time, newest first, without reading
//! it whole: days are read newest first, only the files of the node asked
//! for, and the walk stops once a page is full. The next page starts
//! strictly after the last event shown (`before`, `before_id`). What
//! matches is decided by a pure [`Filter`], tested by table.

use anyhow::Result;
use homelab_core::time::Timestamp;
use homelab_core::{eventlog, Event, Layout, Name, Severity};

/// What an event must be to be shown. Every part is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub node: Option<Name>,
    pub service: Option<Name>,
    pub kind: Option<String>,
    /// This severity or worse.
    pub severity: Option<Severity>,
    pub since: Option<Timestamp>,
    /// Strictly older than this (with `before_id`: older, or as old with a
    /// smaller id), the cursor of the next page.
    pub before: Option<Timestamp>,
    pub before_id: Option<String>,
    /// Types left out (the events page leaves out routine snapshots).
    pub exclude: Vec<String>,
}

fn rank(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
        Severity::Critical => 3,
    }
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.node.as_ref().is_none_or(|n| *n == e.node)
            && self
                .service
                .as_ref()
                .is_none_or(|s| e.service.as_ref() == Some(s))
            && self.kind.as_ref().is_none_or(|k| *k == e.kind)
            && !self.exclude.contains(&e.kind)
            && self.severity.is_none_or(|s| rank(e.severity) >= rank(s))
            && self.since.is_none_or(|s| e.ts >= s)
            && self.before.is_none_or(|b| {
                e.ts < b
                    || (e.ts == b
                        && self
                            .before_id
                            .as_ref()
                            .is_some_and(|id| e.id.as_str() < id.as_str()))
            })
    }

    /// Whether a day folder (`YYYY-MM-DD`) can hold a match.
    fn day_may_match(&self, day: &str) -> bool {
        let day_of = |t: &Timestamp| t.format("%Y-%m-%d").to_string();
        self.since.is_none_or(|s| day >= day_of(&s).as_str())
            && self.before.is_none_or(|b| day <= day_of(&b).as_str())
    }
}

/// Newest first: by time, then by id.
pub fn newest_first(events: &mut [Event]) {
    events.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| b.id.cmp(&a.id)));
}

/// One page.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Event>,
    /// Older matches exist: the next page starts after the last event.
    pub more: bool,
    /// Lines that did not parse, skipped.
    pub bad_lines: usize,
}

/// Up to `limit` matching events, newest first. Days are read newest
/// first and the walk stops after the day that fills the page, so a page
/// costs the days it spans, not the whole log.
pub fn search(layout: &Layout, filter: &Filter, limit: usize) -> Result<Page> {
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for day in eventlog::days(layout)?.into_iter().rev() {
        if !filter.day_may_match(&day) {
            if filter
                .since
                .is_some_and(|s| day < s.format("%Y-%m-%d").to_string())
            {
                break;
            }
            continue;
        }
        for (node, path) in eventlog::day_files(layout, &day)? {
            if filter.node.as_ref().is_some_and(|n| *n != node) {
                continue;
            }
            eventlog::read_file(
                &path,
                |e| {
                    if filter.matches(&e) {
                        found.push(e);
                    }
                },
                &mut bad,
            )?;
        }
        // A day is read whole: a later day's events are all newer.
        if found.len() > limit {
            break;
        }
    }
    newest_first(&mut found);
    let more = found.len() > limit;
    found.truncate(limit);
    Ok(Page {
        events: found,
        more,
        bad_lines: bad.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        ts: &str,
        id: &str,
        node: &str,
        service: Option<&str>,
        kind: &str,
        sev: &str,
    ) -> Event {
        let mut json = serde_json::json!({
            "v": 1, "id": id, "ts": ts, "node": node, "source": "test",
            "type": kind, "severity": sev, "message": "m",
        });
        if let Some(s) = service {
            json["service"] = s.into();
        }
        Event::from_payload(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_filter_matches_by_every_part() {
        let e = event(
            "2026-11-24T10:00:00.000Z",
            "01B",
            "n1",
            Some("app"),
            "containers_not_running",
            "warning",
        );
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let name = |s: &str| Some(Name::parse(s).unwrap());
        let cases: Vec<(Filter, bool)> = vec![
            (Filter::default(), true),
            (
                Filter {
                    node: name("n1"),
                    ..Default::default()
                },
                true,
            ),
            (
                Filter {
                    node: name("n2"),
                    ..Default::default()
                },
                false,
            ),
            (
                Filter {
                    service: name("app"),
                    ..Default::default()
                },
                true,
            ),
            (
                Filter {
                    service: name("db"),
                    ..Default::default()
                },
                false,
            ),
            (
                Filter {
                    kind: Some("containers_not_running".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                Filter {
                    kind: Some("node_snapshot".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                Filter {
                    severity: Some(Severity::Info),
                    ..Default::default()
                },
                true,
            ),
            (
                Filter {
                    severity: Some(Severity::Warning),
                    ..Default::default()
                },
                true,
            ),
            (
                Filter {
                    severity: Some(Severity::Error),
                    ..Default::default()
                },
                false,
            ),
            (
                Filter {
                    since: at("2026-11-24T10:00:00Z"),
                    ..Default::default()
                },
                true,
            ),
            (
                Filter {
                    since: at("2026-11-24T10:00:01Z"),
                    ..Default::default()
                },
                false,
            ),
            (
                Filter {
                    before: at("2026-11-24T10:00:01Z"),
                    ..Default::default()
                },
                true,
            ),
            // The cursor: as old as the last shown, only with a smaller id.
            (
                Filter {
                    before: at("2026-11-24T10:00:00Z"),
                    ..Default::default()
                },
                false,
            ),
            (
                Filter {
                    before: at("2026-11-24T10:00:00Z"),
                    before_id: Some("01C".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                Filter {
                    before: at("2026-11-24T10:00:00Z"),
                    before_id: Some("01B".into()),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&e), expected, "{filter:?}");
        }
    }

    #[test]
    fn pages_walk_back_over_days_without_gaps_or_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        // Three days, two nodes, several events at the same millisecond.
        let mut all = Vec::new();
        for (day, hour) in [("2026-11-22", 9), ("2026-11-23", 10), ("2026-11-24", 11)] {
            for node in ["n1", "n2"] {
                let path = layout.event_log(day.parse().unwrap(), &Name::parse(node).unwrap());
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let mut text = String::new();
                for i in 0..5 {
                    let e = event(
                        &format!("{day}T{hour:02}:00:0{}.000Z", i / 2),
                        &format!("{day}-{node}-{i}"),
                        node,
                        None,
                        "x",
                        "info",
                    );
                    text += &serde_json::to_string(&e).unwrap();
                    text += "\n";
                    all.push(e);
                }
                std::fs::write(&path, text).unwrap();
            }
        }
        newest_first(&mut all);
        let mut seen = Vec::new();
        let mut filter = Filter::default();
        loop {
            let page = search(&layout, &filter, 4).unwrap();
            assert!(page.events.len() <= 4);
            seen.extend(page.events.iter().map(|e| e.id.clone()));
            if !page.more {
                break;
            }
            let last = page.events.last().unwrap();
            filter.before = Some(last.ts);
            filter.before_id = Some(last.id.to_string());
        }
        let expected: Vec<_> = all.iter().map(|e| e.id.clone()).collect();
        assert_eq!(seen, expected);

        // One node, since the middle day.
        let filter = Filter {
            node: Some(Name::parse("n2").unwrap()),
            since: Some("2026-11-23T00:00:00Z".parse().unwrap()),
            ..Default::default()
        };
        let page = search(&layout, &filter, 100).unwrap();
        assert_eq!(page.events.len(), 10);
        assert!(!page.more);
        assert!(page.events.iter().all(|e| e.node.as_str() == "n2"));
    }
}
