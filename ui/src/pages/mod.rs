//! The operator's pages, server-rendered (askama), every one with the same
//! frame: navigation with the counts that need attention, the repo's
//! problems as a banner, the login form. Overview (a card per node of the
//! inventory), services matrix, a page per node, actions, incidents, the
//! event log. Forms work without JavaScript; with it, `app.js` swaps in a
//! fresh `<main>` when the server says something changed.

use anyhow::Context as _;
use askama::Template;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use homelab_core::{Action, ActionKind, ActionState, Name};

use crate::present::{self, When};
use crate::{websec, world, AppError, AppState};

mod actions;
mod audit;
mod events;
mod find;
mod incidents;
mod node;
mod overview;
mod repo;
mod services;
mod views;

pub use actions::{action_page, actions_page, Step};
pub use audit::{audit_page, AuditQuery, AuditRow};
pub use events::{events_page, EventsForm, EventsQuery, ROUTINE};
pub use find::{matching, search_page, Hit, Hits, SearchQuery};
pub use incidents::{incident_page, incidents_page, timeline_filter, Occurrence};
pub use node::{
    charts, container_figures, node, Chart, ContainerView, Mark, NodeQuery, RangeLink, Zone,
};
pub use overview::{overview, verdict, worst_first, NodeCard, VitalsView};
pub use repo::{changed_words, repo_page, CommitRow};
pub use services::{last_known, services, shown, Cell, MatrixRow, ServicesQuery};
pub use views::{arrival_delay, ActionView, EventView, IncidentView};

/// What every page shows around its content.
pub struct Frame {
    pub authed: bool,
    /// Who is logged in.
    pub operator: Option<String>,
    /// The CSRF value every form carries (the `homelab_csrf` cookie's).
    pub csrf: String,
    /// Problems of the system itself (a repo file that does not load), one
    /// `file:line: problem` each.
    pub problems: Vec<String>,
    /// Problems of homelab itself as the UI sees them ([`crate::system_problems`]).
    pub system: Vec<String>,
    /// Which page this is, for the navigation.
    pub here: &'static str,
    pub pending: usize,
    pub incidents: usize,
    /// The page's own path and query, where its forms come back to.
    pub back: String,
    /// The commit that is the desired state (a git source only).
    pub desired: Option<DesiredLine>,
}

/// What every page says of the desired state of a git source, at its top.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredLine {
    pub short: String,
    pub subject: String,
    pub author: String,
    pub when: When,
    pub fetched: Option<When>,
    /// Pinned: by whom, since when, and the branch's head meanwhile.
    pub pinned: Option<(String, When)>,
    pub head: Option<String>,
    /// A commit that does not validate: short, subject, author, problems.
    pub invalid: Option<(String, String, String, Vec<String>)>,
    /// A force-push: when, and the commits it dropped (short and subject).
    pub rewritten: Option<(When, Vec<String>)>,
    /// Fetching fails: why.
    pub failing: Option<String>,
}

impl DesiredLine {
    pub fn of(
        status: &homelab_core::repo::RepoStatus,
        now: &chrono::DateTime<Utc>,
    ) -> Option<DesiredLine> {
        let live = status.live.as_ref()?;
        Some(DesiredLine {
            short: live.short().to_string(),
            subject: live.subject.clone(),
            author: live.author.clone(),
            when: When::new(&live.time, now),
            fetched: status.fetched_at.as_ref().map(|t| When::new(t, now)),
            pinned: status
                .pinned
                .as_ref()
                .map(|p| (p.by.clone(), When::new(&p.at, now))),
            head: status
                .head
                .as_ref()
                .filter(|h| h.sha != live.sha)
                .map(|h| format!("{} ({})", h.short(), h.subject)),
            invalid: status.invalid.as_ref().map(|i| {
                (
                    i.commit.short().to_string(),
                    i.commit.subject.clone(),
                    i.commit.author.clone(),
                    i.problems.clone(),
                )
            }),
            rewritten: status
                .rewritten
                .as_ref()
                .filter(|r| {
                    !r.dropped.is_empty()
                        && now.signed_duration_since(r.at) < chrono::TimeDelta::days(1)
                })
                .map(|r| {
                    (
                        When::new(&r.at, now),
                        r.dropped
                            .iter()
                            .map(|c| format!("{} {}", c.short(), c.subject))
                            .collect(),
                    )
                }),
            failing: status.failing.as_ref().map(|f| {
                format!(
                    "fetching failed {} times in a row: {}",
                    f.failures, f.message
                )
            }),
        })
    }
}

/// The frame of a page, and the CSRF cookie to set if the browser has
/// none yet.
pub(crate) fn frame(
    state: &AppState,
    headers: &HeaderMap,
    here: &'static str,
    back: String,
) -> Result<(Frame, Option<String>), AppError> {
    let pending = actions(state, &[ActionState::Pending])?.len();
    frame_counted(state, headers, here, back, pending)
}

/// [`frame`], for a page that has listed the pending actions already.
fn frame_counted(
    state: &AppState,
    headers: &HeaderMap,
    here: &'static str,
    back: String,
    pending: usize,
) -> Result<(Frame, Option<String>), AppError> {
    let (csrf, set_csrf) = match websec::cookie(headers, websec::CSRF_COOKIE) {
        Some(value) if value.len() == 48 && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (value.to_string(), None)
        }
        _ => {
            let value = websec::new_csrf();
            let cookie = websec::set_cookie(
                websec::CSRF_COOKIE,
                &value,
                2_592_000,
                websec::over_tls(headers),
            );
            (value, Some(cookie))
        }
    };
    let world = world(state)?;
    let problems = world
        .incidents
        .iter()
        .filter(|i| i.kind == homelab_core::world::REPO_PROBLEM)
        .flat_map(|i| i.message.lines().map(str::to_string))
        .collect();
    let operator = crate::operator(state, headers);
    Ok((
        Frame {
            authed: operator.is_some(),
            operator,
            csrf,
            problems,
            system: crate::system_problems(state),
            here,
            pending,
            incidents: world.incidents.len(),
            back,
            desired: homelab_core::repo::RepoStatus::read(&state.layout)
                .and_then(|status| DesiredLine::of(&status, &Utc::now())),
        },
        set_csrf,
    ))
}

/// A rendered page, with the CSRF cookie when it is new.
pub(crate) fn respond(html: String, set_csrf: Option<String>) -> Response {
    let html = Html(html);
    match set_csrf {
        Some(cookie) => ([(header::SET_COOKIE, cookie)], html).into_response(),
        None => html.into_response(),
    }
}

pub(crate) fn render(page: impl Template) -> Result<String, AppError> {
    Ok(page.render().context("render page")?)
}

/// Actions in these states, through the shared listing cache.
pub(crate) fn actions(state: &AppState, states: &[ActionState]) -> Result<Vec<Action>, AppError> {
    let mut cache = state.actions.lock().expect("actions cache lock");
    let mut out = Vec::new();
    for s in states {
        out.extend(state.store.list_with(*s, &mut cache)?);
    }
    Ok(out)
}

fn finished_states() -> Vec<ActionState> {
    ActionState::ALL
        .into_iter()
        .filter(|s| !s.is_open())
        .collect()
}

// ---------------------------------------------------------------- wording

/// What approving an action will do, in the operator's words.
pub fn what_happens(a: &Action) -> String {
    let service = a.service.as_ref().map_or("", |s| s.as_str());
    let params = a.params.clone().unwrap_or_default();
    match a.kind {
        ActionKind::ContainerRestart => format!(
            "{}'s agent restarts the containers of {service} (docker restart); nothing else changes",
            a.node
        ),
        ActionKind::Redeploy => match (&params.compose, &params.compose_missing) {
            (Some(bundle), _) => format!(
                "{}'s agent runs compose up -d for project {} with {} from the repo, replacing its containers",
                a.node,
                bundle.project,
                bundle
                    .files
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, Some(why)) => format!(
                "{}'s agent is asked to redeploy {service}, but it will fail: {why}",
                a.node
            ),
            (None, None) => format!("{}'s agent redeploys {service}", a.node),
        },
        ActionKind::DiskCleanup => {
            let mut text = format!(
                "{}'s agent removes stopped containers{}, unused images and build cache (docker prune)",
                a.node,
                params
                    .older_than_secs
                    .map(|s| format!(" older than {}", present::duration(s)))
                    .unwrap_or_default()
            );
            if let Some(keep) = params.keep_services.filter(|k| !k.is_empty()) {
                text += &format!(
                    "; the containers of {} stay",
                    keep.iter()
                        .map(Name::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            text
        }
        ActionKind::AlertOnly => "nothing runs: it is an alert to acknowledge".into(),
    }
}

// ---------------------------------------------------------------- nodes

// ---------------------------------------------------------------- overview

// ---------------------------------------------------------------- services

// ---------------------------------------------------------------- a node

// ---------------------------------------------------------------- actions

// ---------------------------------------------------------------- incidents

// ---------------------------------------------------------------- search

// ---------------------------------------------------------------- events

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Filter;
    use chrono::Duration;
    use homelab_core::time::Timestamp;
    use homelab_core::world::{NodeStatus, ServiceState, ServiceStatus};
    use homelab_core::{Risk, Severity};

    #[test]
    fn an_incident_that_arrived_late_says_so() {
        let t = |s: &str| -> Timestamp { s.parse().unwrap() };
        let opened = t("2026-12-07T10:00:00Z");
        // (noticed, shown)
        let cases = [
            (None, None),
            (Some("2026-12-07T10:00:02Z"), None),
            (Some("2026-12-07T10:00:59Z"), None),
            (
                Some("2026-12-07T10:01:00Z"),
                Some("reported 1 min after it began: it came in a backlog"),
            ),
            (
                Some("2026-12-07T12:05:00Z"),
                Some("reported 2 h 5 min after it began: it came in a backlog"),
            ),
            // A clock behind: never negative.
            (Some("2026-12-07T09:00:00Z"), None),
        ];
        for (noticed, shown) in cases {
            assert_eq!(
                arrival_delay(opened, noticed.map(t)).as_deref(),
                shown,
                "{noticed:?}"
            );
        }
    }

    #[test]
    fn a_search_matches_every_word() {
        let hit = |t: &str| Hit {
            title: t.into(),
            link: String::new(),
            detail: String::new(),
        };
        let candidates = || {
            vec![
                ("zigbee2mqtt piha running".to_string(), hit("z on piha")),
                ("zigbee vps exited".to_string(), hit("z on vps")),
                ("Mosquitto piha".to_string(), hit("m")),
            ]
        };
        let titles = |q: &str, limit| -> Vec<String> {
            matching(q, candidates(), limit)
                .into_iter()
                .map(|h| h.title)
                .collect()
        };
        assert_eq!(titles("zig", 10), ["z on piha", "z on vps"]);
        assert_eq!(titles("ZIG  piha", 10), ["z on piha"]);
        assert_eq!(titles("mosquitto", 10), ["m"]);
        assert_eq!(titles("zig", 1), ["z on piha"]);
        assert!(titles("   ", 10).is_empty());
        assert!(titles("nothing", 10).is_empty());
    }

    #[test]
    fn an_offline_nodes_services_are_last_known() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let node = |status: NodeStatus| homelab_core::world::NodeState {
            node: Name::parse("piha").unwrap(),
            status,
            since: now,
            first_seen: now,
            last_seen: now - Duration::hours(3),
            last_seq: 1,
            docker: homelab_core::world::DockerStatus::Unknown,
            containers: 1,
            uplink: Default::default(),
        };
        assert_eq!(last_known(Some(&node(NodeStatus::Online)), &now), None);
        assert_eq!(
            last_known(Some(&node(NodeStatus::Offline)), &now).as_deref(),
            Some("3 h ago")
        );
        assert_eq!(last_known(None, &now).as_deref(), Some("never"));
    }

    fn card(status: &str, healthy: usize, unhealthy: usize, missing: usize) -> NodeCard {
        let now = Utc::now();
        NodeCard {
            node: "n".into(),
            status: status.into(),
            icon: "",
            since: When::new(&now, &now),
            last_seen: When::new(&now, &now),
            stale: false,
            seen: true,
            role: String::new(),
            description: String::new(),
            docker: "ok".into(),
            healthy,
            unhealthy,
            stopped: 0,
            missing,
            vitals: None,
            edge: false,
            backlog: None,
            oldest_unacked: None,
            link: None,
            tailscale: None,
            uplink_problems: Vec::new(),
            unknown: false,
            tone: "ok",
            day: None,
        }
    }

    #[test]
    fn the_desired_state_line() {
        use homelab_core::repo::{Commit, Failing, Invalid, Pin, RepoStatus, Rewrite};
        let at = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let commit = |c: char, subject: &str, secs: i64| Commit {
            sha: c.to_string().repeat(40),
            subject: subject.into(),
            author: "Ann".into(),
            time: at(secs),
        };
        let mut status = RepoStatus {
            source: "https://git.example.net/lab.git".into(),
            branch: "main".into(),
            live: None,
            head: None,
            pinned: None,
            invalid: None,
            rewritten: None,
            failing: None,
            fetched_at: Some(at(7180)),
            updated: at(7180),
        };
        assert_eq!(
            DesiredLine::of(&status, &at(7200)),
            None,
            "nothing live yet"
        );
        status.live = Some(commit('3', "zigbee2mqtt: pin 1.40", 0));
        status.head = status.live.clone();
        let line = DesiredLine::of(&status, &at(7200)).unwrap();
        assert_eq!(
            (
                line.short.as_str(),
                line.subject.as_str(),
                line.when.ago.as_str()
            ),
            ("3333333", "zigbee2mqtt: pin 1.40", "2 h ago")
        );
        assert_eq!(line.fetched.unwrap().ago, "20 s ago");
        assert_eq!(
            (
                line.head,
                line.pinned,
                line.invalid,
                line.rewritten,
                line.failing
            ),
            (None, None, None, None, None)
        );
        // Pinned, a newer head that does not validate, a force-push, and a
        // remote that fails.
        status.pinned = Some(Pin {
            commit: commit('3', "zigbee2mqtt: pin 1.40", 0),
            by: "ann".into(),
            at: at(7000),
        });
        status.head = Some(commit('5', "typo", 7100));
        status.invalid = Some(Invalid {
            commit: commit('5', "typo", 7100),
            problems: vec!["hosts/n1/services.yaml:2: unknown field `monitr`".into()],
        });
        status.rewritten = Some(Rewrite {
            at: at(7150),
            from: "4".repeat(40),
            to: "5".repeat(40),
            dropped: vec![commit('4', "dropped one", 6000)],
        });
        status.failing = Some(Failing {
            since: at(7190),
            failures: 1,
            message: "Could not resolve host".into(),
        });
        let line = DesiredLine::of(&status, &at(7200)).unwrap();
        assert_eq!(
            line.pinned
                .as_ref()
                .map(|(by, w)| (by.as_str(), w.ago.as_str())),
            Some(("ann", "3 min ago"))
        );
        assert_eq!(line.head.as_deref(), Some("5555555 (typo)"));
        assert_eq!(line.invalid.unwrap().3.len(), 1);
        assert_eq!(line.rewritten.unwrap().1, vec!["4444444 dropped one"]);
        assert_eq!(
            line.failing.as_deref(),
            Some("fetching failed 1 times in a row: Could not resolve host")
        );
    }

    #[test]
    fn what_a_commit_changed_in_words() {
        use homelab_core::repo::{Commit, CommitChange};
        let change = |nodes: &[&str], services: &[&str], inventory| CommitChange {
            commit: Commit {
                sha: "a".repeat(40),
                subject: String::new(),
                author: String::new(),
                time: Utc::now(),
            },
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            services: services.iter().map(|s| s.to_string()).collect(),
            inventory,
            files: 2,
        };
        assert_eq!(
            changed_words(&change(&["piha"], &["app", "db"], true)),
            "inventory; nodes piha; services app, db"
        );
        assert_eq!(changed_words(&change(&[], &[], false)), "2 other files");
    }

    #[test]
    fn the_verdict_says_what_needs_the_operator() {
        let cases: Vec<(Vec<NodeCard>, usize, usize, &str, &str)> = vec![
            (
                vec![card("online", 3, 0, 0), card("online", 2, 0, 0)],
                0,
                0,
                "All is well: 2 nodes online, 5 services healthy.",
                "ok",
            ),
            (
                vec![card("online", 3, 1, 0)],
                1,
                1,
                "1 action waits for you, 1 service is not healthy, 1 incident is open.",
                "warning",
            ),
            (
                vec![card("offline", 3, 0, 0), card("never_reported", 0, 0, 2)],
                2,
                0,
                "2 nodes are not online, 2 services are not healthy, 2 incidents are open.",
                "bad",
            ),
        ];
        for (cards, incidents, pending, text, tone) in cases {
            assert_eq!(
                verdict(&cards, incidents, pending),
                (text.to_string(), tone)
            );
        }
    }

    #[test]
    fn every_kind_of_action_says_what_it_will_do() {
        let n = |s: &str| Name::parse(s).unwrap();
        let now = Utc::now();
        let mut restart = Action::new(
            ActionKind::ContainerRestart,
            n("piha"),
            Some(n("mosquitto")),
            Risk::Low,
            "containers_not_running",
            "exited (137)",
            now,
        );
        assert_eq!(
            what_happens(&restart),
            "piha's agent restarts the containers of mosquitto (docker restart); nothing else changes"
        );
        restart.kind = ActionKind::Redeploy;
        restart.params = Some(homelab_core::action::ActionParams {
            compose: Some(homelab_core::command::ComposeBundle {
                project: n("mosquitto"),
                compose_version: None,
                files: vec![homelab_core::command::ComposeFile::new(
                    "services/mosquitto/compose.yaml",
                    "services: {}\n".into(),
                )],
            }),
            ..Default::default()
        });
        assert_eq!(
            what_happens(&restart),
            "piha's agent runs compose up -d for project mosquitto with services/mosquitto/compose.yaml from the repo, replacing its containers"
        );
        restart.params = Some(homelab_core::action::ActionParams {
            compose_missing: Some("no compose file in the repo".into()),
            ..Default::default()
        });
        assert!(what_happens(&restart).ends_with("but it will fail: no compose file in the repo"));
        restart.kind = ActionKind::DiskCleanup;
        restart.params = Some(homelab_core::action::ActionParams {
            keep_services: Some(vec![n("db")]),
            older_than_secs: Some(86_400),
            ..Default::default()
        });
        assert_eq!(
            what_happens(&restart),
            "piha's agent removes stopped containers older than 1 d, unused images and build cache (docker prune); the containers of db stay"
        );
        restart.kind = ActionKind::AlertOnly;
        assert!(what_happens(&restart).starts_with("nothing runs"));
    }

    #[test]
    fn event_queries_are_checked_at_the_edge() {
        let q = |f: fn(&mut EventsQuery)| {
            let mut query = EventsQuery::default();
            f(&mut query);
            query.filter()
        };
        assert!(q(|_| {}).unwrap() == Filter::default());
        assert!(
            q(|q| q.node = Some(String::new())).unwrap().node.is_none(),
            "an empty field is absent"
        );
        assert!(q(|q| q.node = Some("../etc".into())).is_err());
        assert!(q(|q| q.service = Some("a/b".into())).is_err());
        assert!(q(|q| q.kind = Some("a b".into())).is_err());
        assert!(q(|q| q.severity = Some("loud".into())).is_err());
        assert_eq!(
            q(|q| q.severity = Some("error".into())).unwrap().severity,
            Some(Severity::Error)
        );
        assert!(q(|q| q.since = Some("yesterday".into())).is_err());
        let t = q(|q| q.since = Some("2026-11-24T10:00".into()))
            .unwrap()
            .since
            .unwrap();
        assert_eq!(homelab_core::time::format(&t), "2026-11-24T10:00:00.000Z");
        let t = q(|q| q.before = Some("2026-11-24".into()))
            .unwrap()
            .before
            .unwrap();
        assert_eq!(homelab_core::time::format(&t), "2026-11-24T00:00:00.000Z");
        assert!(q(|q| q.before_id = Some("x\ny".into())).is_err());
    }

    #[test]
    fn the_matrix_filter() {
        let s = |node: &str, service: &str, status: ServiceStatus| ServiceState {
            node: Name::parse(node).unwrap(),
            service: Name::parse(service).unwrap(),
            status,
            since: Utc::now(),
            message: String::new(),
            containers: vec![],
        };
        let cases = [
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "",
                false,
                true,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "MOSQ",
                false,
                true,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "pih",
                false,
                true,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "db",
                false,
                false,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Running),
                "",
                true,
                false,
            ),
            (
                s("piha", "mosquitto", ServiceStatus::Missing),
                "",
                true,
                true,
            ),
        ];
        for (service, q, problems, expected) in cases {
            assert_eq!(shown(&service, q, problems), expected, "{q} {problems}");
        }
    }
}
