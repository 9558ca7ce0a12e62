//! The action store: `actions/<state>/<id>.json` under the root.
//!
//! The folder is the truth about an action's state. A transition writes the
//! new content (history entry appended) to a hidden file in the target
//! folder, then claims the action with one `rename` without replace from
//! one state folder to the next (of two racing transitions exactly one
//! wins, and the loser is told where the action is now), then renames the
//! new content over it at once. A reader that catches the file between the
//! two renames (or after a crash between them) sees content whose own
//! `state` lags its folder: it reads again briefly, then takes the folder's
//! word.
//!
//! Finished actions are kept: when an id finishes again, the earlier file in
//! that folder first moves to `<state>/archive/<id>.<finished-at>.json`, so
//! `<state>/<id>.json` is always the latest of its id.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::action::{Action, ActionResult, ActionState};
use crate::fsutil;
use crate::layout::Layout;
use crate::name::Name;
use crate::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("no action {0}")]
    NotFound(Name),
    #[error("action {id} is {actual}, not {expected}")]
    WrongState {
        id: Name,
        expected: ActionState,
        actual: ActionState,
    },
    #[error("an action cannot go from {from} to {to}")]
    NotAllowed { from: ActionState, to: ActionState },
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("action {id} is already open ({state})")]
    AlreadyOpen { id: Name, state: ActionState },
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// One requested transition.
#[derive(Debug, Clone)]
pub struct Move<'a> {
    pub from: ActionState,
    pub to: ActionState,
    pub by: &'a str,
    pub why: &'a str,
    pub at: Timestamp,
    pub result: Option<ActionResult>,
}

/// Parsed action files kept between listings, for a reader that lists
/// often (the supervisor, every pass): a file is parsed again only when it
/// changed (another inode, size or modification time; every write of an
/// action is a rename of a new file), so listing thousands of actions costs
/// a directory read and a `stat` each.
#[derive(Debug, Default)]
pub struct ListCache {
    dirs: HashMap<ActionState, HashMap<PathBuf, (fsutil::FileId, Action)>>,
}

#[derive(Debug, Clone)]
pub struct ActionStore {
    layout: Layout,
}

impl ActionStore {
    pub fn new(layout: Layout) -> ActionStore {
        ActionStore { layout }
    }

    /// Every action in `state`, sorted by id. Fails on the first file that
    /// does not parse, naming it, so a caller can skip its cycle.
    pub fn list(&self, state: ActionState) -> Result<Vec<Action>> {
        self.list_with(state, &mut ListCache::default())
    }

    /// [`ActionStore::list`], parsing only files that changed since `cache`
    /// last saw them.
    pub fn list_with(&self, state: ActionState, cache: &mut ListCache) -> Result<Vec<Action>> {
        let dir = self.layout.actions_dir(state);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        let known = cache.dirs.remove(&state).unwrap_or_default();
        let mut seen = HashMap::new();
        let mut actions = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("read {}", dir.display()))?
                .path();
            let is_json = path.extension().is_some_and(|e| e == "json");
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_json || hidden {
                continue;
            }
            // Gone between readdir and stat or read: moved by someone else.
            let id = match fs::metadata(&path) {
                Ok(meta) => fsutil::FileId::of(&meta),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
            };
            let action = match known.get(&path) {
                Some((known_id, action)) if *known_id == id => action.clone(),
                _ => match read_action(&path, state) {
                    Ok(action) => action,
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(e),
                },
            };
            seen.insert(path, (id, action.clone()));
            actions.push(action);
        }
        cache.dirs.insert(state, seen);
        actions.sort_by(|a, b| a.id.cmp(&b.id).then(a.updated_at.cmp(&b.updated_at)));
        Ok(actions)
    }

    /// All finished actions, through `cache`.
    pub fn finished_with(&self, cache: &mut ListCache) -> Result<Vec<Action>> {
        let mut all = Vec::new();
        for state in ActionState::ALL.into_iter().filter(|s| !s.is_open()) {
            all.extend(self.list_with(state, cache)?);
        }
        Ok(all)
    }

    /// All open actions, through `cache`.
    pub fn open_with(&self, cache: &mut ListCache) -> Result<Vec<Action>> {
        let mut all = Vec::new();
        for state in ActionState::OPEN {
            all.extend(self.list_with(state, cache)?);
        }
        Ok(all)
    }

    /// The latest finished action of every id (completed, failed, rejected,
    /// cancelled).
    pub fn finished(&self) -> Result<Vec<Action>> {
        let mut all = Vec::new();
        for state in ActionState::ALL.into_iter().filter(|s| !s.is_open()) {
            all.extend(self.list(state)?);
        }
        Ok(all)
    }

    /// All open actions (pending, approved, running).
    pub fn open(&self) -> Result<Vec<Action>> {
        let mut all = Vec::new();
        for state in ActionState::OPEN {
            all.extend(self.list(state)?);
        }
        Ok(all)
    }

    /// The current action with this id: the open one if any, else the
    /// newest finished one.
    pub fn find(&self, id: &Name) -> Result<Option<Action>> {
        let mut newest: Option<Action> = None;
        for state in ActionState::ALL {
            let path = self.layout.action_file(state, id);
            match read_action(&path, state) {
                Ok(action) if state.is_open() => return Ok(Some(action)),
                Ok(action) => {
                    if newest
                        .as_ref()
                        .is_none_or(|n| n.updated_at < action.updated_at)
                    {
                        newest = Some(action);
                    }
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(newest)
    }

    /// Writes a new action into its state folder (normally `pending`). Refuses
    /// an id that is already open.
    pub fn create(&self, action: &Action) -> Result<(), CreateError> {
        for state in ActionState::OPEN {
            if self.layout.action_file(state, &action.id).exists() {
                return Err(CreateError::AlreadyOpen {
                    id: action.id.clone(),
                    state,
                });
            }
        }
        let path = self.layout.action_file(action.state, &action.id);
        let dir = self.layout.actions_dir(action.state);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let tmp = dir.join(format!(".{}.json.{}.new", action.id, std::process::id()));
        let mut bytes = serde_json::to_vec_pretty(action).context("serialize action")?;
        bytes.push(b'\n');
        fsutil::write_synced(&tmp, &bytes)?;
        match fsutil::rename_noreplace(&tmp, &path) {
            Ok(()) => Ok(fsutil::sync_dir(&dir)?),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                if e.kind() == ErrorKind::AlreadyExists {
                    Err(CreateError::AlreadyOpen {
                        id: action.id.clone(),
                        state: action.state,
                    })
                } else {
                    Err(CreateError::Io(
                        anyhow::Error::new(e).context(format!("create {}", path.display())),
                    ))
                }
            }
        }
    }

    /// Moves an action from one state to the next, appends the history entry
    /// and returns the action as now written.
    pub fn transition(&self, id: &Name, mv: Move<'_>) -> Result<Action, TransitionError> {
        if !mv.from.can_move_to(mv.to) {
            return Err(TransitionError::NotAllowed {
                from: mv.from,
                to: mv.to,
            });
        }
        let from = self.layout.action_file(mv.from, id);
        let to = self.layout.action_file(mv.to, id);
        let target = self.layout.actions_dir(mv.to);
        fs::create_dir_all(&target).context("create action folder")?;
        let mut action = match read_action(&from, mv.from) {
            Ok(action) => action,
            Err(e) if is_not_found(&e) => return Err(self.lost(id, mv.from)),
            Err(e) => return Err(e.into()),
        };
        action.record(mv.to, mv.by, mv.why, mv.at);
        if mv.result.is_some() {
            action.result = mv.result;
        }
        let mut bytes = serde_json::to_vec_pretty(&action).context("serialize action")?;
        bytes.push(b'\n');
        let next = target.join(format!(".{id}.json.{}.next", std::process::id()));
        fsutil::write_synced(&next, &bytes)?;
        if !mv.to.is_open() {
            self.archive_finished(&to)?;
        }
        if let Err(e) = fsutil::rename_noreplace(&from, &to) {
            let _ = fs::remove_file(&next);
            if e.kind() == ErrorKind::NotFound {
                return Err(self.lost(id, mv.from));
            }
            return Err(anyhow::Error::new(e)
                .context(format!("move {} to {}", from.display(), to.display()))
                .into());
        }
        fs::rename(&next, &to).with_context(|| format!("write {}", to.display()))?;
        fsutil::sync_dir(&target)?;
        if let Some(dir) = from.parent() {
            fsutil::sync_dir(dir)?;
        }
        Ok(action)
    }

    /// The answer for the loser of a race: where the action is now.
    fn lost(&self, id: &Name, expected: ActionState) -> TransitionError {
        match self.find(id) {
            Ok(Some(now)) if now.state != expected => TransitionError::WrongState {
                id: id.clone(),
                expected,
                actual: now.state,
            },
            Ok(_) => TransitionError::NotFound(id.clone()),
            Err(e) => TransitionError::Io(e),
        }
    }

    fn archive_finished(&self, path: &Path) -> Result<()> {
        let old = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let stamp = serde_json::from_slice::<Action>(&old)
            .map(|a| a.updated_at.format("%Y%m%dT%H%M%S%3fZ").to_string())
            .unwrap_or_else(|_| "unreadable".into());
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let archive = path
            .parent()
            .context("action file has a folder")?
            .join("archive");
        fs::create_dir_all(&archive).with_context(|| format!("create {}", archive.display()))?;
        let mut archived = archive.join(format!("{stem}.{stamp}.json"));
        let mut n = 1;
        while archived.exists() {
            archived = archive.join(format!("{stem}.{stamp}-{n}.json"));
            n += 1;
        }
        fsutil::rename_noreplace(path, &archived)
            .with_context(|| format!("archive {}", path.display()))?;
        fsutil::sync_dir(&archive)
    }

    /// Overwrites the file of an open action in place (same state), for
    /// bookkeeping such as the command sent for a running action.
    pub fn update(&self, action: &Action) -> Result<()> {
        fsutil::write_json_atomic(&self.layout.action_file(action.state, &action.id), action)
    }

    pub fn path(&self, state: ActionState, id: &Name) -> PathBuf {
        self.layout.action_file(state, id)
    }
}

fn read_action(path: &Path, state: ActionState) -> Result<Action> {
    // Content whose own state lags its folder is a transition in flight
    // (or one a crash cut short): read again briefly, then trust the folder.
    let mut tries = 0;
    loop {
        let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let mut action: Action = serde_json::from_slice(&bytes)
            .with_context(|| format!("parse action {}", path.display()))?;
        if action.state != state && tries < 3 {
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        }
        action.state = state;
        return Ok(action);
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{ActionKind, Risk};

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn store() -> (tempfile::TempDir, ActionStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ActionStore::new(Layout::new(dir.path()));
        (dir, store)
    }

    fn action() -> Action {
        Action::new(
            ActionKind::ContainerRestart,
            n("piha"),
            Some(n("mosquitto")),
            Risk::Low,
            "containers_not_running",
            "exited",
            chrono::Utc::now(),
        )
    }

    fn mv(from: ActionState, to: ActionState) -> Move<'static> {
        Move {
            from,
            to,
            by: "test",
            why: "because",
            at: chrono::Utc::now(),
            result: None,
        }
    }

    #[test]
    fn one_open_action_per_id() {
        let (_d, store) = store();
        store.create(&action()).unwrap();
        assert!(matches!(
            store.create(&action()),
            Err(CreateError::AlreadyOpen { .. })
        ));
        store
            .transition(
                &action().id,
                mv(ActionState::Pending, ActionState::Approved),
            )
            .unwrap();
        assert!(matches!(
            store.create(&action()),
            Err(CreateError::AlreadyOpen {
                state: ActionState::Approved,
                ..
            })
        ));
    }

    #[test]
    fn race_loser_is_told_where_the_action_is() {
        let (_d, store) = store();
        store.create(&action()).unwrap();
        let id = action().id;
        let won = store
            .transition(&id, mv(ActionState::Pending, ActionState::Cancelled))
            .unwrap();
        assert_eq!(won.state, ActionState::Cancelled);
        assert_eq!(won.history.len(), 2);
        let lost = store
            .transition(&id, mv(ActionState::Pending, ActionState::Approved))
            .unwrap_err();
        assert!(
            matches!(
                lost,
                TransitionError::WrongState {
                    actual: ActionState::Cancelled,
                    ..
                }
            ),
            "{lost}"
        );
        assert!(!store.path(ActionState::Approved, &id).exists());
    }

    #[test]
    fn finished_actions_are_kept() {
        let (_d, store) = store();
        let id = action().id;
        for _ in 0..2 {
            store.create(&action()).unwrap();
            store
                .transition(&id, mv(ActionState::Pending, ActionState::Rejected))
                .unwrap();
        }
        assert_eq!(store.list(ActionState::Rejected).unwrap().len(), 1);
        let archived = fs::read_dir(
            store
                .path(ActionState::Rejected, &id)
                .parent()
                .unwrap()
                .join("archive"),
        )
        .unwrap()
        .count();
        assert_eq!(archived, 1);
        assert!(store.open().unwrap().is_empty());
    }

    #[test]
    fn folder_is_the_truth_and_bad_files_are_named() {
        let (dir, store) = store();
        store.create(&action()).unwrap();
        let id = action().id;
        // A crash between rename and rewrite leaves a stale state field.
        fs::create_dir_all(dir.path().join("actions/approved")).unwrap();
        fs::rename(
            store.path(ActionState::Pending, &id),
            store.path(ActionState::Approved, &id),
        )
        .unwrap();
        assert_eq!(
            store.find(&id).unwrap().unwrap().state,
            ActionState::Approved
        );
        fs::write(dir.path().join("actions/approved/broken.json"), "{").unwrap();
        let err = store.list(ActionState::Approved).unwrap_err();
        assert!(format!("{err:#}").contains("broken.json"), "{err:#}");
    }
}
