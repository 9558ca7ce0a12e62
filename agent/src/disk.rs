//! Disk pressure: usage of the filesystems that matter (the root, Docker's
//! data root, mounts named with `--disk-mount`), judged with a high and a
//! low threshold so that usage hovering at one line does not flap.
//! [`Tracker`] is pure (tested on its own); [`usage`] asks the kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// When a filesystem is under pressure, and when it is relieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Used percentage at or above which pressure is `high`.
    pub high_pct: f64,
    /// Used percentage at or below which `high` pressure is over (`low`).
    pub low_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            high_pct: 90.0,
            low_pct: 80.0,
        }
    }
}

impl Thresholds {
    /// Both in 0..=100, low below high.
    pub fn new(high_pct: f64, low_pct: f64) -> Result<Thresholds, String> {
        let valid = |p: f64| (0.0..=100.0).contains(&p);
        if !valid(high_pct) || !valid(low_pct) || low_pct >= high_pct {
            return Err(format!(
                "disk thresholds must be percentages with low < high (got high {high_pct}, low {low_pct})"
            ));
        }
        Ok(Thresholds { high_pct, low_pct })
    }
}

/// One filesystem's usage, as statvfs says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub total_bytes: u64,
    /// What an unprivileged user can still write.
    pub free_bytes: u64,
}

impl Usage {
    /// Used share as `df` shows it: used / (used + available).
    pub fn used_pct(&self, used_bytes: u64) -> f64 {
        let denominator = used_bytes + self.free_bytes;
        if denominator == 0 {
            return 0.0;
        }
        used_bytes as f64 * 100.0 / denominator as f64
    }
}

/// A change of pressure on one mount: what the agent reports as
/// `disk_pressure`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub mount: PathBuf,
    /// `high` or `low`.
    pub level: &'static str,
    pub used_pct: f64,
    pub free_bytes: u64,
}

/// Which mounts are under pressure now.
#[derive(Debug, Default)]
pub struct Tracker {
    high: BTreeMap<PathBuf, bool>,
}

impl Tracker {
    /// Takes one sample of a mount (`used_pct`, `free_bytes`); a change if
    /// it crossed a line: at or above `high_pct` when it was not high, at or
    /// below `low_pct` when it was. A mount first seen below high says
    /// nothing.
    pub fn sample(
        &mut self,
        mount: &Path,
        used_pct: f64,
        free_bytes: u64,
        thresholds: &Thresholds,
    ) -> Option<Change> {
        let high = self.high.entry(mount.to_path_buf()).or_insert(false);
        let level = if !*high && used_pct >= thresholds.high_pct {
            "high"
        } else if *high && used_pct <= thresholds.low_pct {
            "low"
        } else {
            return None;
        };
        *high = level == "high";
        Some(Change {
            mount: mount.to_path_buf(),
            level,
            used_pct: (used_pct * 10.0).round() / 10.0,
            free_bytes,
        })
    }
}

/// The mounts watched: the root, the command line's, the node config's
/// and Docker's data root, each once, in order.
pub fn watched(cli: &[PathBuf], config: &[String], data_root: Option<&Path>) -> Vec<PathBuf> {
    let mut mounts = vec![PathBuf::from("/")];
    mounts.extend(cli.iter().cloned());
    mounts.extend(config.iter().map(PathBuf::from));
    mounts.extend(data_root.map(Path::to_path_buf));
    mounts.sort();
    mounts.dedup();
    mounts
}

/// The thresholds in force: the repo's (node config) win over the
/// command line's, each line on its own; a pair that does not make sense
/// together leaves the command line's.
pub fn thresholds(cli: Thresholds, high_pct: Option<f64>, low_pct: Option<f64>) -> Thresholds {
    Thresholds::new(
        high_pct.unwrap_or(cli.high_pct),
        low_pct.unwrap_or(cli.low_pct),
    )
    .unwrap_or(cli)
}

/// What a `disk_pressure` event says about a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub warning: bool,
    pub message: String,
    pub data: serde_json::Value,
}

pub fn alert(change: &Change, thresholds: &Thresholds) -> Alert {
    let high = change.level == "high";
    let line = if high {
        thresholds.high_pct
    } else {
        thresholds.low_pct
    };
    Alert {
        warning: high,
        message: format!(
            "{} is {:.1}% full ({} MB free; {} {line}%)",
            change.mount.display(),
            change.used_pct,
            change.free_bytes / 1_000_000,
            if high { "at or above" } else { "back to" },
        ),
        data: serde_json::json!({
            "level": change.level,
            "mount": change.mount.display().to_string(),
            "used_pct": change.used_pct,
            "free_bytes": change.free_bytes,
        }),
    }
}

/// Usage of the filesystem holding `path`, and the bytes used on it.
pub fn usage(path: &Path) -> std::io::Result<(Usage, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a struct statvfs fills in.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = stat.f_frsize as u64;
    let total = stat.f_blocks as u64 * block;
    let free_all = stat.f_bfree as u64 * block;
    let available = stat.f_bavail as u64 * block;
    Ok((
        Usage {
            total_bytes: total,
            free_bytes: available,
        },
        total.saturating_sub(free_all),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_watched() {
        let check = |cli: &[&str], config: &[&str], data: Option<&str>, want: &[&str]| {
            let cli: Vec<PathBuf> = cli.iter().map(PathBuf::from).collect();
            let config: Vec<String> = config.iter().map(|s| s.to_string()).collect();
            let got = watched(&cli, &config, data.map(Path::new));
            let want: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{cli:?} {config:?} {data:?}");
        };
        check(&[], &[], None, &["/"]);
        check(
            &["/srv"],
            &["/data", "/srv"],
            Some("/var/lib/docker"),
            &["/", "/data", "/srv", "/var/lib/docker"],
        );
        check(&["/"], &[], Some("/"), &["/"]);
    }

    #[test]
    fn the_repos_thresholds_win() {
        let cli = Thresholds::default();
        let check = |high, low, want: (f64, f64)| {
            let t = thresholds(cli, high, low);
            assert_eq!((t.high_pct, t.low_pct), want, "{high:?} {low:?}");
        };
        check(None, None, (90.0, 80.0));
        check(Some(95.0), None, (95.0, 80.0));
        check(Some(70.0), Some(60.0), (70.0, 60.0));
        // Low above high together: the command line's stay.
        check(Some(70.0), None, (90.0, 80.0));
    }

    #[test]
    fn alerts() {
        let t = Thresholds::default();
        let change = |level| Change {
            mount: PathBuf::from("/srv"),
            level,
            used_pct: 93.4,
            free_bytes: 12_500_000,
        };
        let high = alert(&change("high"), &t);
        assert!(high.warning);
        assert_eq!(
            high.message,
            "/srv is 93.4% full (12 MB free; at or above 90%)"
        );
        assert_eq!(high.data["level"], "high");
        assert_eq!(high.data["mount"], "/srv");
        let low = alert(&change("low"), &t);
        assert!(!low.warning);
        assert_eq!(low.message, "/srv is 93.4% full (12 MB free; back to 80%)");
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(Thresholds::new(90.0, 80.0).is_ok());
        for (high, low) in [(80.0, 80.0), (80.0, 90.0), (101.0, 80.0), (90.0, -1.0)] {
            assert!(Thresholds::new(high, low).is_err(), "{high} {low}");
        }
    }

    #[test]
    fn hysteresis() {
        let t = Thresholds::default();
        let mount = Path::new("/var/lib/docker");
        let mut tracker = Tracker::default();
        // (used %, level reported)
        let samples = [
            (50.0, None),
            (89.9, None),
            (90.0, Some("high")),
            (95.0, None),
            // Hovering between the lines says nothing.
            (85.0, None),
            (91.0, None),
            (80.1, None),
            (80.0, Some("low")),
            (89.0, None),
            (92.0, Some("high")),
            (10.0, Some("low")),
            (10.0, None),
        ];
        for (i, (used, want)) in samples.into_iter().enumerate() {
            let got = tracker.sample(mount, used, 1_000, &t);
            assert_eq!(got.as_ref().map(|c| c.level), want, "sample {i}: {used}%");
            if let Some(change) = got {
                assert_eq!(
                    (change.mount.as_path(), change.used_pct, change.free_bytes),
                    (mount, used, 1_000)
                );
            }
        }
        // Mounts are judged apart.
        assert_eq!(
            tracker.sample(Path::new("/"), 95.0, 1, &t).map(|c| c.level),
            Some("high")
        );
        assert_eq!(
            tracker.sample(mount, 95.0, 1, &t).map(|c| c.level),
            Some("high")
        );
    }

    #[test]
    fn used_share_as_df_shows_it() {
        let usage = Usage {
            total_bytes: 1_000,
            free_bytes: 100,
        };
        // 50 bytes reserved for root: used 850, available 100.
        assert!((usage.used_pct(850) - 89.47).abs() < 0.01);
        assert_eq!(
            Usage {
                total_bytes: 0,
                free_bytes: 0
            }
            .used_pct(0),
            0.0
        );
    }

    #[test]
    fn usage_of_a_real_filesystem() {
        let (usage, used) = usage(Path::new("/")).unwrap();
        assert!(
            usage.total_bytes > 0
                && used <= usage.total_bytes
                && usage.free_bytes <= usage.total_bytes
        );
        assert!(super::usage(Path::new("/no/such/path")).is_err());
    }
}
