//! Reading a repo: the files [`super::check`] judges, as they are on disk,
//! and nothing decided. The only I/O of loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{problem, Problem};

/// A repo as read: every file the checks look at, before any is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    /// `inventory/topology.yaml` (required: a missing one is a read error).
    pub topology: RawFile,
    /// `inventory/maintenance.yaml`, when there is one.
    pub maintenance: Option<RawFile>,
    /// The folders under `services/`, sorted by name.
    pub services: Vec<RawDir>,
    /// The folders under `hosts/`, sorted by name.
    pub hosts: Vec<RawDir>,
    /// A folder that is there and cannot be listed.
    pub problems: Vec<Problem>,
}

/// One file: where it is (for problems) and its text, or why it could not
/// be read.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFile {
    pub path: PathBuf,
    pub text: Result<String, String>,
}

/// One folder under `services/` or `hosts/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawDir {
    /// Its name as on disk (not yet checked).
    pub name: String,
    pub path: PathBuf,
    /// The YAML files the checks read (`service.yaml`, `services.yaml`,
    /// `capabilities.yaml`) that are there, by file name.
    pub yaml: BTreeMap<String, RawFile>,
    /// Every regular file under it, as a `/`-separated relative path (a
    /// healthcheck script must be one of them).
    pub files: BTreeSet<String>,
}

/// The YAML files a folder may hold.
const FOLDER_YAML: [&str; 3] = ["service.yaml", "services.yaml", "capabilities.yaml"];
/// How deep and how many files of a folder are listed: a repo folder is
/// small; a bigger one is not walked further.
const MAX_DEPTH: usize = 8;
const MAX_FILES: usize = 10_000;

/// Reads the repo at `repo`.
pub fn read(repo: &Path) -> Raw {
    let mut problems = Vec::new();
    let inventory = repo.join("inventory");
    let maintenance = inventory.join("maintenance.yaml");
    Raw {
        topology: read_file(&inventory.join("topology.yaml")),
        maintenance: maintenance.exists().then(|| read_file(&maintenance)),
        services: read_dirs(&repo.join("services"), &mut problems),
        hosts: read_dirs(&repo.join("hosts"), &mut problems),
        problems,
    }
}

fn read_file(path: &Path) -> RawFile {
    RawFile {
        path: path.to_path_buf(),
        text: std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}")),
    }
}

/// The folders under `dir`, sorted; none when it does not exist.
fn read_dirs(dir: &Path, problems: &mut Vec<Problem>) -> Vec<RawDir> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            problems.push(problem(dir, None, format!("cannot read: {e}")));
            return Vec::new();
        }
    };
    let mut dirs: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    dirs.sort_by_key(|e| e.file_name());
    dirs.into_iter()
        .map(|entry| {
            let path = entry.path();
            let yaml = FOLDER_YAML
                .iter()
                .map(|name| path.join(name))
                .filter(|file| file.exists())
                .map(|file| {
                    let name = file.file_name().unwrap_or_default().to_string_lossy();
                    (name.to_string(), read_file(&file))
                })
                .collect();
            let mut files = BTreeSet::new();
            list_files(&path, "", 0, &mut files);
            RawDir {
                name: entry.file_name().to_string_lossy().to_string(),
                path,
                yaml,
                files,
            }
        })
        .collect()
}

/// Adds every regular file under `dir` (a symlink to a file counts; a
/// symlinked folder is not followed).
fn list_files(dir: &Path, prefix: &str, depth: usize, files: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if files.len() >= MAX_FILES {
            return;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        let relative = format!("{prefix}{name}");
        let path = entry.path();
        let real_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if real_dir && depth < MAX_DEPTH {
            list_files(&path, &format!("{relative}/"), depth + 1, files);
        } else if path.is_file() {
            files.insert(relative);
        }
    }
}
