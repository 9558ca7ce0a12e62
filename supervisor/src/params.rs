//! What an action carries out, fixed when it is proposed: a redeploy's
//! compose files from the repo as it is now (with their SHA-256, so what
//! the operator approves is exactly what runs), a cleanup's services whose
//! containers stay. Read here, once, when the action is created.

use std::path::Path;

use homelab_core::action::ActionParams;
use homelab_core::command::{ComposeBundle, ComposeFile, MAX_COMPOSE_FILE_BYTES};
use homelab_core::desired::Desired;
use homelab_core::{Action, ActionKind, Name};

/// The repo-relative paths of the compose files of `service` on `node`,
/// in the order Compose reads them: `(path, required)`.
pub fn compose_paths(node: &Name, service: &Name) -> [(String, bool); 2] {
    [
        (format!("services/{service}/docker-compose.yml"), true),
        (
            format!("hosts/{node}/runtime/{service}/docker-compose.override.yml"),
            false,
        ),
    ]
}

/// The params of `action`, read from `repo` and `desired`.
pub fn for_action(repo: &Path, desired: &Desired, action: &Action) -> Option<ActionParams> {
    match (action.kind, &action.service) {
        (ActionKind::Redeploy, Some(service)) => {
            Some(match compose_bundle(repo, desired, &action.node, service) {
                Ok(bundle) => ActionParams {
                    compose: Some(bundle),
                    ..Default::default()
                },
                Err(why) => ActionParams {
                    compose_missing: Some(why),
                    ..Default::default()
                },
            })
        }
        (ActionKind::DiskCleanup, _) => Some(ActionParams {
            keep_services: Some(
                desired
                    .hosts
                    .get(&action.node)
                    .map(|services| services.keys().cloned().collect())
                    .unwrap_or_default(),
            ),
            older_than_secs: desired
                .capabilities
                .get(&action.node)
                .and_then(|c| c.disk.as_ref())
                .and_then(|d| d.cleanup_older_than)
                .map(|d| d.as_secs()),
            ..Default::default()
        }),
        _ => None,
    }
}

fn compose_bundle(
    repo: &Path,
    desired: &Desired,
    node: &Name,
    service: &Name,
) -> Result<ComposeBundle, String> {
    let mut files = Vec::new();
    for (path, required) in compose_paths(node, service) {
        let full = repo.join(&path);
        let content = match std::fs::read(&full) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => return Err(format!("{path}: {e}")),
        };
        if content.len() > MAX_COMPOSE_FILE_BYTES {
            return Err(format!(
                "{path} is {} bytes, at most {MAX_COMPOSE_FILE_BYTES} are carried in a command",
                content.len()
            ));
        }
        let content = String::from_utf8(content).map_err(|_| format!("{path} is not UTF-8"))?;
        files.push(ComposeFile::new(path, content));
    }
    Ok(ComposeBundle {
        project: service.clone(),
        compose_version: desired
            .capabilities
            .get(node)
            .and_then(|c| c.docker_compose),
        files,
    })
}

/// The compose bundle the repo has for each service of each node (where
/// the service has compose files that can be carried).
pub fn bundles(
    repo: &Path,
    desired: &Desired,
) -> std::collections::BTreeMap<(Name, Name), ComposeBundle> {
    let mut out = std::collections::BTreeMap::new();
    for (node, services) in &desired.hosts {
        for service in services.keys() {
            if let Ok(bundle) = compose_bundle(repo, desired, node, service) {
                out.insert((node.clone(), service.clone()), bundle);
            }
        }
    }
    out
}

/// The text of the health check script of each monitored service of
/// `node` that has one. A script that cannot be read is left out, with a
/// warning (the loader already checked that it exists).
pub fn healthcheck_scripts(
    repo: &Path,
    desired: &Desired,
    node: &Name,
) -> std::collections::BTreeMap<Name, String> {
    let mut scripts = std::collections::BTreeMap::new();
    for (service, spec) in desired.hosts.get(node).into_iter().flatten() {
        let Some(check) = desired
            .services
            .get(service)
            .and_then(|d| d.healthcheck.as_ref())
        else {
            continue;
        };
        if !spec.monitor {
            continue;
        }
        let path = repo
            .join("services")
            .join(service.as_str())
            .join(&check.script);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() <= homelab_core::nodeconfig::MAX_SCRIPT_BYTES => {
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        scripts.insert(service.clone(), text);
                    }
                    Err(_) => {
                        tracing::warn!(path = %path.display(), "health check script is not UTF-8; not run")
                    }
                }
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "health check script larger than 64 KiB; not run")
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "health check script unreadable; not run")
            }
        }
    }
    scripts
}

#[cfg(test)]
mod tests {
    use super::*;
    use homelab_core::desired::{Capabilities, ComposeVersion};
    use homelab_core::Risk;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn action(kind: ActionKind, service: Option<&str>) -> Action {
        Action::new(
            kind,
            n("piha"),
            service.map(n),
            Risk::Guarded,
            "service_missing",
            "",
            "2026-11-22T10:00:00Z".parse().unwrap(),
        )
    }

    #[test]
    fn params_fixed_at_proposal() {
        let repo = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let full = repo.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        };
        write("services/npm/docker-compose.yml", "services: {npm: {}}\n");
        write(
            "hosts/piha/runtime/npm/docker-compose.override.yml",
            "services: {npm: {ports: [\"81:81\"]}}\n",
        );
        write("services/db/docker-compose.yml", "services: {db: {}}\n");
        let mut desired = Desired::default();
        desired.capabilities.insert(
            n("piha"),
            Capabilities {
                docker_compose: Some(ComposeVersion::V1),
                ..Default::default()
            },
        );
        desired.hosts.insert(
            n("piha"),
            [
                (n("npm"), Default::default()),
                (n("db"), Default::default()),
            ]
            .into_iter()
            .collect(),
        );

        // (kind, service, expected bundle: project, files, version; why missing)
        type Bundle<'a> = Option<(&'a str, usize, Option<ComposeVersion>)>;
        let cases: &[(ActionKind, Option<&str>, Bundle, Option<&str>)] = &[
            // service with an override: both files, in order
            (
                ActionKind::Redeploy,
                Some("npm"),
                Some(("npm", 2, Some(ComposeVersion::V1))),
                None,
            ),
            // no override: the service's file only
            (
                ActionKind::Redeploy,
                Some("db"),
                Some(("db", 1, Some(ComposeVersion::V1))),
                None,
            ),
            // no compose file at all: said why
            (
                ActionKind::Redeploy,
                Some("ghost"),
                None,
                Some("services/ghost/docker-compose.yml"),
            ),
        ];
        for (kind, service, bundle, missing) in cases {
            let params = for_action(repo.path(), &desired, &action(*kind, *service)).unwrap();
            match (bundle, &params.compose) {
                (Some((project, files, version)), Some(got)) => {
                    assert_eq!(got.project.as_str(), *project);
                    assert_eq!(got.files.len(), *files);
                    assert_eq!(got.compose_version, *version);
                    assert!(got.files.iter().all(ComposeFile::intact));
                    assert_eq!(
                        got.files[0].path,
                        format!("services/{project}/docker-compose.yml")
                    );
                }
                (None, None) => {}
                other => panic!("{service:?}: {other:?}"),
            }
            match missing {
                Some(text) => assert!(params.compose_missing.as_deref().unwrap().contains(text)),
                None => assert_eq!(params.compose_missing, None),
            }
        }
        let cleanup = for_action(
            repo.path(),
            &desired,
            &action(ActionKind::DiskCleanup, None),
        )
        .unwrap();
        assert_eq!(cleanup.keep_services, Some(vec![n("db"), n("npm")]));
        assert_eq!(cleanup.older_than_secs, None);
        desired.capabilities.get_mut(&n("piha")).unwrap().disk =
            Some(homelab_core::desired::DiskPolicy {
                cleanup_older_than: Some(std::time::Duration::from_secs(600)),
                ..Default::default()
            });
        let cleanup = for_action(
            repo.path(),
            &desired,
            &action(ActionKind::DiskCleanup, None),
        )
        .unwrap();
        assert_eq!(cleanup.older_than_secs, Some(600));
        assert_eq!(
            for_action(
                repo.path(),
                &desired,
                &action(ActionKind::ContainerRestart, Some("npm"))
            ),
            None
        );
    }
}
