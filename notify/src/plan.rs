//! What to tell a channel, decided from what it was told before and what
//! is true now. Pure; the loop in `lib.rs` reads the files, sends, and
//! keeps the ledger.
//!
//! - A new pending action is told once (its id and creation time make the
//!   subject, so the same id proposed again is news again).
//! - An incident is told when it opens and when it resolves. A subject
//!   told less than `repeat_after` ago waits: a flapping service gives one
//!   message when it starts and, if it ended in another state, one when the
//!   window has passed; not one per flap.
//! - An incident in a maintenance window is not told (and its end is not
//!   taken for a resolution while it stays open).
//! - At most `per_minute` messages a minute per channel; the rest wait, in
//!   order: actions, then openings, then resolutions.

use std::collections::BTreeMap;
use std::time::Duration;

use homelab_core::time::Timestamp;
use homelab_core::world::Incident;
use homelab_core::Action;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Said {
    ActionPending,
    IncidentOpened,
    IncidentResolved,
}

impl Said {
    pub fn as_str(self) -> &'static str {
        match self {
            Said::ActionPending => "action_pending",
            Said::IncidentOpened => "incident_opened",
            Said::IncidentResolved => "incident_resolved",
        }
    }
}

/// What one channel was told, by subject: what and when.
pub type Told = BTreeMap<String, (Said, Timestamp)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub repeat_after: Duration,
    pub per_minute: usize,
    /// How long a subject that needs nothing more is remembered.
    pub forget_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            repeat_after: Duration::from_secs(30 * 60),
            per_minute: 10,
            forget_after: Duration::from_secs(7 * 86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub subject: String,
    pub said: Said,
    pub title: String,
    pub text: String,
    /// The page, at the action's or incident's row.
    pub link: String,
}

pub fn action_subject(action: &Action) -> String {
    format!(
        "action:{}:{}",
        action.id,
        action.created_at.timestamp_millis()
    )
}

pub fn incident_subject(incident: &Incident) -> String {
    format!("incident:{}", incident.id)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    (now - since).to_std().unwrap_or(Duration::ZERO)
}

/// The notices for one channel now. `sent_last_minute` is how many it got
/// in the last minute; `base_url` starts the links.
pub fn plan(
    told: &Told,
    pending: &[Action],
    incidents: &[Incident],
    base_url: &str,
    limits: &Limits,
    sent_last_minute: usize,
    now: Timestamp,
) -> Vec<Notice> {
    let base = base_url.trim_end_matches('/');
    let held = |subject: &str, wanted: Said| match told.get(subject) {
        Some((said, _)) if *said == wanted => true,
        Some((_, at)) => elapsed(*at, now) < limits.repeat_after,
        None => false,
    };
    let mut notices = Vec::new();
    for action in pending {
        let subject = action_subject(action);
        if told.contains_key(&subject) {
            continue;
        }
        let on = match &action.service {
            Some(service) => format!("{service} on {}", action.node),
            None => action.node.to_string(),
        };
        notices.push(Notice {
            subject,
            said: Said::ActionPending,
            title: format!("Approve? {} of {on}", action.kind.as_str()),
            text: action_text(action),
            link: format!("{base}/actions/{}", action.id),
        });
    }
    for incident in incidents.iter().filter(|i| i.maintenance.is_none()) {
        let subject = incident_subject(incident);
        if held(&subject, Said::IncidentOpened) {
            continue;
        }
        notices.push(Notice {
            subject,
            said: Said::IncidentOpened,
            title: format!("{} on {}", incident.kind, incident.node),
            text: incident.message.clone(),
            link: format!("{base}/incidents/{}", incident.id),
        });
    }
    for (subject, (said, _)) in told {
        let Some(id) = subject.strip_prefix("incident:") else {
            continue;
        };
        if *said != Said::IncidentOpened
            || incidents.iter().any(|i| i.id == id)
            || held(subject, Said::IncidentResolved)
        {
            continue;
        }
        notices.push(Notice {
            subject: subject.clone(),
            said: Said::IncidentResolved,
            title: format!("resolved: {id}"),
            text: format!("{id} is no longer open"),
            link: format!("{base}/#incidents"),
        });
    }
    notices.truncate(limits.per_minute.saturating_sub(sent_last_minute));
    notices
}

/// Subjects that need nothing more (a resolved incident, an action no
/// longer pending) are forgotten after `forget_after`.
pub fn forget(told: &mut Told, pending: &[Action], limits: &Limits, now: Timestamp) {
    told.retain(|subject, (said, at)| {
        let current = match said {
            Said::ActionPending => pending.iter().any(|a| &action_subject(a) == subject),
            Said::IncidentOpened => true,
            Said::IncidentResolved => false,
        };
        current || elapsed(*at, now) < limits.forget_after
    });
}

/// At most this much of a redeploy's diff goes into a message (Telegram
/// takes 4,096 characters, ntfy 4 KB); the page has it whole.
pub const DIFF_IN_MESSAGE: usize = 1_200;

/// What a pending action's message says: why, the risk, and where it
/// comes from (the commit, and for a changed service its diff).
pub fn action_text(action: &homelab_core::Action) -> String {
    let mut text = format!(
        "{}: {} (risk {})",
        action.reason,
        action.message,
        homelab_core::world::json_word(&action.risk)
    );
    if let Some(origin) = &action.origin {
        text += &format!(
            "\ncommit {} {} by {}{}",
            origin.commit.short(),
            origin.commit.subject,
            origin.commit.author,
            if origin.pinned { " (pinned)" } else { "" }
        );
        if let Some(diff) = &origin.diff {
            let cut: String = diff.chars().take(DIFF_IN_MESSAGE).collect();
            text += "\n";
            text += &cut;
            if cut.len() < diff.len() {
                text += "\n… (the whole diff is on the action's page)";
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::{ActionKind, Name, Risk, Severity};

    fn t(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn incident(id: &str) -> Incident {
        Incident {
            id: id.into(),
            kind: "node_offline".into(),
            node: Name::parse("n2").unwrap(),
            service: None,
            severity: Severity::Error,
            message: "n2 is offline".into(),
            opened_at: t(0),
            count: None,
            last_seen: None,
            maintenance: None,
            noticed_at: None,
        }
    }

    fn action(at: i64) -> Action {
        Action::new(
            ActionKind::ContainerRestart,
            Name::parse("n1").unwrap(),
            Some(Name::parse("app").unwrap()),
            Risk::Low,
            "containers_not_running",
            "exited (1)",
            t(at),
        )
    }

    fn limits() -> Limits {
        Limits {
            repeat_after: Duration::from_secs(300),
            per_minute: 3,
            forget_after: Duration::from_secs(3600),
        }
    }

    fn said(notices: &[Notice]) -> Vec<(String, Said)> {
        notices
            .iter()
            .map(|n| (n.subject.clone(), n.said))
            .collect()
    }

    #[test]
    fn a_pending_redeploy_says_its_commit_and_diff() {
        let mut action = homelab_core::Action::new(
            homelab_core::ActionKind::Redeploy,
            Name::parse("piha").unwrap(),
            Some(Name::parse("app").unwrap()),
            homelab_core::Risk::Guarded,
            "desired_changed",
            "the repo changed the compose files of app since 1111111",
            chrono::Utc::now(),
        );
        assert_eq!(
            action_text(&action),
            "desired_changed: the repo changed the compose files of app since 1111111 (risk guarded)"
        );
        action.origin = Some(homelab_core::action::Origin {
            commit: homelab_core::repo::Commit {
                sha: "3f2a91c".repeat(6)[..40].to_string(),
                subject: "app: image 2".into(),
                author: "Ann".into(),
                time: chrono::Utc::now(),
            },
            pinned: false,
            from_commit: Some("1".repeat(40)),
            diff: Some(format!(
                "-image: app:1\n+image: app:2\n{}",
                "x".repeat(2000)
            )),
        });
        let text = action_text(&action);
        assert!(
            text.contains("\ncommit 3f2a91c app: image 2 by Ann\n-image: app:1\n+image: app:2"),
            "{text}"
        );
        assert!(
            text.ends_with("(the whole diff is on the action's page)"),
            "{text}"
        );
        assert!(text.chars().count() < 1_500);
    }

    #[test]
    fn what_a_channel_is_told() {
        let off = incident("node_offline:n2");
        let pending = action(0);
        let sub = incident_subject(&off);
        let act = action_subject(&pending);
        let mut in_window = incident("node_offline:n3");
        in_window.maintenance = Some(homelab_core::maintenance::Active {
            window: Name::parse("patching").unwrap(),
            until: t(9_999),
        });
        // (told before, pending, incidents, sent last minute, now, expected)
        type Case = (
            Told,
            Vec<Action>,
            Vec<Incident>,
            usize,
            i64,
            Vec<(String, Said)>,
        );
        let cases: Vec<Case> = vec![
            // New: the action first, then the incident.
            (
                Told::new(),
                vec![pending.clone()],
                vec![off.clone()],
                0,
                10,
                vec![
                    (act.clone(), Said::ActionPending),
                    (sub.clone(), Said::IncidentOpened),
                ],
            ),
            // Told already: nothing.
            (
                Told::from([
                    (act.clone(), (Said::ActionPending, t(10))),
                    (sub.clone(), (Said::IncidentOpened, t(10))),
                ]),
                vec![pending.clone()],
                vec![off.clone()],
                0,
                20,
                vec![],
            ),
            // Resolved, but it opened 60 s ago: held (flapping).
            (
                Told::from([(sub.clone(), (Said::IncidentOpened, t(10)))]),
                vec![],
                vec![],
                0,
                70,
                vec![],
            ),
            // Resolved, and the window has passed: told.
            (
                Told::from([(sub.clone(), (Said::IncidentOpened, t(10)))]),
                vec![],
                vec![],
                0,
                310,
                vec![(sub.clone(), Said::IncidentResolved)],
            ),
            // Open again soon after its resolution was told: held.
            (
                Told::from([(sub.clone(), (Said::IncidentResolved, t(310)))]),
                vec![],
                vec![off.clone()],
                0,
                400,
                vec![],
            ),
            // In a maintenance window: not told.
            (Told::new(), vec![], vec![in_window.clone()], 0, 10, vec![]),
            // An open incident that went into a window is not "resolved".
            (
                Told::from([(incident_subject(&in_window), (Said::IncidentOpened, t(0)))]),
                vec![],
                vec![in_window.clone()],
                0,
                1_000,
                vec![],
            ),
            // The same id proposed again later is news.
            (
                Told::from([(act.clone(), (Said::ActionPending, t(10)))]),
                vec![action(500)],
                vec![],
                0,
                510,
                vec![(action_subject(&action(500)), Said::ActionPending)],
            ),
            // The rate: 2 sent in the last minute, 3 a minute: one more now.
            (
                Told::new(),
                vec![pending.clone()],
                vec![off.clone(), incident("x")],
                2,
                10,
                vec![(act.clone(), Said::ActionPending)],
            ),
        ];
        for (i, (told, pending, incidents, sent, now, expected)) in cases.into_iter().enumerate() {
            let notices = plan(
                &told,
                &pending,
                &incidents,
                "https://h.example/",
                &limits(),
                sent,
                t(now),
            );
            assert_eq!(said(&notices), expected, "case {i}");
        }
    }

    #[test]
    fn notices_link_to_their_row_and_say_what_happened() {
        let notices = plan(
            &Told::new(),
            &[action(0)],
            &[incident("node_offline:n2")],
            "https://h.example/",
            &limits(),
            0,
            t(1),
        );
        assert_eq!(
            notices[0].link,
            "https://h.example/actions/container-restart-n1-app"
        );
        assert_eq!(notices[0].title, "Approve? container_restart of app on n1");
        assert_eq!(
            notices[0].text,
            "containers_not_running: exited (1) (risk low)"
        );
        assert_eq!(
            notices[1].link,
            "https://h.example/incidents/node_offline:n2"
        );
    }

    #[test]
    fn what_needs_nothing_more_is_forgotten_in_time() {
        let pending = action(0);
        let mut told = Told::from([
            (action_subject(&pending), (Said::ActionPending, t(0))),
            (action_subject(&action(50)), (Said::ActionPending, t(50))),
            ("incident:a".to_string(), (Said::IncidentOpened, t(0))),
            ("incident:b".to_string(), (Said::IncidentResolved, t(0))),
            ("incident:c".to_string(), (Said::IncidentResolved, t(4_000))),
        ]);
        forget(
            &mut told,
            std::slice::from_ref(&pending),
            &limits(),
            t(4_100),
        );
        let left: Vec<&String> = told.keys().collect();
        assert_eq!(
            left,
            vec![
                &action_subject(&pending),
                &"incident:a".to_string(),
                &"incident:c".to_string()
            ]
        );
    }
}
