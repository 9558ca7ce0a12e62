//! The runtime root's format version: `format.json` at the root,
//! `{"v": N, "written_by": "homelab 0.1.0"}`. A binary reads a root of its
//! own format or an older one (upgrading it where a format changed), and
//! refuses a root from a newer one rather than rewrite what it does not
//! know. A root without the file is from the release before format
//! versions (format 0, laid out as format 1) or new.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// The format this build writes.
pub const CURRENT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    pub v: u32,
    pub written_by: String,
}

/// What opening a root found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Empty: stamped with [`CURRENT`].
    New,
    /// Of this format.
    Current,
    /// Of an older format `from`, upgraded to [`CURRENT`].
    Upgraded { from: u32 },
}

/// The verdict on a root whose stamp says `found` (None: no stamp) and
/// which holds data or not. Pure.
pub fn verdict(found: Option<&Format>, has_data: bool) -> Result<Opened, String> {
    match found {
        None if has_data => Ok(Opened::Upgraded { from: 0 }),
        None => Ok(Opened::New),
        Some(f) if f.v == CURRENT => Ok(Opened::Current),
        Some(f) if f.v < CURRENT => Ok(Opened::Upgraded { from: f.v }),
        Some(f) => Err(format!(
            "format {} (written by {}), newer than this binary's format {CURRENT}: upgrade homelab to at least that release, or restore a backup this version wrote; the root is left as it is",
            f.v, f.written_by
        )),
    }
}

/// Checks the root's format and stamps it with [`CURRENT`] (written by
/// `binary`, e.g. "homelab 0.1.0"), or says why it cannot be used.
pub fn open(layout: &Layout, binary: &str) -> Result<Opened> {
    let path = layout.format_file();
    let found: Option<Format> = match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} does not parse; it says which format the root is in",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let has_data = ["events", "actions", "world", "state"]
        .iter()
        .any(|d| layout.root().join(d).exists());
    let opened = match verdict(found.as_ref(), has_data) {
        Ok(opened) => opened,
        Err(why) => bail!("the runtime root {} is in {why}", layout.root().display()),
    };
    if opened != Opened::Current {
        // Formats 0 and 1 lay out the same files: nothing to migrate yet.
        std::fs::create_dir_all(layout.root())
            .with_context(|| format!("create {}", layout.root().display()))?;
        let stamp = Format {
            v: CURRENT,
            written_by: binary.to_string(),
        };
        crate::fsutil::write_json_atomic(&path, &stamp)?;
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_roots_are_read_and_newer_ones_refused() {
        let f = |v: u32| Format {
            v,
            written_by: format!("homelab {v}"),
        };
        assert_eq!(verdict(None, false), Ok(Opened::New));
        assert_eq!(verdict(None, true), Ok(Opened::Upgraded { from: 0 }));
        assert_eq!(verdict(Some(&f(CURRENT)), true), Ok(Opened::Current));
        assert_eq!(verdict(Some(&f(0)), true), Ok(Opened::Upgraded { from: 0 }));
        let newer = verdict(Some(&f(CURRENT + 1)), true).unwrap_err();
        assert!(newer.contains("newer than this binary's format"), "{newer}");
        assert!(
            newer.contains(&format!("homelab {}", CURRENT + 1)),
            "{newer}"
        );
    }

    #[test]
    fn a_root_is_stamped_and_a_newer_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("root"));
        assert_eq!(open(&layout, "homelab test").unwrap(), Opened::New);
        assert_eq!(open(&layout, "homelab test").unwrap(), Opened::Current);
        let newer = br#"{"v":99,"written_by":"homelab 9.0.0"}"#;
        std::fs::write(layout.format_file(), newer).unwrap();
        let error = format!("{:#}", open(&layout, "homelab test").unwrap_err());
        assert!(
            error.contains("format 99 (written by homelab 9.0.0)"),
            "{error}"
        );
        assert_eq!(std::fs::read(layout.format_file()).unwrap(), newer);
    }
}
