//! `homelab-agent`: the node agent alone. The same agent, flags and status
//! as `homelab agent`, in a binary without the control plane linked in, so
//! its idle memory stays small on hosts that run only the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use homelab::agent_cli::{self, AgentArgs, AgentQuery};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "homelab-agent",
    version,
    about = "The homelab node agent (`homelab-agent status` shows its state)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The runtime root (the agent's outbox, spool and status live under it).
    #[arg(long, env = "HOMELAB_ROOT", default_value = homelab_core::layout::DEFAULT_ROOT, global = true)]
    root: PathBuf,
    /// MQTT topic prefix.
    #[arg(long, default_value = homelab_core::topics::DEFAULT_PREFIX, global = true)]
    prefix: String,
    #[command(subcommand)]
    query: Option<AgentQuery>,
    #[command(flatten)]
    args: AgentArgs,
}

fn main() -> ExitCode {
    homelab::init_logging();
    let cli = Cli::parse();
    if let Some(AgentQuery::Status { node, json }) = cli.query {
        return match agent_cli::status(&cli.root, node, json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("homelab-agent status: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let shutdown = CancellationToken::new();
    let result = agent_cli::runtime().block_on(async {
        homelab::cancel_on_signals(shutdown.clone());
        agent_cli::run(cli.args, &cli.root, &cli.prefix, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("homelab-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
