//! Durable file helpers. Every JSON file under the root is written with
//! write → fsync → rename → fsync(dir), so a reader sees the old file or the
//! new one, never half of one, and a crash after return loses nothing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Which version of a file this is, as far as a reader that caches what
/// it parsed needs to know: inode, size and modification time. Every file
/// written here is a new inode (rename), so a rewrite always changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// A JSON file, parsed only when it changed (its [`FileId`]): the
/// supervisor's and the UI's view of the observer's world files.
#[derive(Debug, Default)]
pub struct Watched {
    version: Option<FileId>,
}

impl Watched {
    /// The file's content (the default if there is no file) if it changed
    /// since the last call; `None` if it did not.
    pub fn changed<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        path: &Path,
    ) -> Result<Option<T>> {
        let version = match fs::metadata(path) {
            Ok(meta) => Some(FileId::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        };
        if version.is_some() && version == self.version {
            return Ok(None);
        }
        self.version = None;
        let value = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parse {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        self.version = version;
        Ok(Some(value))
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_in(path, bytes)?;
    sync_dir(path.parent().context("path has no parent directory")?)
}

/// [`write_atomic`] for a secret: the file is created with mode 0600 (and
/// its directory 0700 when created here), so it is never readable by
/// others, not even for a moment.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().context("path has no parent directory")?;
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir)
}

/// Several files of one directory, each written → fsynced → renamed, then
/// the directory fsynced once for all of them.
pub fn write_atomic_all(dir: &Path, files: &[(&Path, &[u8])]) -> Result<()> {
    for (path, bytes) in files {
        anyhow::ensure!(
            path.parent() == Some(dir),
            "{} is not in {}",
            path.display(),
            dir.display()
        );
        write_atomic_in(path, bytes)?;
    }
    if files.is_empty() {
        return Ok(());
    }
    sync_dir(dir)
}

/// write → fsync → rename, without the directory's fsync.
fn write_atomic_in(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with(path, bytes, true)
}

/// Replaces `path` whole (write, rename), without fsync: for reports that
/// are rewritten all the time and need no durability (a reader sees the
/// old or the new text, never a mix; after a crash, an older one).
pub fn replace_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    replace_with(path, &json_bytes(value)?, false)
}

fn replace_with(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        if sync {
            file.sync_all()
                .with_context(|| format!("fsync {}", tmp.display()))?;
        }
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &json_bytes(value)?)
}

/// The JSON text these helpers write: pretty, with a final newline.
pub fn json_bytes<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).context("serialize json")?;
    bytes.push(b'\n');
    Ok(bytes)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// Renames `from` to `to` only if `to` does not exist (Linux
/// `renameat2(RENAME_NOREPLACE)`). The rename is the atomic claim: of two
/// racing transitions of one file, exactly one wins; the loser gets
/// `NotFound` (source gone) or `AlreadyExists`. The caller syncs the
/// directories ([`sync_dir`]) once it has done what belongs with the claim.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (src, dst) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `bytes` to `path` and fsyncs the file (not its directory).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync {}", path.display()))
}

/// Appends `bytes` to `path` (created if missing) without syncing; the caller
/// syncs once per batch.
pub fn open_append(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {} for append", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b.json")]);
    }

    #[test]
    fn rename_noreplace_has_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        fs::write(&a, "x").unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(
            rename_noreplace(&a, &c).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        fs::write(&a, "y").unwrap();
        assert_eq!(
            rename_noreplace(&a, &b).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read_to_string(&b).unwrap(), "x");
    }
}
