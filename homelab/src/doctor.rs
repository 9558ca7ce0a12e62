//! `homelab doctor`: on a control host or a node, checks what homelab
//! needs and prints each finding with its fix; exit status 1 when
//! anything fails. What each finding says is decided by pure, table-tested
//! `judge_*` functions; the probes around them are thin.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use homelab_core::{Layout, Name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Level {
    fn mark(self) -> &'static str {
        match self {
            Level::Ok => "ok  ",
            Level::Skip => "skip",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub says: String,
    pub fix: Option<String>,
}

fn finding(
    check: &'static str,
    level: Level,
    says: impl Into<String>,
    fix: Option<String>,
) -> Finding {
    Finding {
        check,
        level,
        says: says.into(),
        fix,
    }
}

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: std::path::PathBuf,
    /// The broker, as the agent's or the components' `--broker`.
    pub broker: String,
    /// This node, whose enrolment is checked (default: the hostname).
    pub node: Option<Name>,
    /// Docker's address (default: `DOCKER_HOST` or the local socket).
    pub docker_host: Option<String>,
    /// The desired-state repo to check, if any.
    pub repo: Option<String>,
    /// The control plane's web address, for the clock.
    pub url: String,
    /// Send a test message to each notification channel.
    pub send_test: bool,
    pub timeout: Duration,
}

const GIB: u64 = 1 << 30;

/// Free space under the root.
pub fn judge_disk(path: &Path, free: u64, total: u64) -> Finding {
    let pct = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let says = format!(
        "{:.1} GiB free of {:.1} GiB ({pct:.0}%) under {}",
        free as f64 / GIB as f64,
        total as f64 / GIB as f64,
        path.display()
    );
    let fix = || {
        Some("free space there (`docker system prune`, old event logs: --retention) or move the root to a larger disk".to_string())
    };
    if free < GIB / 4 || pct < 2.0 {
        finding("disk", Level::Fail, says, fix())
    } else if free < GIB || pct < 10.0 {
        finding("disk", Level::Warn, says, fix())
    } else {
        finding("disk", Level::Ok, says, None)
    }
}

/// This clock against the control plane's (`offset`: ours minus theirs,
/// seconds). Commands carry deadlines, so a clock far off refuses them or
/// keeps them too long.
pub fn judge_clock(offset: i64) -> Finding {
    let (ahead, by) = if offset >= 0 {
        ("ahead of", offset)
    } else {
        ("behind", -offset)
    };
    let says = format!("this clock is {by} s {ahead} the control plane's");
    let fix = Some(
        "run a time sync (`timedatectl set-ntp true`, chrony or systemd-timesyncd) on both hosts"
            .into(),
    );
    match by {
        0..=4 => finding("clock", Level::Ok, says, None),
        5..=59 => finding("clock", Level::Warn, says, fix),
        _ => finding(
            "clock",
            Level::Fail,
            format!("{says}: commands would be refused as expired or kept past their deadline"),
            fix,
        ),
    }
}

/// A certificate that expires at `not_after` (seconds since the epoch).
pub fn judge_cert(what: &str, not_after: i64, now: i64) -> Finding {
    let days = (not_after - now).div_euclid(86_400);
    let when = chrono::DateTime::from_timestamp(not_after, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let fix = Some("make new ones: `homelab tls init --force --name HOST` (every node must then be enrolled again)".to_string());
    if not_after <= now {
        finding(
            "tls",
            Level::Fail,
            format!("{what} expired on {when}: agents cannot connect"),
            fix,
        )
    } else if days < 30 {
        finding(
            "tls",
            Level::Warn,
            format!("{what} expires on {when}, in {days} days"),
            fix,
        )
    } else {
        finding(
            "tls",
            Level::Ok,
            format!("{what} valid until {when} ({days} days)"),
            None,
        )
    }
}

/// A secret file's mode.
pub fn judge_mode(path: &Path, mode: u32) -> Finding {
    let mode = mode & 0o777;
    if mode & 0o077 != 0 {
        finding(
            "secrets",
            Level::Fail,
            format!("{} is readable by others (mode {mode:o})", path.display()),
            Some(format!("chmod 600 {}", path.display())),
        )
    } else {
        finding(
            "secrets",
            Level::Ok,
            format!("{} is mode {mode:o}", path.display()),
            None,
        )
    }
}

/// The printed report and the exit status: 1 when anything failed.
pub fn render(findings: &[Finding]) -> (String, bool) {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(out, "{} {:<8} {}", f.level.mark(), f.check, f.says);
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "              fix: {fix}");
        }
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warned = findings.iter().filter(|f| f.level == Level::Warn).count();
    let _ = writeln!(
        out,
        "{}",
        match (failed, warned) {
            (0, 0) => "all good".to_string(),
            (0, w) => format!("{w} warning(s), nothing failed"),
            (f, w) => format!("{f} failed, {w} warning(s)"),
        }
    );
    (out, failed == 0)
}

/// Runs every check.
pub async fn run(options: &Options) -> Vec<Finding> {
    let layout = Layout::new(&options.root);
    let mut findings = vec![disk(&options.root)];
    findings.push(docker(options).await);
    findings.extend(secrets(&layout, options));
    findings.extend(tls(&layout));
    findings.push(broker(&layout, options).await);
    findings.push(clock(options).await);
    if let Some(repo) = &options.repo {
        findings.push(check_repo(repo));
    }
    findings.extend(notify(&layout, options.send_test).await);
    findings
}

fn disk(root: &Path) -> Finding {
    let probe = if root.exists() {
        root
    } else {
        root.parent().unwrap_or(Path::new("/"))
    };
    let Ok(c) = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()) else {
        return finding("disk", Level::Fail, "the root's path holds a NUL", None);
    };
    // SAFETY: statvfs(3) fills `stat` for a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return finding(
            "disk",
            Level::Fail,
            format!(
                "cannot read the free space under {}: {}",
                probe.display(),
                std::io::Error::last_os_error()
            ),
            Some("check that --root (HOMELAB_ROOT) names a folder this user can read".into()),
        );
    }
    let block = stat.f_frsize as u64;
    judge_disk(
        probe,
        stat.f_bavail as u64 * block,
        stat.f_blocks as u64 * block,
    )
}

async fn docker(options: &Options) -> Finding {
    let host = options
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let fix = Some(format!(
        "is Docker running (`systemctl status docker`)? the user running homelab needs the socket (group docker); or point --docker-host at it (now {host})"
    ));
    let connected = match options.docker_host.as_deref() {
        Some(h) => bollard::Docker::connect_with_host(h),
        None => bollard::Docker::connect_with_defaults(),
    };
    let client = match connected {
        Ok(client) => client,
        Err(error) => {
            return finding(
                "docker",
                Level::Fail,
                format!("Docker at {host}: {error}"),
                fix,
            )
        }
    };
    // bollard does not negotiate the API version by itself.
    let asked = tokio::time::timeout(options.timeout, async {
        let client = client.negotiate_version().await?;
        client.version().await
    })
    .await;
    match asked {
        Ok(Ok(v)) => finding(
            "docker",
            Level::Ok,
            format!(
                "Docker {} at {host}, API {}",
                v.version.unwrap_or_default(),
                v.api_version.unwrap_or_default()
            ),
            None,
        ),
        Ok(Err(error)) => finding(
            "docker",
            Level::Fail,
            format!("Docker at {host} does not answer: {error}"),
            fix,
        ),
        Err(_) => finding(
            "docker",
            Level::Fail,
            format!(
                "Docker at {host} did not answer within {} s",
                options.timeout.as_secs()
            ),
            fix,
        ),
    }
}

fn node_of(options: &Options) -> Option<Name> {
    options.node.clone().or_else(|| {
        hostname::get()
            .ok()
            .and_then(|h| Name::parse(&h.to_string_lossy()).ok())
    })
}

fn secrets(layout: &Layout, options: &Options) -> Vec<Finding> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![
        layout.ui_token_file(),
        layout.control_secrets(),
        layout.tls_ca_key(),
        layout.tls_server_key(),
    ];
    if let Some(node) = node_of(options) {
        files.push(layout.agent_secrets(&node));
    }
    if let Ok(entries) = std::fs::read_dir(layout.operators_dir()) {
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files
        .iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some(judge_mode(path, meta.permissions().mode()))
        })
        .collect()
}

fn tls(layout: &Layout) -> Vec<Finding> {
    let mut out = Vec::new();
    for (what, path) in [
        ("the broker's certificate", layout.tls_server_cert()),
        ("the fleet's CA", layout.tls_ca_cert()),
    ] {
        let Ok(pem) = std::fs::read(&path) else {
            continue;
        };
        let now = chrono::Utc::now().timestamp();
        let parsed = x509_parser::pem::parse_x509_pem(&pem)
            .ok()
            .and_then(|(_, pem)| {
                pem.parse_x509()
                    .ok()
                    .map(|c| c.validity().not_after.timestamp())
            });
        out.push(match parsed {
            Some(not_after) => judge_cert(what, not_after, now),
            None => finding(
                "tls",
                Level::Fail,
                format!("{} is not a PEM certificate", path.display()),
                Some("`homelab tls init --force --name HOST` makes new ones".into()),
            ),
        });
    }
    out
}

/// Connects as this host would: a node with its enrolment, the control
/// host with its login, open mode without one; says why not.
async fn broker(layout: &Layout, options: &Options) -> Finding {
    use rumqttc::{ConnectionError, Event, Packet};
    let url = &options.broker;
    let node_secrets = node_of(options).and_then(|node| {
        homelab_agent::secrets::load(layout, &node, None)
            .ok()
            .flatten()
    });
    let fleet = homelab_core::fleet::Fleet::load(layout).ok().flatten();
    let mut endpoint = homelab_mqtt::Endpoint::new(url.as_str());
    let login = if let Some(secrets) = &node_secrets {
        endpoint = endpoint
            .with_credentials(secrets.username.clone(), secrets.password.clone())
            .with_tls(secrets.ca_pem.clone());
        format!("as node {}", secrets.node)
    } else if let Some(fleet) = &fleet {
        let (user, password) = fleet.control_credentials();
        endpoint = endpoint.with_credentials(user, password);
        if let Ok(ca) = std::fs::read_to_string(layout.tls_ca_cert()) {
            endpoint = endpoint.with_tls(ca);
        }
        "as the control plane".to_string()
    } else {
        "without a login (open mode)".to_string()
    };
    let (host, port) = match homelab_mqtt::parse_addr(endpoint.addr()) {
        Ok(addr) => addr,
        Err(error) => {
            return finding(
                "broker",
                Level::Fail,
                format!("{url}: {error:#}"),
                Some("--broker HOST:PORT or mqtts://HOST:PORT, as the agent's".into()),
            )
        }
    };
    let mut mqtt =
        rumqttc::MqttOptions::new(format!("homelab-doctor-{}", std::process::id()), host, port);
    mqtt.set_keep_alive(Duration::from_secs(10));
    if let Some((user, password)) = &endpoint.credentials {
        mqtt.set_credentials(user, password);
    }
    if endpoint.is_tls() {
        match homelab_mqtt::tls_client(endpoint.ca_pem.as_deref().unwrap_or_default()) {
            Ok(tls) => {
                mqtt.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls),
                ));
            }
            Err(error) => {
                return finding(
                    "broker",
                    Level::Fail,
                    format!("the fleet's CA: {error:#}"),
                    None,
                )
            }
        }
    }
    let (client, mut events) = rumqttc::AsyncClient::new(mqtt, 4);
    let verdict = tokio::time::timeout(options.timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => continue,
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
    let fix_reach = Some(format!(
        "is the broker running and reachable from here (`homelab up` or Mosquitto at {url})? a firewall in between?"
    ));
    match verdict {
        Ok(Ok(rumqttc::ConnectReturnCode::Success)) => finding("broker", Level::Ok, format!("{url} accepts our login {login}"), None),
        Ok(Ok(code)) => finding(
            "broker",
            Level::Fail,
            format!("{url} refuses our login {login}: {code:?}"),
            Some(if node_secrets.is_some() {
                "this node's secrets are no longer valid there: `homelab node rotate NODE` on the control host, then HOMELAB_ENROLL on this node".into()
            } else {
                "log in with the credentials the broker expects (config/control.json, or Mosquitto's password file from `homelab mosquitto-config`)".into()
            }),
        ),
        Ok(Err(ConnectionError::Tls(error))) => finding(
            "broker",
            Level::Fail,
            format!("TLS with {url} failed: {error}"),
            Some("the broker's certificate must be signed by the fleet's CA, name the host dialled and be within its dates (`homelab doctor` on the control host says when it expires)".into()),
        ),
        Ok(Err(ConnectionError::ConnectionRefused(code))) => finding("broker", Level::Fail, format!("{url} refuses our login {login}: {code:?}"), None),
        Ok(Err(error)) => finding("broker", Level::Fail, format!("{url} not reached: {error}"), fix_reach),
        Err(_) => finding("broker", Level::Fail, format!("{url} did not answer within {} s", options.timeout.as_secs()), fix_reach),
    }
}

async fn clock(options: &Options) -> Finding {
    let url = options.url.trim_end_matches('/').to_string();
    let timeout = options.timeout;
    let asked = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let sent = chrono::Utc::now();
        let response = agent.get(format!("{url}/healthz")).call().ok()?;
        let got = chrono::Utc::now();
        let date = response.headers().get("date")?.to_str().ok()?.to_string();
        let theirs = chrono::DateTime::parse_from_rfc2822(&date)
            .ok()?
            .with_timezone(&chrono::Utc);
        let ours = sent + (got - sent) / 2;
        Some((ours - theirs).num_seconds())
    })
    .await
    .ok()
    .flatten();
    match asked {
        Some(offset) => judge_clock(offset),
        None => finding(
            "clock",
            Level::Skip,
            format!(
                "not compared: the control plane's page at {} did not answer",
                options.url
            ),
            Some("--url http://CONTROL-HOST:18180 (HOMELAB_URL) to compare with it".into()),
        ),
    }
}

fn check_repo(repo: &str) -> Finding {
    if homelab_repo::source::is_url(repo) {
        let out = std::process::Command::new("git")
            .args(["ls-remote", "--heads", repo])
            .env("GIT_TERMINAL_PROMPT", "0")
            .output();
        return match out {
            Ok(out) if out.status.success() => finding("repo", Level::Ok, format!("{repo} answers"), None),
            Ok(out) => finding(
                "repo",
                Level::Fail,
                format!("{repo} does not answer: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")),
                Some("check the URL, and that this user's ssh key or credential helper reaches it (`git ls-remote URL`)".into()),
            ),
            Err(error) => finding("repo", Level::Fail, format!("git: {error}"), Some("apt-get install git".into())),
        };
    }
    match homelab_core::desired::load(Path::new(repo)) {
        Ok(desired) => finding(
            "repo",
            Level::Ok,
            format!("{repo} is valid: {} nodes", desired.topology.nodes.len()),
            None,
        ),
        Err(problems) => finding(
            "repo",
            Level::Fail,
            format!(
                "{repo} has {} problem(s), first: {}",
                problems.len(),
                problems.first().map(|p| p.to_string()).unwrap_or_default()
            ),
            Some(format!(
                "`homelab check --repo {repo}` prints each with its file and line"
            )),
        ),
    }
}

async fn notify(layout: &Layout, send_test: bool) -> Vec<Finding> {
    let path = layout.config_dir().join("notify.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return vec![finding(
            "notify",
            Level::Skip,
            format!("no {}: no notifications", path.display()),
            None,
        )];
    };
    let settings = match homelab_notify::Settings::parse(&text) {
        Ok(settings) => settings,
        Err(error) => {
            return vec![finding(
                "notify",
                Level::Fail,
                format!("{}: {error:#}", path.display()),
                Some("fix the file: notifications are off until it loads".into()),
            )]
        }
    };
    let names: Vec<&str> = settings.channels.iter().map(|c| c.name()).collect();
    let mut out = vec![finding(
        "notify",
        Level::Ok,
        format!("{} loads: {}", path.display(), names.join(", ")),
        None,
    )];
    if send_test {
        for channel in settings.channels.clone() {
            let base = settings.base_url.clone();
            let name = channel.name();
            let sent =
                tokio::task::spawn_blocking(move || homelab_notify::send_test(&channel, &base))
                    .await;
            out.push(match sent {
                Ok(Ok(())) => finding(
                    "notify",
                    Level::Ok,
                    format!("test message sent to {name}"),
                    None,
                ),
                Ok(Err(error)) => finding(
                    "notify",
                    Level::Fail,
                    format!("{name}: {error:#}"),
                    Some("check the channel's address and token in notify.yaml".into()),
                ),
                Err(error) => finding("notify", Level::Fail, format!("{name}: {error}"), None),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_say_what_is_wrong_and_the_fix() {
        let p = Path::new("/opt/homelab");
        for (free, total, level) in [
            (50 * GIB, 100 * GIB, Level::Ok),
            (5 * GIB, 100 * GIB, Level::Warn),
            (GIB / 2, 4 * GIB, Level::Warn),
            (GIB / 8, 100 * GIB, Level::Fail),
            (GIB, 100 * GIB, Level::Fail),
        ] {
            assert_eq!(judge_disk(p, free, total).level, level, "{free} of {total}");
        }
        for (offset, level) in [
            (0, Level::Ok),
            (-4, Level::Ok),
            (12, Level::Warn),
            (-90, Level::Fail),
        ] {
            assert_eq!(judge_clock(offset).level, level, "{offset}");
        }
        assert_eq!(judge_clock(-90).says, "this clock is 90 s behind the control plane's: commands would be refused as expired or kept past their deadline");
        let now = 1_796_000_000;
        assert_eq!(judge_cert("ca", now - 1, now).level, Level::Fail);
        assert_eq!(judge_cert("ca", now + 10 * 86_400, now).level, Level::Warn);
        let ok = judge_cert("the broker's certificate", now + 400 * 86_400, now);
        assert_eq!(ok.level, Level::Ok);
        assert!(ok.says.contains("(400 days)"), "{}", ok.says);
        let loose = judge_mode(Path::new("/r/config/ui/token"), 0o100644);
        assert_eq!(
            (loose.level, loose.fix.as_deref()),
            (Level::Fail, Some("chmod 600 /r/config/ui/token"))
        );
        assert_eq!(judge_mode(Path::new("/x"), 0o100600).level, Level::Ok);
    }

    #[test]
    fn the_report_fails_only_on_a_failure() {
        let ok = finding("disk", Level::Ok, "fine", None);
        let warn = finding("clock", Level::Warn, "12 s", Some("sync".into()));
        let fail = finding("docker", Level::Fail, "no socket", Some("start it".into()));
        assert_eq!(
            render(std::slice::from_ref(&ok)),
            ("ok   disk     fine\nall good\n".to_string(), true)
        );
        let (text, good) = render(&[ok, warn, fail]);
        assert!(!good);
        assert_eq!(
            text,
            "ok   disk     fine\nWARN clock    12 s\n              fix: sync\nFAIL docker   no socket\n              fix: start it\n1 failed, 1 warning(s)\n"
        );
    }
}
