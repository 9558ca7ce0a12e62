//! From one Docker sync to the next: which events a change of containers
//! means. Pure; the agent loop feeds it and emits what it returns.

use std::collections::BTreeMap;

use homelab_core::event::kinds;
use homelab_core::world::{Container, ServiceStatus};
use homelab_core::{Name, Severity};

/// Per service, its status and a human line about it.
pub type Services = BTreeMap<Name, (ServiceStatus, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: &'static str,
    pub service: Name,
    pub severity: Severity,
    pub message: String,
}

/// Groups containers by service; a service is as bad as its worst container.
pub fn services(containers: &[Container]) -> Services {
    let mut out: Services = BTreeMap::new();
    for container in containers {
        let status = container.service_status();
        let line = format!("{}: {}", container.name, container.status);
        out.entry(container.service.clone())
            .and_modify(|(worst, message)| {
                if status.rank() > worst.rank() {
                    *worst = status;
                    *message = line.clone();
                }
            })
            .or_insert((status, line));
    }
    out
}

/// The events that lead from `before` (None: the first sync since start) to
/// `now`. A service that vanished is visible in the snapshot; it makes no
/// event here.
pub fn diff(before: Option<&Services>, now: &Services) -> Vec<Change> {
    let mut changes = Vec::new();
    for (service, (status, message)) in now {
        let previous = before.and_then(|b| b.get(service)).map(|(s, _)| *s);
        let change = |kind, severity| Change {
            kind,
            service: service.clone(),
            severity,
            message: message.clone(),
        };
        match (previous, status) {
            (Some(p), s) if p == *s => {}
            (_, ServiceStatus::NotRunning) => {
                changes.push(change(kinds::CONTAINERS_NOT_RUNNING, Severity::Warning))
            }
            (_, ServiceStatus::Unhealthy) => {
                changes.push(change(kinds::SERVICE_UNHEALTHY, Severity::Warning))
            }
            (Some(ServiceStatus::NotRunning | ServiceStatus::Unhealthy), _) => {
                changes.push(change(kinds::SERVICE_RECOVERED, Severity::Info))
            }
            (_, ServiceStatus::Healthy) if previous.is_some() => {
                changes.push(change(kinds::SERVICE_HEALTHY, Severity::Info))
            }
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(service: &str, state: &str, health: Option<&str>) -> Container {
        Container {
            id: format!("id-{service}-{state}"),
            name: format!("{service}-1"),
            service: Name::parse(service).unwrap(),
            image: "img".into(),
            state: state.into(),
            status: state.into(),
            health: health.map(str::to_string),
            restart_count: None,
            exit_code: None,
        }
    }

    fn check(before: Option<Vec<Container>>, now: Vec<Container>, expected: &[(&str, &str)]) {
        let before = before.as_deref().map(services);
        let got: Vec<(String, String)> = diff(before.as_ref(), &services(&now))
            .into_iter()
            .map(|c| (c.kind.to_string(), c.service.to_string()))
            .collect();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn changes_between_syncs() {
        let up = c("mosquitto", "running", None);
        let down = c("mosquitto", "exited", None);
        check(None, vec![up.clone()], &[]);
        check(
            None,
            vec![down.clone()],
            &[("containers_not_running", "mosquitto")],
        );
        check(Some(vec![up.clone()]), vec![up.clone()], &[]);
        check(
            Some(vec![up.clone()]),
            vec![down.clone()],
            &[("containers_not_running", "mosquitto")],
        );
        check(
            Some(vec![down.clone()]),
            vec![up.clone()],
            &[("service_recovered", "mosquitto")],
        );
        check(Some(vec![up.clone()]), vec![], &[]);
        check(
            Some(vec![up.clone()]),
            vec![c("mosquitto", "running", Some("unhealthy"))],
            &[("service_unhealthy", "mosquitto")],
        );
        check(
            Some(vec![c("mosquitto", "running", Some("unhealthy"))]),
            vec![c("mosquitto", "running", Some("healthy"))],
            &[("service_recovered", "mosquitto")],
        );
        check(
            Some(vec![up.clone()]),
            vec![c("mosquitto", "running", Some("healthy"))],
            &[("service_healthy", "mosquitto")],
        );
        // One bad container of two makes the service bad.
        check(
            Some(vec![up.clone()]),
            vec![up.clone(), c("mosquitto", "dead", None)],
            &[("containers_not_running", "mosquitto")],
        );
    }
}
