use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use homelab::agent_cli::{self, AgentArgs, AgentQuery};
use homelab_core::{desired, Layout, Name, Topics};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "homelab",
    version,
    about = "Keeps a small fleet of Docker hosts healthy over MQTT"
)]
struct Cli {
    #[command(flatten)]
    globals: agent_cli::Globals,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Args, Clone)]
struct RetentionArg {
    /// Days of the event log older than this are compressed (zstd); at least 2d.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    compress_after: Duration,
    /// Days of the event log older than this are removed.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    retention: Duration,
}

impl RetentionArg {
    fn policy(&self) -> homelab_observer::retention::Policy {
        let days = |d: Duration| (d.as_secs() / 86_400) as u32;
        homelab_observer::retention::Policy::new(days(self.compress_after), days(self.retention))
    }
}

#[derive(Args, Clone)]
struct HomeAssistantArg {
    /// Home Assistant's MQTT discovery prefix: the observer publishes a
    /// device per node and entities for their health there.
    #[arg(long, default_value = "homeassistant")]
    ha_discovery_prefix: String,
    /// Publish nothing for Home Assistant.
    #[arg(long)]
    no_ha_discovery: bool,
    /// Approve and reject buttons in Home Assistant for each pending action
    /// (open mode only: in fleet mode approvals over MQTT are refused, and
    /// Home Assistant approves over HTTP with the operator token).
    #[arg(long)]
    ha_buttons: bool,
    /// `device`: one discovery config per device (Home Assistant 2024.11
    /// and later); `per-component`: one per entity, for older versions.
    /// Moving from per-component to device migrates the entities.
    #[arg(long, value_enum, default_value_t = DiscoveryForm::Device)]
    ha_discovery_form: DiscoveryForm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DiscoveryForm {
    Device,
    PerComponent,
}

impl HomeAssistantArg {
    fn config(&self, fleet: bool) -> Result<Option<homelab_observer::HomeAssistant>> {
        if self.no_ha_discovery {
            return Ok(None);
        }
        anyhow::ensure!(
            !(fleet && self.ha_buttons),
            "--ha-buttons: in fleet mode approvals over MQTT are refused; let Home Assistant approve over HTTP with the operator token (a rest_command, see docs/home-assistant.md)"
        );
        let prefix = self.ha_discovery_prefix.trim_end_matches('/');
        anyhow::ensure!(
            !prefix.is_empty()
                && !prefix.contains(['+', '#'])
                && prefix.split('/').all(|level| !level.is_empty()),
            "--ha-discovery-prefix {prefix:?}: topic levels without wildcards expected"
        );
        Ok(Some(homelab_observer::HomeAssistant {
            prefix: prefix.to_string(),
            buttons: self.ha_buttons,
            form: match self.ha_discovery_form {
                DiscoveryForm::Device => homelab_observer::discovery::Form::Device,
                DiscoveryForm::PerComponent => homelab_observer::discovery::Form::PerComponent,
            },
        }))
    }
}

#[derive(Args, Clone)]
struct BrokerArg {
    /// The MQTT broker: HOST:PORT, or mqtts://HOST:PORT (checked against
    /// the fleet's CA). In fleet mode the control plane's login is used.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
}

impl BrokerArg {
    fn endpoint(
        &self,
        layout: &Layout,
        fleet: Option<&homelab_core::fleet::Fleet>,
    ) -> Result<homelab_mqtt::Endpoint> {
        homelab::control_endpoint(layout, fleet, &self.broker)
    }
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Makes the fleet's CA, the broker's certificate and the control
    /// plane's identity under `<root>/config/`.
    Init {
        /// A host name or address agents dial to reach this host
        /// (repeatable; the first is the one `node add` prints).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// The port of the TLS listener agents dial.
        #[arg(long, default_value_t = homelab::fleet_cli::MQTTS_PORT)]
        port: u16,
        /// Replace an existing CA (every node must then be enrolled again).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Gives a node its identity and prints the command that starts its agent.
    Add {
        node: String,
        /// The broker URL the node dials (default: the one `tls init` set).
        #[arg(long)]
        broker: Option<String>,
    },
    /// Revokes a node at once: its logins and its events are refused.
    Remove { node: String },
    /// Replaces a node's password and key; prints the command to run on it.
    Rotate {
        node: String,
        #[arg(long)]
        broker: Option<String>,
    },
    /// Lists the enrolled nodes.
    List,
}

#[derive(Args, Clone)]
struct RepoArg {
    /// The desired-state repo (inventory/, hosts/, services/): a folder, a
    /// local git checkout, or a git URL (https://…, ssh://…, git@host:path,
    /// file://…). A checkout's or a URL's commits are the desired state,
    /// never a working copy.
    #[arg(long, default_value = ".")]
    repo: String,
    /// The branch of a git repo to follow (default: the remote's default
    /// branch; a checkout's current branch).
    #[arg(long)]
    branch: Option<String>,
    /// How often a git URL is fetched (a local checkout: every 5 s; a push
    /// webhook or `homelab repo sync` fetches at once).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    repo_poll: Duration,
}

impl RepoArg {
    /// The folder components read, and the sync of a git source.
    fn choice(&self, layout: &Layout) -> homelab::RepoChoice {
        homelab::repo_choice(&self.repo, self.branch.clone(), self.repo_poll, layout)
    }
}

#[derive(Subcommand)]
enum Commands {
    /// Everything in one process: broker, observer, supervisor, executor, ui and a local agent.
    Up {
        #[command(flatten)]
        repo: RepoArg,
        /// Where the embedded MQTT broker listens, plain MQTT: loopback only.
        #[arg(long, default_value = "127.0.0.1:1883")]
        mqtt: SocketAddr,
        /// Where it listens with TLS for agents on other hosts, e.g.
        /// 0.0.0.0:8883 (after `homelab tls init` and `homelab node add`).
        #[arg(long)]
        mqtts: Option<SocketAddr>,
        /// Where the web UI listens.
        #[arg(long, default_value = "127.0.0.1:18180")]
        http: SocketAddr,
        /// The local agent's node name (default: the hostname).
        #[arg(long)]
        node: Option<String>,
        /// Run no local agent.
        #[arg(long)]
        no_agent: bool,
        #[command(flatten)]
        agent: agent_cli::LocalAgentArgs,
        /// Grace period of services that set none (e.g. 30s, 5m).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace_period: Duration,
        /// How long an agent has to carry out a command (its deadline; an
        /// approval for a node that is offline waits for it this long); the
        /// action fails 30 s after it without an outcome.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        command_timeout: Duration,
        #[command(flatten)]
        retention: RetentionArg,
        #[command(flatten)]
        home_assistant: HomeAssistantArg,
    },
    /// The embedded MQTT broker alone.
    Broker {
        /// Plain MQTT, loopback only.
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
        /// MQTT over TLS (fleet mode), e.g. 0.0.0.0:8883.
        #[arg(long)]
        tls_listen: Option<SocketAddr>,
    },
    /// The fleet's certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Mosquitto instead of the embedded broker: writes its configuration,
    /// password file and per-node ACL for the fleet into a directory.
    MosquittoConfig {
        /// Where to write homelab.conf, passwords, acl, server.pem and server.key.
        #[arg(long)]
        out: PathBuf,
        /// Mosquitto's TLS listener, for the agents.
        #[arg(long, default_value = "0.0.0.0:8883")]
        tls_listen: SocketAddr,
        /// A plain listener on loopback, for the control plane's components
        /// on the same host (none by default: they dial mqtts:// too).
        #[arg(long)]
        plain_listen: Option<SocketAddr>,
    },
    /// The fleet's nodes: their identities.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The node agent (`homelab agent status` shows its state).
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        query: Option<AgentQuery>,
        #[command(flatten)]
        args: AgentArgs,
    },
    /// Event log and world state.
    Observer {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        repo: RepoArg,
        #[command(flatten)]
        retention: RetentionArg,
        #[command(flatten)]
        home_assistant: HomeAssistantArg,
    },
    /// Desired vs world state: proposes actions.
    Supervisor {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        repo: RepoArg,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace_period: Duration,
        /// Runs of one action an hour that `remediation: auto` may approve.
        #[arg(long, default_value_t = 3)]
        auto_limit: usize,
    },
    /// Carries out approved actions.
    Executor {
        #[command(flatten)]
        broker: BrokerArg,
        /// How long an agent has to carry out a command (its deadline); the
        /// action fails 30 s after it without an outcome.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        command_timeout: Duration,
    },
    /// Tells the operator about pending actions and incidents (webhook,
    /// ntfy, Telegram), as `<root>/config/notify.yaml` says.
    Notify {
        /// How often the actions and incidents are looked at.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Web UI and JSON API.
    Ui {
        #[command(flatten)]
        broker: BrokerArg,
        #[arg(long, default_value = "127.0.0.1:18180")]
        http: SocketAddr,
        /// The desired-state repo: the overview then shows every node of
        /// the inventory (also those that never reported), their roles and
        /// the services they should run. A git checkout or URL is read from
        /// `<root>/state/repo/live`, which the supervisor's sync keeps.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Hands an event to this node's agent durably (also while the agent or
    /// the uplink is down) and prints its id.
    Emit {
        /// Event type, e.g. backup_failed.
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value = "info", value_parser = ["info", "warning", "error", "critical"])]
        severity: String,
        #[arg(long, default_value = "")]
        message: String,
        /// A JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// This node's name (default: the hostname).
        #[arg(long)]
        node: Option<String>,
    },
    /// Lists, shows, approves and rejects actions over the ui's HTTP API.
    Actions {
        /// The ui (of `homelab up` or `homelab ui`).
        #[arg(
            long,
            env = "HOMELAB_URL",
            default_value = "http://127.0.0.1:18180",
            global = true
        )]
        url: String,
        /// The operator token (default: `<root>/config/ui/token` when readable).
        #[arg(long, env = "HOMELAB_UI_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: homelab::actions_cli::ActionsCommand,
    },
    /// The desired state's git history over the ui's HTTP API: status,
    /// commits, sync, pin, unpin.
    Repo {
        /// The ui (of `homelab up` or `homelab ui`).
        #[arg(
            long,
            env = "HOMELAB_URL",
            default_value = "http://127.0.0.1:18180",
            global = true
        )]
        url: String,
        /// The operator token (default: `<root>/config/ui/token` when readable).
        #[arg(long, env = "HOMELAB_UI_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: homelab::repo_cli::RepoCommand,
    },
    /// Exit status 0 when the control plane's page answers /healthz (a
    /// container's healthcheck: the image has no curl).
    Health {
        #[arg(long, env = "HOMELAB_URL", default_value = "http://127.0.0.1:18180")]
        url: String,
    },
    /// Checks this host: Docker, the broker and the login, TLS certificates,
    /// the clock, free disk, secrets' modes, the repo, notifications. Each
    /// finding with its fix; exit status 1 if anything fails.
    Doctor {
        /// The broker, as the agent's or the components' --broker.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// This node (its enrolment is checked; default: the hostname).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, env = "DOCKER_HOST")]
        docker_host: Option<String>,
        /// The desired-state repo (a folder or a git URL) to check.
        #[arg(long)]
        repo: Option<String>,
        /// The control plane's page, for the clock.
        #[arg(long, env = "HOMELAB_URL", default_value = "http://127.0.0.1:18180")]
        url: String,
        /// Send a test message to each notification channel.
        #[arg(long)]
        send_test: bool,
        /// How long each probe waits.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Writes the runtime root's state to one file (tar + zstd) while the
    /// system runs: events, actions, world, audit, config and secrets.
    Backup {
        #[arg(long)]
        out: PathBuf,
        /// Leave out config/ (tokens, operators, TLS keys, logins).
        #[arg(long)]
        no_secrets: bool,
    },
    /// Brings a backup back into an empty runtime root (--root).
    Restore { file: PathBuf },
    /// Named operators: who logs in on the page and decides.
    Operator {
        #[command(subcommand)]
        command: homelab::operator_cli::OperatorCommand,
    },
    /// The audit trail: every decision and every login, newest first.
    Audit {
        /// Only this operator.
        #[arg(long)]
        operator: Option<String>,
        /// Not older than this (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Validates the desired-state repo; prints every problem with file and line.
    Check {
        #[command(flatten)]
        repo: RepoArg,
    },
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    homelab_core::time::parse_duration(raw)
}

/// `homelab audit`.
fn audit(
    root: &std::path::Path,
    operator: Option<String>,
    since: Option<&str>,
    limit: usize,
    json: bool,
) -> ExitCode {
    let since = match since.map(chrono::DateTime::parse_from_rfc3339).transpose() {
        Ok(since) => since.map(|s| s.with_timezone(&chrono::Utc)),
        Err(error) => {
            eprintln!("homelab audit: --since: {error} (RFC 3339, e.g. 2026-12-07T00:00:00Z)");
            return ExitCode::FAILURE;
        }
    };
    let filter = homelab_core::audit::Filter {
        operator,
        since,
        what: None,
    };
    match homelab_core::audit::read(&Layout::new(root), &filter, limit.max(1)) {
        Ok(entries) if json => {
            for e in &entries {
                println!("{}", serde_json::to_string(e).expect("entry serializes"));
            }
            ExitCode::SUCCESS
        }
        Ok(entries) => {
            print!("{}", homelab::operator_cli::audit_text(&entries));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("homelab audit: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn node_name(raw: Option<String>) -> Result<Name> {
    agent_cli::node_name(raw)
}

/// mimalloc: under load the control plane spent about 15% of its CPU in
/// glibc's malloc and free (events parsed, logged and handed on).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    homelab::init_logging(cli.globals.log_format);
    if let Commands::Check { repo } = &cli.command {
        if homelab_repo::source::is_url(&repo.repo) {
            eprintln!("homelab check takes a folder or a checkout (its working tree), not a URL: clone it and check the clone");
            return ExitCode::FAILURE;
        }
        return check(std::path::Path::new(&repo.repo));
    }
    if let Commands::Agent {
        query: Some(AgentQuery::Status { node, json }),
        ..
    } = &cli.command
    {
        return match agent_cli::status(&cli.globals.root, node.clone(), *json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab agent status: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Health { url } = &cli.command {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into();
        let url = format!("{}/healthz", url.trim_end_matches('/'));
        return match agent.get(&url).call() {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("homelab health: {url}: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Doctor {
        broker,
        node,
        docker_host,
        repo,
        url,
        send_test,
        timeout,
    } = &cli.command
    {
        let node = match node.as_deref().map(Name::parse).transpose() {
            Ok(node) => node,
            Err(error) => {
                eprintln!("homelab doctor: --node: {error}");
                return ExitCode::FAILURE;
            }
        };
        let options = homelab::doctor::Options {
            root: cli.globals.root.clone(),
            broker: broker.clone(),
            node,
            docker_host: docker_host.clone(),
            repo: repo.clone(),
            url: url.clone(),
            send_test: *send_test,
            timeout: *timeout,
        };
        let findings = tokio::runtime::Runtime::new()
            .expect("tokio runtime")
            .block_on(homelab::doctor::run(&options));
        let (text, good) = homelab::doctor::render(&findings);
        print!("{text}");
        return if good {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Commands::Backup { out, no_secrets } = &cli.command {
        let layout = Layout::new(&cli.globals.root);
        return match homelab::backup::backup(&layout, out, !no_secrets) {
            Ok(m) => {
                println!(
                    "backup of {} written to {}: {} files, {} bytes before compression{}",
                    cli.globals.root.display(),
                    out.display(),
                    m.files,
                    m.bytes,
                    if m.secrets {
                        ""
                    } else {
                        ", without config/ (no secrets)"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab backup: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Restore { file } = &cli.command {
        let layout = Layout::new(&cli.globals.root);
        return match homelab::backup::restore(&layout, file) {
            Ok(m) => {
                println!(
                    "restored {} files of the backup made {} by {} into {}{}",
                    m.files,
                    m.at,
                    m.written_by,
                    cli.globals.root.display(),
                    if m.secrets {
                        ""
                    } else {
                        "; it held no secrets: the ui makes a new operator token, nodes must be enrolled again"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab restore: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Operator { command } = &cli.command {
        let layout = Layout::new(&cli.globals.root);
        return match homelab::operator_cli::run(&layout, command.clone(), chrono::Utc::now()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab operator: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Audit {
        operator,
        since,
        limit,
        json,
    } = &cli.command
    {
        return audit(
            &cli.globals.root,
            operator.clone(),
            since.as_deref(),
            *limit,
            *json,
        );
    }
    if let Commands::Actions {
        url,
        token,
        command,
    } = &cli.command
    {
        let client = homelab::actions_cli::Client::new(url, token.clone(), &cli.globals.root);
        return match homelab::actions_cli::run(&client, command.clone(), chrono::Utc::now()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab actions: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Repo {
        url,
        token,
        command,
    } = &cli.command
    {
        let client = homelab::actions_cli::Client::new(url, token.clone(), &cli.globals.root);
        return match homelab::repo_cli::run(&client, command.clone(), chrono::Utc::now()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab repo: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Tls { .. } | Commands::Node { .. } | Commands::MosquittoConfig { .. } =
        &cli.command
    {
        return match fleet(&cli) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Commands::Emit { .. } = &cli.command {
        return match emit(cli) {
            Ok(id) => {
                println!("{id}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab emit: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(error) = homelab::open_root(&cli.globals.root) {
        eprintln!("homelab: {error:#}");
        return ExitCode::FAILURE;
    }
    let runtime = if let Commands::Agent { .. } = &cli.command {
        agent_cli::runtime()
    } else {
        tokio::runtime::Runtime::new().expect("tokio runtime")
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("homelab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn fleet(cli: &Cli) -> Result<String> {
    use homelab::fleet_cli;
    let layout = Layout::new(&cli.globals.root);
    match &cli.command {
        Commands::Tls {
            command: TlsCommand::Init { names, port, force },
        } => fleet_cli::tls_init(&layout, names, *port, *force),
        Commands::Node { command } => match command {
            NodeCommand::Add { node, broker } => {
                fleet_cli::node_add(&layout, &node_name(Some(node.clone()))?, broker.as_deref())
            }
            NodeCommand::Remove { node } => {
                fleet_cli::node_remove(&layout, &node_name(Some(node.clone()))?)
            }
            NodeCommand::Rotate { node, broker } => {
                fleet_cli::node_rotate(&layout, &node_name(Some(node.clone()))?, broker.as_deref())
            }
            NodeCommand::List => fleet_cli::node_list(&layout),
        },
        Commands::MosquittoConfig {
            out,
            tls_listen,
            plain_listen,
        } => fleet_cli::mosquitto_config(
            &layout,
            out,
            &homelab_core::Topics::new(&cli.globals.prefix),
            *tls_listen,
            *plain_listen,
        ),
        _ => unreachable!("called for tls, node and mosquitto-config only"),
    }
}

fn emit(cli: Cli) -> Result<String> {
    let Commands::Emit {
        kind,
        service,
        severity,
        message,
        data,
        node,
    } = cli.command
    else {
        unreachable!("called for emit only")
    };
    let node = node_name(node)?;
    let service = service
        .map(|s| Name::parse(&s).map_err(|e| anyhow::anyhow!("bad service name {s:?}: {e}")))
        .transpose()?;
    let data: serde_json::Value =
        serde_json::from_str(&data).map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
    let event = homelab_core::Event {
        v: 1,
        id: homelab_core::event::new_id(),
        ts: chrono::Utc::now(),
        node: node.clone(),
        seq: 0,
        source: "emit".into(),
        kind,
        service,
        severity: serde_json::from_value(serde_json::Value::String(severity))?,
        message,
        data,
    };
    homelab_agent::spool::hand_over(&Layout::new(&cli.globals.root).agent_spool(&node), &event)?;
    Ok(event.id)
}

fn check(repo: &std::path::Path) -> ExitCode {
    match desired::load(repo) {
        Ok(desired) => {
            let services: usize = desired.hosts.values().map(|s| s.len()).sum();
            println!(
                "ok: {} nodes, {} services",
                desired.topology.nodes.len(),
                services
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            let n = problems.len();
            eprintln!("{n} problem{}", if n == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let shutdown = CancellationToken::new();
    homelab::cancel_on_signals(shutdown.clone());
    let layout = Layout::new(&cli.globals.root);
    let topics = Topics::new(&cli.globals.prefix);
    // The control host's fleet identities, for the components run alone
    // (`up` and the agent read their own).
    let fleet = match &cli.command {
        Commands::Broker { .. }
        | Commands::Observer { .. }
        | Commands::Supervisor { .. }
        | Commands::Executor { .. }
        | Commands::Ui { .. } => homelab_core::fleet::Fleet::load(&layout)?,
        _ => None,
    };
    match cli.command {
        Commands::Up {
            repo,
            mqtt,
            mqtts,
            http,
            node,
            no_agent,
            agent,
            grace_period,
            command_timeout,
            retention,
            home_assistant,
        } => {
            let agent_node = if no_agent {
                None
            } else {
                Some(node_name(node)?)
            };
            let choice = repo.choice(&layout);
            let config = homelab::UpConfig {
                root: cli.globals.root,
                repo: choice.folder,
                repo_sync: choice.sync,
                internal_mqtt: None,
                mqtt,
                mqtts,
                http,
                topics,
                agent_node,
                agent: agent.settings(&layout)?,
                ui_token: std::env::var("HOMELAB_UI_TOKEN").ok(),
                default_grace: grace_period,
                command_timeout,
                retention: retention.policy(),
                home_assistant: home_assistant.config(fleet.is_some())?,
            };
            homelab::up(config, shutdown).await
        }
        Commands::Broker { listen, tls_listen } => {
            let mut config = homelab_broker::Config::new(listen);
            config.fleet = fleet.clone();
            config.topics = topics.clone();
            config.tls = tls_listen.map(|listen| homelab_broker::TlsListener {
                listen,
                cert: layout.tls_server_cert(),
                key: layout.tls_server_key(),
            });
            homelab_broker::run(config, shutdown).await
        }
        Commands::Agent { query: _, args } => {
            agent_cli::run(args, &cli.globals.root, &cli.globals.prefix, shutdown).await
        }
        Commands::Observer {
            broker,
            repo,
            retention,
            home_assistant,
        } => {
            homelab_observer::run(
                homelab_observer::Config {
                    broker: broker.endpoint(&layout, fleet.as_ref())?,
                    repo: Some(repo.choice(&layout).folder),
                    layout,
                    topics,
                    retention: retention.policy(),
                    feed: None,
                    fleet: fleet.clone(),
                    home_assistant: home_assistant.config(fleet.is_some())?,
                },
                shutdown,
            )
            .await
        }
        Commands::Supervisor {
            broker,
            repo,
            grace_period,
            auto_limit,
        } => {
            // The supervisor owns the desired state: run alone, it also
            // runs the sync of a git source.
            let choice = repo.choice(&layout);
            let config = homelab_supervisor::Config {
                broker: broker.endpoint(&layout, fleet.as_ref())?,
                repo: choice.folder,
                layout,
                topics,
                default_grace: grace_period,
                interval: Duration::from_secs(5),
                auto_limit,
                feed: None,
                fleet: fleet.clone(),
            };
            match choice.sync {
                Some(sync) => {
                    let both = shutdown.clone();
                    let sync = tokio::spawn(homelab_repo::run(sync, both));
                    let result = homelab_supervisor::run(config, shutdown.clone()).await;
                    shutdown.cancel();
                    let _ = sync.await;
                    result
                }
                None => homelab_supervisor::run(config, shutdown).await,
            }
        }
        Commands::Executor {
            broker,
            command_timeout,
        } => {
            let config = homelab_executor::Config {
                broker: broker.endpoint(&layout, fleet.as_ref())?,
                layout,
                topics,
                command_timeout,
                interval: Duration::from_secs(2),
                feed: None,
                fleet: fleet.clone(),
            };
            homelab_executor::run(config, shutdown).await
        }
        Commands::Notify { interval } => {
            let config = homelab_notify::Config {
                layout,
                interval: interval.max(Duration::from_millis(200)),
            };
            homelab_notify::run(config, shutdown).await
        }
        Commands::Ui { broker, http, repo } => {
            let repo = repo.map(|raw| {
                homelab::repo_choice(&raw, None, Duration::from_secs(60), &layout).folder
            });
            let config = homelab_ui::Config {
                listen: http,
                broker: broker.endpoint(&layout, fleet.as_ref())?,
                layout,
                topics,
                token: std::env::var("HOMELAB_UI_TOKEN").ok(),
                metrics: Some(homelab::metrics()),
                mqtt_approvals: fleet.is_none(),
                repo,
            };
            homelab_ui::run(config, shutdown).await
        }
        Commands::Check { .. }
        | Commands::Emit { .. }
        | Commands::Actions { .. }
        | Commands::Operator { .. }
        | Commands::Backup { .. }
        | Commands::Doctor { .. }
        | Commands::Health { .. }
        | Commands::Restore { .. }
        | Commands::Audit { .. }
        | Commands::Repo { .. }
        | Commands::Tls { .. }
        | Commands::Node { .. }
        | Commands::MosquittoConfig { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}
