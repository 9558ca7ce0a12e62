//! `homelab-agent`: the node agent alone. The same agent, flags and status
//! as `homelab agent`, in a binary without the control plane linked in, so
//! its idle memory stays small on hosts that run only the agent.

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
    #[command(flatten)]
    globals: agent_cli::Globals,
    #[command(subcommand)]
    query: Option<AgentQuery>,
    #[command(flatten)]
    args: AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    homelab::init_logging(cli.globals.log_format);
    if let Some(AgentQuery::Status { node, json }) = cli.query {
        return match agent_cli::status(&cli.globals.root, node, json) {
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
    if let Err(error) = homelab::open_root(&cli.globals.root) {
        eprintln!("homelab-agent: {error:#}");
        return ExitCode::FAILURE;
    }
    let shutdown = CancellationToken::new();
    let result = agent_cli::runtime().block_on(async {
        homelab::cancel_on_signals(shutdown.clone());
        agent_cli::run(cli.args, &cli.globals.root, &cli.globals.prefix, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("homelab-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
