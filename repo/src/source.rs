//! What `--repo` names: a plain folder (read as it is, as always), a local
//! git checkout, or a git URL. Pure but for the check whether a path is a
//! checkout.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder, read as it is.
    Folder(PathBuf),
    /// A git checkout on this host: its branch's commits (never its
    /// working copy) are the desired state, looked at every few seconds.
    Checkout(PathBuf),
    /// A remote: cloned under the runtime root, fetched every poll.
    Url(String),
}

impl Source {
    /// What git clones and fetches from, for the git sources.
    pub fn git_url(&self) -> Option<String> {
        match self {
            Source::Folder(_) => None,
            Source::Checkout(path) => Some(path.display().to_string()),
            Source::Url(url) => Some(url.clone()),
        }
    }

    pub fn is_git(&self) -> bool {
        !matches!(self, Source::Folder(_))
    }
}

/// Whether `raw` is a git URL: `https://`, `http://`, `ssh://`, `git://`,
/// `file://`, or scp's `[user@]host:path`.
pub fn is_url(raw: &str) -> bool {
    if let Some((scheme, _)) = raw.split_once("://") {
        return ["https", "http", "ssh", "git", "file"].contains(&scheme);
    }
    // scp-like: a host (no slash) before the first colon, and something
    // after it; never a path (those start with / or .).
    match raw.split_once(':') {
        Some((host, path)) => {
            !raw.starts_with(['/', '.', '~'])
                && !host.is_empty()
                && !host.contains('/')
                && !path.is_empty()
        }
        None => false,
    }
}

/// What `--repo raw` names.
pub fn parse(raw: &str) -> Source {
    if is_url(raw) {
        return Source::Url(raw.to_string());
    }
    let path = Path::new(raw);
    if path.join(".git").exists() {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        return Source::Checkout(path);
    }
    Source::Folder(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        for (raw, url) in [
            ("https://github.com/me/lab.git", true),
            ("http://127.0.0.1:8080/lab.git", true),
            ("ssh://git@host:2222/lab.git", true),
            ("git://host/lab.git", true),
            ("file:///srv/lab.git", true),
            ("git@github.com:me/lab.git", true),
            ("gitea:me/lab", true),
            ("ftp://host/lab", false),
            (".", false),
            ("./lab", false),
            ("/srv/lab", false),
            ("/srv/a:b", false),
            ("lab", false),
            ("~/lab", false),
            ("dir/with:colon", false),
        ] {
            assert_eq!(is_url(raw), url, "{raw}");
        }
    }

    #[test]
    fn a_checkout_is_told_from_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().display().to_string();
        assert_eq!(parse(&raw), Source::Folder(dir.path().to_path_buf()));
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        assert!(matches!(parse(&raw), Source::Checkout(_)));
        assert_eq!(
            parse("git@github.com:me/lab.git"),
            Source::Url("git@github.com:me/lab.git".into())
        );
    }
}
