//! The runtime root: which file lives where. Paths are built only from
//! [`Name`]s and fixed words, so nothing built here can leave the root.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::action::ActionState;
use crate::name::Name;

pub const DEFAULT_ROOT: &str = "/opt/homelab";

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `format.json`: the root's format version ([`crate::format`]).
    pub fn format_file(&self) -> PathBuf {
        self.root.join("format.json")
    }
    pub fn events_dir(&self) -> PathBuf {
        self.root.join("events")
    }
    /// `events/YYYY-MM-DD/<node>/events.jsonl`, by the UTC date of the event.
    pub fn event_log(&self, date: NaiveDate, node: &Name) -> PathBuf {
        self.events_dir()
            .join(date.format("%Y-%m-%d").to_string())
            .join(node.as_str())
            .join("events.jsonl")
    }
    /// The same day compressed: `events/YYYY-MM-DD/<node>/events.jsonl.zst`.
    pub fn event_log_compressed(&self, date: NaiveDate, node: &Name) -> PathBuf {
        self.event_log(date, node).with_extension("jsonl.zst")
    }
    pub fn world_dir(&self) -> PathBuf {
        self.root.join("world")
    }
    pub fn world_nodes(&self) -> PathBuf {
        self.world_dir().join("nodes.json")
    }
    pub fn world_services(&self) -> PathBuf {
        self.world_dir().join("services.json")
    }
    pub fn world_incidents(&self) -> PathBuf {
        self.world_dir().join("incidents.json")
    }
    /// Incidents that closed, oldest first ([`crate::world::ResolvedIncident`]).
    pub fn world_incident_history(&self) -> PathBuf {
        self.world_dir().join("incident_history.json")
    }
    /// Time per state of each node and service, last 31 days
    /// ([`crate::uptime::Track`]).
    pub fn world_status_history(&self) -> PathBuf {
        self.world_dir().join("status_history.json")
    }
    pub fn world_deployments(&self) -> PathBuf {
        self.world_dir().join("deployments.json")
    }
    pub fn actions_dir(&self, state: ActionState) -> PathBuf {
        self.root.join("actions").join(state.dir())
    }
    pub fn action_file(&self, state: ActionState, id: &Name) -> PathBuf {
        self.actions_dir(state).join(format!("{id}.json"))
    }
    /// `state/<component>`: checkpoints and private state of one component.
    pub fn state_dir(&self, component: &str) -> PathBuf {
        self.root.join("state").join(component)
    }
    /// The agent's own state for `node` (outbox, spool).
    pub fn agent_dir(&self, node: &Name) -> PathBuf {
        self.state_dir("agent").join(node.as_str())
    }
    /// The agent's own state, as `homelab agent status` shows it.
    pub fn agent_status(&self, node: &Name) -> PathBuf {
        self.agent_dir(node).join("status.json")
    }
    /// The last node config the control plane gave the agent.
    pub fn agent_config(&self, node: &Name) -> PathBuf {
        self.agent_dir(node).join("config.json")
    }
    /// Where a redeploy writes the compose files of `project` and runs
    /// Compose: the project directory.
    pub fn agent_deploy(&self, node: &Name, project: &Name) -> PathBuf {
        self.agent_dir(node).join("deploy").join(project.as_str())
    }
    /// Events handed over by `homelab emit`, one file each, drained by the
    /// agent into its outbox.
    pub fn agent_spool(&self, node: &Name) -> PathBuf {
        self.agent_dir(node).join("spool")
    }
    /// `state/observer/checkpoint.json`: what the observer knows, as of the
    /// log files' sizes recorded in it.
    pub fn observer_checkpoint(&self) -> PathBuf {
        self.state_dir("observer").join("checkpoint.json")
    }
    /// `state/supervisor/status.json`: reconcile passes so far, the last
    /// one's time and duration, and the repo's problems.
    pub fn supervisor_status(&self) -> PathBuf {
        self.state_dir("supervisor").join("status.json")
    }
    /// `state/supervisor/applied.json`: what is deployed per node and
    /// service, and whether the repo wants other compose files.
    pub fn supervisor_applied(&self) -> PathBuf {
        self.state_dir("supervisor").join("applied.json")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }
    /// `config/operators/`: one file per named operator ([`crate::operator`]).
    pub fn operators_dir(&self) -> PathBuf {
        self.config_dir().join("operators")
    }
    pub fn operator_file(&self, name: &Name) -> PathBuf {
        self.operators_dir().join(format!("{name}.json"))
    }
    /// `audit/`: the audit trail, a file per UTC day ([`crate::audit`]).
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }
    pub fn audit_file(&self, date: NaiveDate) -> PathBuf {
        self.audit_dir()
            .join(format!("{}.jsonl", date.format("%Y-%m-%d")))
    }
    pub fn ui_token_file(&self) -> PathBuf {
        self.config_dir().join("ui").join("token")
    }
    /// `config/tls/`: the fleet's CA and the broker's certificate
    /// (`ca.pem`, `ca.key`, `server.pem`, `server.key`).
    pub fn tls_dir(&self) -> PathBuf {
        self.config_dir().join("tls")
    }
    pub fn tls_ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }
    pub fn tls_ca_key(&self) -> PathBuf {
        self.tls_dir().join("ca.key")
    }
    pub fn tls_server_cert(&self) -> PathBuf {
        self.tls_dir().join("server.pem")
    }
    pub fn tls_server_key(&self) -> PathBuf {
        self.tls_dir().join("server.key")
    }
    /// `config/control.json`: the control plane's signing key and broker
    /// password (mode 0600).
    pub fn control_secrets(&self) -> PathBuf {
        self.config_dir().join("control.json")
    }
    /// `config/nodes/`: one record per enrolled node (its password's hash
    /// and public key); removing a node's file revokes it.
    pub fn nodes_dir(&self) -> PathBuf {
        self.config_dir().join("nodes")
    }
    pub fn node_record(&self, node: &Name) -> PathBuf {
        self.nodes_dir().join(format!("{node}.json"))
    }
    /// `state/repo/`: the desired state's git history (when `--repo` is a
    /// git checkout or URL): a bare mirror, one tree per commit, the live
    /// one, the sync's status. See `core::repo`.
    pub fn repo_dir(&self) -> PathBuf {
        self.state_dir("repo")
    }
    pub fn repo_mirror(&self) -> PathBuf {
        self.repo_dir().join("mirror.git")
    }
    /// `state/repo/trees/<sha>/`: the files of one commit, written once.
    pub fn repo_tree(&self, sha: &str) -> PathBuf {
        self.repo_dir().join("trees").join(sha)
    }
    /// `state/repo/commits/<sha>.json`: who made a tree's commit, and when.
    pub fn repo_commit(&self, sha: &str) -> PathBuf {
        self.repo_dir().join("commits").join(format!("{sha}.json"))
    }
    /// `state/repo/live`: a symlink to the tree of the live commit, replaced
    /// atomically; what the components read as their repo.
    pub fn repo_live(&self) -> PathBuf {
        self.repo_dir().join("live")
    }
    pub fn repo_status(&self) -> PathBuf {
        self.repo_dir().join("status.json")
    }
    /// `state/repo/pin.json`: an earlier commit made the desired state.
    pub fn repo_pin(&self) -> PathBuf {
        self.repo_dir().join("pin.json")
    }
    /// `state/repo/sync.request`: present when a fetch is asked for (a
    /// push webhook, `homelab repo sync`).
    pub fn repo_sync_request(&self) -> PathBuf {
        self.repo_dir().join("sync.request")
    }
    /// `config/ha/mqtt-password`: Home Assistant's MQTT login
    /// (`@home-assistant`) in fleet mode (mode 0600).
    pub fn ha_mqtt_password(&self) -> PathBuf {
        self.config_dir().join("ha").join("mqtt-password")
    }
    /// `config/repo/webhook-secret`: the push webhook's HMAC secret.
    pub fn repo_webhook_secret(&self) -> PathBuf {
        self.config_dir().join("repo").join("webhook-secret")
    }
    /// On a node: `config/agent/<node>.json`, the agent's secrets (mode
    /// 0600), written from its enrollment token.
    pub fn agent_secrets(&self, node: &Name) -> PathBuf {
        self.config_dir().join("agent").join(format!("{node}.json"))
    }
}
