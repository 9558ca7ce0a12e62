//! The node agent's command line, shared by `homelab agent` and the slim
//! `homelab-agent` binary (the same agent without the control plane linked
//! in, for hosts that run only the agent).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use homelab_core::{Layout, Name, Topics};
use tokio_util::sync::CancellationToken;

/// The flags every command of both binaries takes.
#[derive(Args)]
pub struct Globals {
    /// The runtime root (events, world state, actions, state, config; an
    /// agent's outbox, spool and status).
    #[arg(long, env = "HOMELAB_ROOT", default_value = homelab_core::layout::DEFAULT_ROOT, global = true)]
    pub root: std::path::PathBuf,
    /// MQTT topic prefix.
    #[arg(long, default_value = homelab_core::topics::DEFAULT_PREFIX, global = true)]
    pub prefix: String,
    /// How logs are written to stderr: `text` (colours only on a
    /// terminal) or `json`, one object a line, for log collectors.
    #[arg(
        long,
        env = "HOMELAB_LOG_FORMAT",
        default_value = "text",
        value_enum,
        global = true
    )]
    pub log_format: crate::LogFormat,
}

#[derive(Subcommand)]
pub enum AgentQuery {
    /// Prints the agent's state from `<root>/state/agent/<node>/status.json`:
    /// connected or not, outbox depth, age of the oldest unacknowledged event.
    Status {
        /// The node (default: the hostname).
        #[arg(long)]
        node: Option<String>,
        /// Print the JSON as written.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AgentArgs {
    /// The MQTT broker: HOST:PORT (plain, loopback) or mqtts://HOST:PORT
    /// (TLS, for an enrolled node).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// The enrollment token `homelab node add` printed: stored (mode 0600)
    /// under `<root>/config/agent/`, and used from then on.
    #[arg(long, env = "HOMELAB_ENROLL", hide_env_values = true, hide = true)]
    pub enroll: Option<String>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub local: LocalAgentArgs,
}

/// What an agent does on its host, also for `homelab up`'s local agent.
#[derive(Args, Clone)]
pub struct LocalAgentArgs {
    /// The Docker engine, e.g. unix:///var/run/docker.sock (default: DOCKER_HOST or the local socket).
    #[arg(long)]
    pub docker_host: Option<String>,
    /// Only containers with this label (KEY or KEY=VALUE) are this node's:
    /// for several nodes on one Docker engine. Without it, containers
    /// labelled `homelab.node=<another node>` are left alone all the same.
    #[arg(long, value_name = "KEY[=VALUE]")]
    pub docker_label: Option<String>,
    /// Bound of the durable outbox; past it the oldest events go (and an events_dropped event says so).
    #[arg(long, default_value_t = homelab_agent::outbox::DEFAULT_MAX_BYTES)]
    pub outbox_max_bytes: u64,
    /// Longest wait before sending again what the observer has not acknowledged (the first resend of a stall comes after 2 s, doubling up to this).
    #[arg(long, default_value = "30s", value_parser = homelab_core::time::parse_duration)]
    pub resend_after: Duration,
    /// A filesystem to watch for pressure, besides `/` and Docker's data
    /// root (repeatable).
    #[arg(long = "disk-mount", value_name = "PATH")]
    pub disk_mounts: Vec<std::path::PathBuf>,
    /// Used % at or above which a filesystem is under pressure.
    #[arg(long, default_value_t = 90.0)]
    pub disk_high: f64,
    /// Used % at or below which the pressure is over.
    #[arg(long, default_value_t = 80.0)]
    pub disk_low: f64,
    /// How often disk usage is sampled.
    #[arg(long, default_value = "30s", value_parser = homelab_core::time::parse_duration)]
    pub disk_interval: Duration,
    /// How often the MQTT brokers the node's services depend on (the
    /// repo's `mqtt_broker`) are probed.
    #[arg(long, default_value = "30s", value_parser = homelab_core::time::parse_duration)]
    pub broker_interval: Duration,
    /// How often each running container's CPU and memory are read (shown
    /// on the node page; sent with the agent's status).
    #[arg(long, default_value = "30s", value_parser = homelab_core::time::parse_duration)]
    pub stats_interval: Duration,
    /// Watch the Home Assistant beside this agent (e.g.
    /// http://127.0.0.1:8123) over its WebSocket API and report its health
    /// as `ha_*` events. The long-lived token: env HOMELAB_HA_TOKEN, else
    /// the file `<root>/config/ha/token`.
    #[arg(long)]
    pub ha_url: Option<String>,
    /// How often Home Assistant is looked at.
    #[arg(long, default_value = "30s", value_parser = homelab_core::time::parse_duration)]
    pub ha_interval: Duration,
    /// An entity unavailable this long is reported (ha_entity_unavailable_long).
    #[arg(long, default_value = "30m", value_parser = homelab_core::time::parse_duration)]
    pub ha_unavailable_after: Duration,
    /// The `tailscale` program (default: `tailscale` on PATH, if there):
    /// its `status --json` is read for tailscale_down and peer_unreachable.
    #[arg(long, value_name = "PATH")]
    pub tailscale: Option<std::path::PathBuf>,
    /// Do not watch Tailscale even if it is installed.
    #[arg(long, conflicts_with = "tailscale")]
    pub no_tailscale: bool,
    /// A tailnet peer this node needs (repeatable), besides the broker's
    /// host, which counts when it is a peer.
    #[arg(long = "tailscale-peer", value_name = "NAME")]
    pub tailscale_peers: Vec<String>,
    /// How often Tailscale's status is read.
    #[arg(long, default_value = "30s", value_parser = homelab_core::time::parse_duration)]
    pub tailscale_interval: Duration,
}

/// `name` on `path` (PATH's form: directories split by `:`), if an
/// executable file is there.
pub fn on_path(name: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// An agent's settings on its host, checked: what [`LocalAgentArgs`] says,
/// applied to an agent's config by [`AgentSettings::apply`].
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub docker_host: Option<String>,
    pub docker_label: Option<String>,
    pub outbox_max_bytes: u64,
    pub resend_after: Duration,
    pub disk_mounts: Vec<std::path::PathBuf>,
    pub disk_thresholds: homelab_agent::disk::Thresholds,
    pub disk_interval: Duration,
    pub broker_interval: Duration,
    pub stats_interval: Duration,
    pub sync_interval: Duration,
    pub home_assistant: Option<homelab_agent::hawatch::HaConfig>,
    pub tailscale: Option<std::path::PathBuf>,
    pub tailscale_peers: Vec<String>,
    pub tailscale_interval: Duration,
}

impl Default for AgentSettings {
    /// The command line's defaults.
    fn default() -> Self {
        let defaults = homelab_agent::Config::new(
            Name::parse("default").expect("a good name"),
            "",
            Layout::new(homelab_core::layout::DEFAULT_ROOT),
        );
        AgentSettings {
            docker_host: None,
            docker_label: None,
            outbox_max_bytes: defaults.outbox_max_bytes,
            resend_after: defaults.resend_after,
            disk_mounts: Vec::new(),
            disk_thresholds: defaults.disk_thresholds,
            disk_interval: defaults.disk_interval,
            broker_interval: defaults.broker_interval,
            stats_interval: defaults.stats_interval,
            sync_interval: defaults.sync_interval,
            home_assistant: None,
            tailscale: None,
            tailscale_peers: Vec::new(),
            tailscale_interval: defaults.tailscale_interval,
        }
    }
}

impl LocalAgentArgs {
    /// Checks the flags; `layout` is where the Home Assistant token may be.
    pub fn settings(&self, layout: &Layout) -> Result<AgentSettings> {
        if let Some(label) = &self.docker_label {
            homelab_agent::docker::check_label(label)?;
        }
        Ok(AgentSettings {
            docker_host: self.docker_host.clone(),
            docker_label: self.docker_label.clone(),
            outbox_max_bytes: self.outbox_max_bytes,
            resend_after: self.resend_after.max(Duration::from_secs(1)),
            disk_mounts: self.disk_mounts.clone(),
            disk_thresholds: homelab_agent::disk::Thresholds::new(self.disk_high, self.disk_low)
                .map_err(|e| anyhow::anyhow!(e))?,
            disk_interval: self.disk_interval.max(Duration::from_secs(1)),
            broker_interval: self.broker_interval.max(Duration::from_secs(1)),
            stats_interval: self.stats_interval.max(Duration::from_secs(1)),
            sync_interval: AgentSettings::default().sync_interval,
            home_assistant: ha_config(self, layout)?,
            tailscale: self.tailscale_program()?,
            tailscale_peers: self.tailscale_peers.clone(),
            tailscale_interval: self.tailscale_interval.max(Duration::from_secs(1)),
        })
    }

    fn tailscale_program(&self) -> Result<Option<std::path::PathBuf>> {
        if self.no_tailscale {
            return Ok(None);
        }
        if let Some(path) = &self.tailscale {
            anyhow::ensure!(
                std::fs::metadata(path).is_ok_and(|m| m.is_file()),
                "--tailscale {}: no such program",
                path.display()
            );
            return Ok(Some(path.clone()));
        }
        Ok(std::env::var_os("PATH").and_then(|path| on_path("tailscale", &path)))
    }
}

impl AgentSettings {
    pub fn apply(&self, config: &mut homelab_agent::Config) {
        config.docker_host = self.docker_host.clone();
        config.docker_label = self.docker_label.clone();
        config.outbox_max_bytes = self.outbox_max_bytes;
        config.resend_after = self.resend_after;
        config.disk_mounts = self.disk_mounts.clone();
        config.disk_thresholds = self.disk_thresholds;
        config.disk_interval = self.disk_interval;
        config.broker_interval = self.broker_interval;
        config.stats_interval = self.stats_interval;
        config.sync_interval = self.sync_interval;
        config.home_assistant = self.home_assistant.clone();
        config.tailscale = self.tailscale.clone();
        config.tailscale_peers = self.tailscale_peers.clone();
        config.tailscale_interval = self.tailscale_interval;
    }
}

/// The Home Assistant watcher's configuration, with its token.
fn ha_config(
    args: &LocalAgentArgs,
    layout: &Layout,
) -> Result<Option<homelab_agent::hawatch::HaConfig>> {
    let Some(url) = &args.ha_url else {
        return Ok(None);
    };
    homelab_agent::hawatch::websocket_url(url)?;
    let token = match std::env::var("HOMELAB_HA_TOKEN") {
        Ok(token) => token,
        Err(_) => {
            let path = layout.config_dir().join("ha").join("token");
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "--ha-url needs Home Assistant's long-lived token: set HOMELAB_HA_TOKEN or write it to {}",
                    path.display()
                )
            })?
        }
    };
    let token = token.trim().to_string();
    anyhow::ensure!(!token.is_empty(), "the Home Assistant token is empty");
    Ok(Some(homelab_agent::hawatch::HaConfig {
        url: url.clone(),
        token,
        interval: args.ha_interval.max(Duration::from_secs(1)),
        settings: homelab_agent::hawatch::rules::Settings {
            unavailable_after: chrono::Duration::from_std(args.ha_unavailable_after)
                .unwrap_or(chrono::Duration::minutes(30)),
            ..Default::default()
        },
    }))
}

/// A node name from the command line, or the hostname's.
pub fn node_name(raw: Option<String>) -> Result<Name> {
    match raw {
        Some(raw) => {
            Ok(Name::parse(&raw).map_err(|e| anyhow::anyhow!("bad node name {raw:?}: {e}"))?)
        }
        None => crate::default_node(),
    }
}

/// The text `homelab agent status` prints (or the JSON as written).
pub fn status(root: &Path, node: Option<String>, json: bool) -> Result<String> {
    let node = node_name(node)?;
    let path = Layout::new(root).agent_status(&node);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no status at {} (has the agent for {node} run with --root {}?)",
            path.display(),
            root.display()
        )
    })?;
    if json {
        return Ok(text + "\n");
    }
    let status: homelab_agent::status::AgentStatus =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    Ok(homelab_agent::status::render(&status, chrono::Utc::now()))
}

/// Runs the agent until `shutdown`. It is light on work, so its process
/// needs only a single-threaded runtime (see [`runtime`]).
pub async fn run(
    args: AgentArgs,
    root: &Path,
    prefix: &str,
    shutdown: CancellationToken,
) -> Result<()> {
    let layout = Layout::new(root);
    let settings = args.local.settings(&layout)?;
    let node = node_name(args.node)?;
    let identity = homelab_agent::secrets::load(&layout, &node, args.enroll.as_deref())?;
    let endpoint = homelab_mqtt::Endpoint::new(&args.broker);
    if endpoint.is_tls() && identity.is_none() {
        anyhow::bail!(
            "{} is TLS, but this node has no identity ({} is missing): run the command `homelab node add {node}` printed on the control host",
            args.broker,
            layout.agent_secrets(&node).display()
        );
    }
    if identity.is_some() && !endpoint.is_tls() && !endpoint_is_loopback(endpoint.addr()) {
        anyhow::bail!(
            "refusing to send this node's password in the clear to {}: use mqtts://",
            args.broker
        );
    }
    let mut config = homelab_agent::Config::new(node, &args.broker, layout);
    settings.apply(&mut config);
    config.identity = identity;
    config.topics = Topics::new(prefix);
    homelab_agent::run(config, shutdown).await
}

fn endpoint_is_loopback(addr: &str) -> bool {
    homelab_mqtt::parse_addr(addr).is_ok_and(|(host, _)| {
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// The runtime an agent process runs on: one thread (plus tokio's blocking
/// pool for file I/O). Fewer threads keep its idle memory small.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
