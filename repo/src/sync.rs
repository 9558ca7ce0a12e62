//! What a look at the remote means, and what becomes live: pure, the
//! caller passes what git found and the time. The shell (`lib.rs`) does
//! the fetching, materializing and validating.
//!
//! - A fetch that finds the branch where it was: nothing changes.
//! - A head that descends from the last one: a fast-forward.
//! - A head that does not (a force-push): not a failure. The branch's new
//!   head is followed, as Argo CD and Flux follow a branch; the commits of
//!   the old history that are gone are recorded ([`Rewrite`]) for the log
//!   and the page.
//! - A fetch that fails keeps everything as it was; after
//!   [`UNREACHABLE_AFTER`] in a row the remote counts as unreachable (the
//!   observer raises `repo_unreachable`); the next fetch that works ends it.
//! - The commit to make live is the pinned one while a pin lasts, else the
//!   branch's head ([`target`]). It becomes live only once its tree
//!   validated; one that does not is recorded ([`Invalid`], the observer
//!   raises `repo_invalid`) and the last good one stays live until a later
//!   commit validates.

use homelab_core::repo::{Commit, Failing, Invalid, Pin, RepoStatus, Rewrite, UNREACHABLE_AFTER};
use homelab_core::time::Timestamp;

/// How the fetched head relates to the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ancestry {
    /// Nothing was fetched before.
    First,
    Same,
    FastForward,
    /// The branch was rewritten; these commits of the old head's history
    /// are no longer on it.
    Rewritten {
        dropped: Vec<Commit>,
    },
}

/// What one fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    pub head: Commit,
    pub ancestry: Ancestry,
}

/// What the shell logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Moved {
        from: Option<String>,
        to: String,
    },
    Rewritten {
        from: String,
        to: String,
        dropped: usize,
    },
    Failed {
        failures: u32,
        message: String,
        unreachable: bool,
    },
    Reachable {
        after: u32,
    },
    Live {
        sha: String,
        pinned: bool,
    },
    Invalid {
        sha: String,
        problems: usize,
    },
}

/// Records a fetch.
pub fn fetched(status: &mut RepoStatus, look: Result<Look, String>, now: Timestamp) -> Vec<Note> {
    let mut notes = Vec::new();
    match look {
        Err(message) => {
            let failing = status.failing.get_or_insert(Failing {
                since: now,
                failures: 0,
                message: String::new(),
            });
            failing.failures += 1;
            failing.message = message.clone();
            notes.push(Note::Failed {
                failures: failing.failures,
                message,
                unreachable: failing.failures == UNREACHABLE_AFTER,
            });
        }
        Ok(look) => {
            if let Some(failing) = status.failing.take() {
                notes.push(Note::Reachable {
                    after: failing.failures,
                });
            }
            status.fetched_at = Some(now);
            let before = status.head.as_ref().map(|c| c.sha.clone());
            match look.ancestry {
                Ancestry::Same => {}
                Ancestry::First | Ancestry::FastForward => notes.push(Note::Moved {
                    from: before,
                    to: look.head.sha.clone(),
                }),
                Ancestry::Rewritten { dropped } => {
                    let from = before.unwrap_or_default();
                    notes.push(Note::Rewritten {
                        from: from.clone(),
                        to: look.head.sha.clone(),
                        dropped: dropped.len(),
                    });
                    status.rewritten = Some(Rewrite {
                        at: now,
                        from,
                        to: look.head.sha.clone(),
                        dropped,
                    });
                }
            }
            status.head = Some(look.head);
        }
    }
    status.updated = now;
    notes
}

/// The commit that should be live: the pinned one, else the head.
pub fn target(status: &RepoStatus) -> Option<&Commit> {
    status
        .pinned
        .as_ref()
        .map(|p| &p.commit)
        .or(status.head.as_ref())
}

/// Whether `target` still needs to be judged: it is not live, and it is
/// not the commit already found invalid.
pub fn needs_judging(status: &RepoStatus, target: &Commit) -> bool {
    status.live.as_ref().is_none_or(|l| l.sha != target.sha)
        && status
            .invalid
            .as_ref()
            .is_none_or(|i| i.commit.sha != target.sha)
}

/// Records the verdict on `commit`'s tree: live if it has no `problems`.
pub fn judged(
    status: &mut RepoStatus,
    commit: Commit,
    problems: Vec<String>,
    now: Timestamp,
) -> Vec<Note> {
    status.updated = now;
    if problems.is_empty() {
        let pinned = status
            .pinned
            .as_ref()
            .is_some_and(|p| p.commit.sha == commit.sha);
        // A later commit that validates ends an invalid one.
        status.invalid = None;
        let note = Note::Live {
            sha: commit.sha.clone(),
            pinned,
        };
        status.live = Some(commit);
        vec![note]
    } else {
        let note = Note::Invalid {
            sha: commit.sha.clone(),
            problems: problems.len(),
        };
        status.invalid = Some(Invalid { commit, problems });
        vec![note]
    }
}

/// A pin asked for (or none): `None` unpins.
pub fn pin(status: &mut RepoStatus, pin: Option<Pin>) {
    if status.pinned != pin {
        status.pinned = pin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn commit(sha: char) -> Commit {
        Commit {
            sha: sha.to_string().repeat(40),
            subject: format!("commit {sha}"),
            author: "Ann".into(),
            time: at(0),
        }
    }

    fn status() -> RepoStatus {
        RepoStatus {
            source: "file:///srv/lab.git".into(),
            branch: "main".into(),
            live: None,
            head: None,
            pinned: None,
            invalid: None,
            rewritten: None,
            failing: None,
            fetched_at: None,
            updated: at(0),
        }
    }

    fn look(sha: char, ancestry: Ancestry) -> Result<Look, String> {
        Ok(Look {
            head: commit(sha),
            ancestry,
        })
    }

    #[test]
    fn fetches_move_the_head_and_a_rewrite_is_followed_and_said() {
        let mut s = status();
        assert_eq!(
            fetched(&mut s, look('a', Ancestry::First), at(1)),
            vec![Note::Moved {
                from: None,
                to: "a".repeat(40)
            }]
        );
        assert_eq!(fetched(&mut s, look('a', Ancestry::Same), at(2)), vec![]);
        assert_eq!(s.fetched_at, Some(at(2)));
        fetched(&mut s, look('b', Ancestry::FastForward), at(3));
        let notes = fetched(
            &mut s,
            look(
                'c',
                Ancestry::Rewritten {
                    dropped: vec![commit('b')],
                },
            ),
            at(4),
        );
        assert_eq!(
            notes,
            vec![Note::Rewritten {
                from: "b".repeat(40),
                to: "c".repeat(40),
                dropped: 1
            }]
        );
        assert_eq!(s.head, Some(commit('c')));
        let rewrite = s.rewritten.as_ref().unwrap();
        assert_eq!(
            (rewrite.at, rewrite.dropped.clone()),
            (at(4), vec![commit('b')])
        );
    }

    #[test]
    fn failures_count_until_unreachable_and_one_success_ends_them() {
        let mut s = status();
        fetched(&mut s, look('a', Ancestry::First), at(1));
        for i in 1..=4u32 {
            let notes = fetched(
                &mut s,
                Err("Could not resolve host".into()),
                at(1 + i as i64),
            );
            assert_eq!(
                notes,
                vec![Note::Failed {
                    failures: i,
                    message: "Could not resolve host".into(),
                    unreachable: i == UNREACHABLE_AFTER
                }]
            );
            assert_eq!(s.unreachable().is_some(), i >= UNREACHABLE_AFTER, "{i}");
        }
        assert_eq!(s.failing.as_ref().unwrap().since, at(2));
        // What was fetched stays.
        assert_eq!(s.head, Some(commit('a')));
        assert_eq!(
            fetched(&mut s, look('a', Ancestry::Same), at(9)),
            vec![Note::Reachable { after: 4 }]
        );
        assert!(s.failing.is_none());
    }

    #[test]
    fn only_a_commit_that_validates_becomes_live() {
        let mut s = status();
        fetched(&mut s, look('a', Ancestry::First), at(1));
        assert!(needs_judging(&s, target(&s).unwrap()));
        judged(&mut s, commit('a'), vec![], at(1));
        assert_eq!(s.live, Some(commit('a')));
        assert!(!needs_judging(&s, target(&s).unwrap()));
        // A bad commit: the good one stays live, the bad one is recorded
        // and not judged again.
        fetched(&mut s, look('b', Ancestry::FastForward), at(2));
        let problems = vec!["hosts/piha/services.yaml:3: unknown field `monitr`".to_string()];
        assert_eq!(
            judged(&mut s, commit('b'), problems.clone(), at(2)),
            vec![Note::Invalid {
                sha: "b".repeat(40),
                problems: 1
            }]
        );
        assert_eq!(s.live, Some(commit('a')));
        assert_eq!(s.invalid.as_ref().unwrap().problems, problems);
        assert!(!needs_judging(&s, target(&s).unwrap()));
        // The fix.
        fetched(&mut s, look('c', Ancestry::FastForward), at(3));
        assert!(needs_judging(&s, target(&s).unwrap()));
        judged(&mut s, commit('c'), vec![], at(3));
        assert_eq!(
            (s.live.clone(), s.invalid.clone()),
            (Some(commit('c')), None)
        );
    }

    #[test]
    fn a_pin_is_the_target_until_unpinned() {
        let mut s = status();
        fetched(&mut s, look('c', Ancestry::First), at(1));
        judged(&mut s, commit('c'), vec![], at(1));
        let p = Pin {
            commit: commit('a'),
            by: "ann".into(),
            at: at(2),
        };
        pin(&mut s, Some(p));
        assert_eq!(target(&s), Some(&commit('a')));
        assert_eq!(
            judged(&mut s, commit('a'), vec![], at(2)),
            vec![Note::Live {
                sha: "a".repeat(40),
                pinned: true
            }]
        );
        // New commits on the branch do not move a pinned state.
        fetched(&mut s, look('d', Ancestry::FastForward), at(3));
        assert_eq!(target(&s), Some(&commit('a')));
        assert!(!needs_judging(&s, target(&s).unwrap()));
        pin(&mut s, None);
        assert_eq!(target(&s), Some(&commit('d')));
    }
}
