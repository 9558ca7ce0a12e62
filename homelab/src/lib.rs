//! `homelab up`: broker, observer, supervisor, executor, ui and a local
//! agent in one process — the default for one machine. Also the shared
//! process plumbing of the binary (metrics recorder, shutdown signals).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use homelab_core::{Layout, Name, Topics};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub mod actions_cli;
pub mod agent_cli;
pub mod backup;
pub mod doctor;
pub mod fleet_cli;
pub mod operator_cli;
pub mod repo_cli;

/// What `--repo` makes of the desired state: the folder the components
/// read, and for a git source the sync that keeps it (its live commit's
/// tree, `state/repo/live`).
#[derive(Debug, Clone)]
pub struct RepoChoice {
    pub folder: PathBuf,
    pub sync: Option<homelab_repo::Config>,
}

pub fn repo_choice(
    raw: &str,
    branch: Option<String>,
    poll: Duration,
    layout: &Layout,
) -> RepoChoice {
    let source = homelab_repo::source::parse(raw);
    match source {
        homelab_repo::Source::Folder(folder) => RepoChoice { folder, sync: None },
        source => RepoChoice {
            folder: layout.repo_live(),
            sync: Some(homelab_repo::Config {
                source,
                branch,
                poll,
                layout: layout.clone(),
            }),
        },
    }
}

#[derive(Debug, Clone)]
pub struct UpConfig {
    pub root: PathBuf,
    /// The folder the components read: the repo, or for a git source its
    /// live tree (`repo_sync` keeps it).
    pub repo: PathBuf,
    /// The desired state's git history, when `--repo` is a checkout or URL.
    pub repo_sync: Option<homelab_repo::Config>,
    /// Where the embedded broker listens: plain MQTT, loopback only.
    pub mqtt: SocketAddr,
    /// Where it listens with TLS, for agents on other hosts (fleet mode:
    /// `homelab tls init` first).
    pub mqtts: Option<SocketAddr>,
    /// Where the UI listens.
    pub http: SocketAddr,
    /// rumqttd's internal listener (past the broker's front), where `up`'s
    /// own components connect; `None`: a free port (tests name it).
    pub internal_mqtt: Option<SocketAddr>,
    pub topics: Topics,
    /// The local agent's node name; `None` runs no local agent.
    pub agent_node: Option<Name>,
    /// What the local agent does (the same flags as `homelab agent`).
    pub agent: agent_cli::AgentSettings,
    pub ui_token: Option<String>,
    pub default_grace: Duration,
    /// How long an agent has to carry out a command (its deadline): an
    /// edge node offline longer refuses it as expired when it is back.
    pub command_timeout: Duration,
    /// When old days of the event log are compressed and removed.
    pub retention: homelab_observer::retention::Policy,
    /// Home Assistant MQTT discovery; `None`: off.
    pub home_assistant: Option<homelab_observer::HomeAssistant>,
}

/// The process-wide Prometheus recorder (installed once; every component
/// in the process records into it).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// The node name of this host: its hostname, folded to lower case.
pub fn default_node() -> Result<Name> {
    let raw = hostname::get()
        .context("read hostname")?
        .to_string_lossy()
        .to_string();
    let short = raw.split('.').next().unwrap_or(&raw).to_string();
    Name::parse(&short)
        .with_context(|| format!("hostname {raw:?} is not a valid node name; pass --node"))
}

pub async fn up(config: UpConfig, shutdown: CancellationToken) -> Result<()> {
    let layout = Layout::new(&config.root);
    std::fs::create_dir_all(layout.root())
        .with_context(|| format!("create root {}", layout.root().display()))?;
    let metrics = metrics();
    let fleet = homelab_core::fleet::Fleet::load(&layout)?;
    let mut broker_config = homelab_broker::Config::new(config.mqtt);
    broker_config.fleet = fleet.clone();
    broker_config.tls = config.mqtts.map(|listen| homelab_broker::TlsListener {
        listen,
        cert: layout.tls_server_cert(),
        key: layout.tls_server_key(),
    });
    broker_config.check()?;
    let local_identity = match (&fleet, &config.agent_node) {
        (Some(_), Some(node)) => Some(local_agent_identity(&layout, node)?),
        _ => None,
    };
    broker_config.topics = config.topics.clone();
    broker_config.internal = config.internal_mqtt;
    let started = tokio::task::spawn_blocking(move || homelab_broker::start(&broker_config))
        .await
        .context("broker start")??;
    // The control plane's own components reach rumqttd past the front
    // (trusted, in this process); the local agent goes through it like any
    // node.
    let broker = control_endpoint(&layout, fleet.as_ref(), &started.internal.to_string())?;
    let front = control_endpoint(&layout, fleet.as_ref(), &config.mqtt.to_string())?;
    if fleet.is_some() {
        // Home Assistant's login, for its setup form (`config/ha/mqtt-password`).
        fleet_cli::ha_password(&layout)?;
    }
    info!(root = %config.root.display(), repo = %config.repo.display(), mqtt = %config.mqtt, mqtts = ?config.mqtts, fleet = fleet.is_some(), http = %config.http, "homelab up");

    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    let child = || shutdown.child_token();
    if let Some(mut sync) = config.repo_sync.clone() {
        sync.layout = layout.clone();
        let token = child();
        tasks.spawn(async move { ("repo", homelab_repo::run(sync, token).await) });
    }
    // Stored events reach the supervisor and the executor in-process, once
    // they are in the log: the broker carries each event once, to the
    // observer.
    let feed = homelab_feed::channel();
    {
        let cfg = homelab_observer::Config {
            broker: broker.clone(),
            layout: layout.clone(),
            topics: config.topics.clone(),
            repo: Some(config.repo.clone()),
            retention: config.retention,
            feed: Some(feed.clone()),
            fleet: fleet.clone(),
            home_assistant: config.home_assistant.clone(),
        };
        let token = child();
        tasks.spawn(async move { ("observer", homelab_observer::run(cfg, token).await) });
    }
    {
        let cfg = homelab_supervisor::Config {
            broker: broker.clone(),
            layout: layout.clone(),
            topics: config.topics.clone(),
            repo: config.repo.clone(),
            default_grace: config.default_grace,
            interval: Duration::from_secs(5),
            auto_limit: homelab_supervisor::plan::Settings::default().auto_limit,
            feed: Some(feed.clone()),
            fleet: fleet.clone(),
        };
        let token = child();
        tasks.spawn(async move { ("supervisor", homelab_supervisor::run(cfg, token).await) });
    }
    {
        let cfg = homelab_executor::Config {
            broker: broker.clone(),
            layout: layout.clone(),
            topics: config.topics.clone(),
            command_timeout: config.command_timeout,
            interval: Duration::from_secs(2),
            feed: Some(feed.clone()),
            fleet: fleet.clone(),
        };
        let token = child();
        tasks.spawn(async move { ("executor", homelab_executor::run(cfg, token).await) });
    }
    {
        let cfg = homelab_ui::Config {
            listen: config.http,
            broker: broker.clone(),
            layout: layout.clone(),
            topics: config.topics.clone(),
            token: config.ui_token.clone(),
            metrics: Some(metrics),
            mqtt_approvals: fleet.is_none(),
            repo: Some(config.repo.clone()),
        };
        let token = child();
        tasks.spawn(async move { ("ui", homelab_ui::run(cfg, token).await) });
    }
    {
        let cfg = homelab_notify::Config {
            layout: layout.clone(),
            interval: Duration::from_secs(2),
        };
        let token = child();
        tasks.spawn(async move { ("notify", homelab_notify::run(cfg, token).await) });
    }
    if let Some(node) = config.agent_node.clone() {
        let mut cfg = homelab_agent::Config::new(node, &front.url, layout.clone());
        config.agent.apply(&mut cfg);
        cfg.identity = local_identity;
        cfg.topics = config.topics.clone();
        let token = child();
        tasks.spawn(async move { ("agent", homelab_agent::run(cfg, token).await) });
    }

    // Any component that ends on its own ends the whole process: one
    // process, one fate (a supervisor such as systemd restarts it).
    let mut failure = None;
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        Some(done) = tasks.join_next() => {
            let (name, result) = done.context("component task panicked")?;
            // Ending after shutdown was asked for is no failure.
            if !shutdown.is_cancelled() {
                let error = result.err().unwrap_or_else(|| anyhow::anyhow!("stopped unexpectedly"));
                error!(component = name, error = format!("{error:#}"), "component failed; shutting down");
                failure = Some(error.context(format!("{name} failed")));
                shutdown.cancel();
            }
        }
    }
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => { error!("components did not stop within 10 s"); break; }
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok((name, Err(error)))) => error!(component = name, error = format!("{error:#}"), "component failed while stopping"),
                Some(_) => {}
            },
        }
    }
    info!("homelab stopped (the embedded broker ends with the process)");
    failure.map_or(Ok(()), Err)
}

/// How a control-plane component on this host reaches the broker at
/// `url`: in fleet mode with the control plane's login, and for
/// `mqtts://` checking the broker's certificate against the fleet's CA.
pub fn control_endpoint(
    layout: &Layout,
    fleet: Option<&homelab_core::fleet::Fleet>,
    url: &str,
) -> Result<homelab_mqtt::Endpoint> {
    let mut endpoint = homelab_mqtt::Endpoint::new(url);
    if let Some(fleet) = fleet {
        let (user, password) = fleet.control_credentials();
        endpoint = endpoint.with_credentials(user, password);
    }
    if endpoint.is_tls() {
        let ca = std::fs::read_to_string(layout.tls_ca_cert()).with_context(|| {
            format!(
                "{url} is TLS: the fleet's CA {} is needed (`homelab tls init`)",
                layout.tls_ca_cert().display()
            )
        })?;
        endpoint = endpoint.with_tls(ca);
    }
    endpoint.check()?;
    Ok(endpoint)
}

/// The identity of `up`'s own agent in fleet mode: enrolled on first start
/// (and again when its record or secrets are gone), like any node.
fn local_agent_identity(
    layout: &Layout,
    node: &Name,
) -> Result<homelab_core::identity::AgentSecrets> {
    if layout.node_record(node).exists() {
        if let Some(secrets) = homelab_agent::secrets::load(layout, node, None)? {
            return Ok(secrets);
        }
    }
    let secrets = fleet_cli::enroll(layout, node)?;
    homelab_core::fsutil::write_secret(
        &layout.agent_secrets(node),
        &homelab_core::fsutil::json_bytes(&secrets)?,
    )?;
    info!(%node, "enrolled the local agent");
    Ok(secrets)
}

/// Logs to stderr, filtered by RUST_LOG. rumqttd logs every ordinary client
/// disconnect as an ERROR, so its logs are off unless asked for
/// (RUST_LOG=info,rumqttd=warn). Colours only on a terminal: journald,
/// `docker logs` and log files would show the escape codes raw.
/// Checks the runtime root's format before a component uses it
/// ([`homelab_core::format`]): an older root is upgraded, a newer one
/// refused with what to do.
pub fn open_root(root: &std::path::Path) -> Result<()> {
    use homelab_core::format::{self, Opened};
    let binary = concat!("homelab ", env!("CARGO_PKG_VERSION"));
    match format::open(&Layout::new(root), binary)? {
        Opened::Upgraded { from } => info!(
            root = %root.display(),
            from,
            to = format::CURRENT,
            "runtime root upgraded to this release's format"
        ),
        Opened::New | Opened::Current => {}
    }
    Ok(())
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people; colours only when stderr is a terminal (journald
    /// and `docker logs` get none).
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields`, `target`).
    Json,
}

pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Cancels `token` on ctrl-c or SIGTERM; a second signal exits at once.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                info!("stopping (signal again to exit at once)");
                token.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}
