//! How an action, an incident and an event are shown, on every page that lists them.

use homelab_core::time::Timestamp;
use homelab_core::{Action, Event, Risk};

use crate::json_word;
use crate::pages::what_happens;
use crate::present::{self, When};

pub struct ActionView {
    /// In words: "Restart zigbee2mqtt on piha".
    pub title: String,
    pub id: String,
    pub kind: String,
    pub node: String,
    pub service: String,
    pub risk: String,
    pub risk_icon: &'static str,
    pub guarded: bool,
    pub reason: String,
    pub message: String,
    pub what: String,
    pub state: String,
    pub icon: &'static str,
    pub created_at: When,
    pub updated_at: When,
    /// The last step: "completed by executor: …".
    pub last: String,
    /// The result's message, once finished.
    pub result: String,
    pub ok: bool,
    /// The commit it was proposed from: `3f2a91c (subject) by author`,
    /// pinned or not.
    pub commit: String,
    /// For a redeploy of a changed service: the commit it changes from, and
    /// the diff of its compose files.
    pub from_commit: String,
    pub diff: String,
}

impl ActionView {
    pub fn new(a: &Action, now: &Timestamp) -> ActionView {
        let risk = json_word(&a.risk);
        ActionView {
            title: present::action_title(
                a.kind.as_str(),
                a.node.as_str(),
                a.service.as_ref().map_or("", |s| s.as_str()),
            ),
            id: a.id.to_string(),
            kind: a.kind.as_str().into(),
            node: a.node.to_string(),
            service: a
                .service
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            risk_icon: if a.risk == Risk::Guarded {
                "▲"
            } else {
                "●"
            },
            guarded: a.risk == Risk::Guarded,
            risk,
            reason: a.reason.clone(),
            message: a.message.clone(),
            what: what_happens(a),
            state: a.state.dir().into(),
            icon: present::action_icon(a.state.dir()),
            created_at: When::new(&a.created_at, now),
            updated_at: When::new(&a.updated_at, now),
            last: a
                .history
                .last()
                .map(|t| format!("{} by {}: {}", t.state, t.by, t.why))
                .unwrap_or_default(),
            result: a
                .result
                .as_ref()
                .map(|r| r.message.clone())
                .unwrap_or_default(),
            ok: a.result.as_ref().is_some_and(|r| r.ok),
            commit: a
                .origin
                .as_ref()
                .map(|o| {
                    format!(
                        "{} ({}) by {}{}",
                        o.commit.short(),
                        o.commit.subject,
                        o.commit.author,
                        if o.pinned { ", pinned" } else { "" }
                    )
                })
                .unwrap_or_default(),
            from_commit: a
                .origin
                .as_ref()
                .and_then(|o| o.from_commit.as_deref())
                .map(|c| c[..c.len().min(7)].to_string())
                .unwrap_or_default(),
            diff: a
                .origin
                .as_ref()
                .and_then(|o| o.diff.clone())
                .unwrap_or_default(),
        }
    }
}

pub struct IncidentView {
    /// In words: "zigbee2mqtt on piha is not running".
    pub title: String,
    pub id: String,
    /// Its page.
    pub link: String,
    pub kind: String,
    pub node: String,
    pub service: String,
    pub severity: String,
    pub icon: &'static str,
    pub message: String,
    pub opened_at: When,
    pub resolved_at: Option<When>,
    /// "12 min" open.
    pub lasted: String,
    pub count: u64,
    pub maintenance: String,
    /// The row's element id: one per row (a resolved incident carries
    /// its opening time, as the same incident may have closed before).
    pub row: String,
    /// "reported 2 h 5 min after it began": when it reached the observer
    /// long after its event (an edge node's backlog).
    pub late: Option<String>,
}

/// How late an incident reached the observer, in words, when it matters
/// (a minute or more).
pub fn arrival_delay(opened: Timestamp, noticed: Option<Timestamp>) -> Option<String> {
    let secs = (noticed? - opened).num_seconds();
    (secs >= 60).then(|| {
        format!(
            "reported {} after it began: it came in a backlog",
            present::duration(secs as u64)
        )
    })
}

impl IncidentView {
    pub(crate) fn new(
        i: &homelab_core::world::Incident,
        resolved: Option<Timestamp>,
        now: &Timestamp,
    ) -> IncidentView {
        let severity = json_word(&i.severity);
        let end = resolved.unwrap_or(*now);
        IncidentView {
            title: present::incident_title(
                &i.kind,
                i.node.as_str(),
                i.service.as_ref().map_or("", |s| s.as_str()),
            ),
            id: i.id.clone(),
            link: format!("/incidents/{}", present::path_segment(&i.id)),
            kind: i.kind.clone(),
            node: i.node.to_string(),
            service: i
                .service
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            icon: present::icon(&severity),
            severity,
            message: i.message.clone(),
            opened_at: When::new(&i.opened_at, now),
            resolved_at: resolved.map(|r| When::new(&r, now)),
            lasted: present::duration((end - i.opened_at).num_seconds().max(0) as u64),
            count: i.count.unwrap_or(0),
            maintenance: i
                .maintenance
                .as_ref()
                .map(|m| m.window.to_string())
                .unwrap_or_default(),
            row: match resolved {
                None => format!("incident-{}", i.id),
                Some(_) => format!("incident-{}-{}", i.id, i.opened_at.timestamp_millis()),
            },
            late: arrival_delay(i.opened_at, i.noticed_at),
        }
    }
}

pub struct EventView {
    pub ts: When,
    pub node: String,
    pub service: String,
    pub kind: String,
    pub severity: String,
    pub icon: &'static str,
    pub message: String,
}

impl EventView {
    pub(crate) fn new(e: &Event, now: &Timestamp) -> EventView {
        let severity = json_word(&e.severity);
        EventView {
            ts: When::new(&e.ts, now),
            node: e.node.to_string(),
            service: e
                .service
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            kind: e.kind.clone(),
            icon: present::icon(&severity),
            severity,
            message: e.message.clone(),
        }
    }
}
