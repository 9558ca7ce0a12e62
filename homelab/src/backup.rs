//! `homelab backup` and `homelab restore`: the runtime root's state in one
//! file (tar, zstd-compressed), taken while the system runs, and brought
//! back on a fresh host.
//!
//! Consistent without stopping anything, from how each file is written:
//! JSON files are replaced atomically (one open reads one version); the
//! event log and the audit trail are only appended to (read up to their
//! last whole line); an action's state is its folder and moves by rename,
//! so the action folders are listed until two listings agree. Checkpoints
//! and world files go in before the event log, so the log in the archive
//! is at least what they counted (a restored observer replays the rest).
//! Not in a backup: the local agent's outbox and spool (`state/agent/`:
//! events not yet delivered stay with the original) and the git mirror
//! (`state/repo/`: fetched again). `--no-secrets` leaves out `config/`
//! (the operator token, operators, TLS keys, node logins, notify.yaml).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use homelab_core::Layout;
use serde::{Deserialize, Serialize};

/// The archive's first entry.
pub const MANIFEST: &str = "homelab-backup.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u32,
    /// The root's format ([`homelab_core::format::CURRENT`] when written).
    pub format: u32,
    pub written_by: String,
    pub at: String,
    pub secrets: bool,
    pub files: usize,
    pub bytes: u64,
}

/// What a backup takes, in order: checkpoints and derived state first,
/// then actions, then the append-only logs. Paths relative to the root.
fn phase(rel: &Path) -> Option<u8> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let second = rel.components().nth(1).and_then(|c| c.as_os_str().to_str());
    match (first, second) {
        ("state", Some("agent" | "repo")) => None,
        ("format.json", None) => Some(0),
        ("config", _) => Some(0),
        ("state" | "world", _) => Some(1),
        ("actions", _) => Some(2),
        ("events" | "audit", _) => Some(3),
        _ => None,
    }
}

/// Whether a file is append-only (cut at its last whole line).
fn appended(rel: &Path) -> bool {
    rel.extension().is_some_and(|e| e == "jsonl")
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        let rel = path
            .strip_prefix(root)
            .expect("under the root")
            .to_path_buf();
        if kind.is_dir() {
            if rel.components().count() >= 2 && phase(&rel).is_none() {
                continue;
            }
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Temporary files of an atomic write in progress.
            if name.starts_with('.') || name.contains(".tmp") {
                continue;
            }
            if phase(&rel).is_some() {
                out.push(rel);
            }
        }
    }
    Ok(())
}

/// The file's bytes as a backup keeps them: an append-only log up to its
/// last whole line. None: it went away meanwhile (an action moved on).
fn read_kept(path: &Path, rel: &Path) -> Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut file) => file
            .read_to_end(&mut bytes)
            .with_context(|| format!("read {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    if appended(rel) {
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(whole);
    }
    Ok(Some(bytes))
}

fn listing(root: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    walk(root, &root.join("actions"), &mut files)?;
    Ok(files.into_iter().collect())
}

/// Writes the backup of `layout`'s root to `out`; the manifest.
pub fn backup(layout: &Layout, out: &Path, secrets: bool) -> Result<Manifest> {
    let root = layout.root();
    anyhow::ensure!(
        root.join("events").exists() || root.join("actions").exists(),
        "{} holds no events and no actions: is it the runtime root (--root, HOMELAB_ROOT)?",
        root.display()
    );
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.retain(|rel| secrets || !rel.starts_with("config"));
    files.sort();
    let mut kept: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let read_phase = |kept: &mut Vec<(PathBuf, Vec<u8>)>, wanted: u8| -> Result<()> {
        for rel in files.iter().filter(|rel| phase(rel) == Some(wanted)) {
            if let Some(bytes) = read_kept(&root.join(rel), rel)? {
                kept.push((rel.clone(), bytes));
            }
        }
        Ok(())
    };
    read_phase(&mut kept, 0)?;
    read_phase(&mut kept, 1)?;
    kept.extend(read_actions(root)?);
    read_phase(&mut kept, 3)?;
    let manifest = Manifest {
        v: 1,
        format: homelab_core::format::CURRENT,
        written_by: concat!("homelab ", env!("CARGO_PKG_VERSION")).into(),
        at: homelab_core::time::format(&chrono::Utc::now()),
        secrets,
        files: kept.len(),
        bytes: kept.iter().map(|(_, b)| b.len() as u64).sum(),
    };
    let tmp = out.with_extension("partial");
    {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        let encoder = zstd::Encoder::new(file, 3)?;
        let mut archive = tar::Builder::new(encoder);
        let mut add = |name: &Path, bytes: &[u8], mode: u32| -> Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(mode);
            header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
            header.set_cksum();
            archive.append_data(&mut header, name, bytes)?;
            Ok(())
        };
        add(
            Path::new(MANIFEST),
            &serde_json::to_vec_pretty(&manifest)?,
            0o600,
        )?;
        for (rel, bytes) in &kept {
            let mode = if rel.starts_with("config") {
                0o600
            } else {
                0o644
            };
            add(rel, bytes, mode)?;
        }
        let encoder = archive.into_inner()?;
        let mut file = encoder.finish()?;
        file.flush()?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))?;
    Ok(manifest)
}

/// The action files, listed until two listings agree (an action that moves
/// meanwhile is read where it is, once).
fn read_actions(root: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    for _ in 0..10 {
        let before = listing(root)?;
        let mut read = Vec::new();
        let mut gone = false;
        for rel in &before {
            match read_kept(&root.join(rel), rel)? {
                Some(bytes) => read.push((rel.clone(), bytes)),
                None => gone = true,
            }
        }
        if !gone && listing(root)? == before {
            return Ok(read);
        }
    }
    bail!("the actions kept changing while they were read: try again")
}

/// Restores `archive` into `layout`'s root, which must hold no data.
pub fn restore(layout: &Layout, archive: &Path) -> Result<Manifest> {
    let root = layout.root();
    for d in ["events", "actions", "world", "state", "config", "audit"] {
        if root.join(d).exists() {
            bail!(
                "{} already holds {d}/: restore into an empty root (move it away first, or --root another folder)",
                root.display()
            );
        }
    }
    let open =
        || -> Result<tar::Archive<zstd::Decoder<'static, std::io::BufReader<std::fs::File>>>> {
            let file = std::fs::File::open(archive)
                .with_context(|| format!("open {}", archive.display()))?;
            Ok(tar::Archive::new(
                zstd::Decoder::new(file).context("not a zstd archive")?,
            ))
        };
    // The manifest first: what it is, and whether this binary reads it.
    let mut first = open()?;
    let mut entries = first.entries().context("not a homelab backup")?;
    let manifest: Manifest = {
        let mut entry = entries.next().context("an empty archive")??;
        anyhow::ensure!(
            entry.path()?.as_ref() == Path::new(MANIFEST),
            "not a homelab backup: it does not begin with {MANIFEST}"
        );
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        serde_json::from_str(&text).context("the backup's manifest does not parse")?
    };
    if manifest.format > homelab_core::format::CURRENT {
        bail!(
            "the backup is of format {} ({}), newer than this binary's {}: restore it with that release or newer",
            manifest.format,
            manifest.written_by,
            homelab_core::format::CURRENT
        );
    }
    std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    let mut files = 0;
    for entry in open()?.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path == Path::new(MANIFEST) {
            continue;
        }
        if phase(&path).is_none()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "the backup holds {}, which is not a file of a runtime root",
                path.display()
            );
        }
        let target = root.join(&path);
        let dir = target.parent().expect("a file has a folder");
        create_dir(dir, path.starts_with("config"))?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        if path.starts_with("config") {
            homelab_core::fsutil::write_secret(&target, &bytes)?;
        } else {
            homelab_core::fsutil::write_synced(&target, &bytes)?;
        }
        files += 1;
    }
    anyhow::ensure!(
        files == manifest.files,
        "the backup holds {files} files, its manifest says {}: it is cut short",
        manifest.files
    );
    Ok(manifest)
}

fn create_dir(dir: &Path, secret: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    if secret {
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_backup_takes_and_in_which_order() {
        for (path, want) in [
            ("format.json", Some(0)),
            ("config/ui/token", Some(0)),
            ("world/nodes.json", Some(1)),
            ("state/observer/checkpoint.json", Some(1)),
            ("state/agent/n1/outbox.redb", None),
            ("state/repo/mirror.git/HEAD", None),
            ("actions/pending/x.json", Some(2)),
            ("events/2026-12-07/n1/events.jsonl", Some(3)),
            ("audit/2026-12-07.jsonl", Some(3)),
            ("other/file", None),
        ] {
            assert_eq!(phase(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn a_torn_last_line_stays_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        let kept = read_kept(&path, Path::new("events/d/n/events.jsonl"))
            .unwrap()
            .unwrap();
        assert_eq!(kept, b"{\"a\":1}\n{\"b\":2}\n");
        let json = dir.path().join("x.json");
        std::fs::write(&json, b"{\"c\"").unwrap();
        assert_eq!(
            read_kept(&json, Path::new("world/x.json"))
                .unwrap()
                .unwrap(),
            b"{\"c\""
        );
    }
}
