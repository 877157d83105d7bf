//! corral: the command-line front end and the host agent entry point.
//!
//! `corral serve` runs the host agent (corral-agent behind corral-api on a unix socket).
//! Every other command is a thin layer over corral-client: parse flags into an API request,
//! send it, print the answer as a table (or JSON with `--json`). Errors print the agent's
//! message once, on stderr, and exit non-zero.

mod cmd;
mod output;
mod progress;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Deploy and manage virtual machines on QEMU hosts",
    long_about = "corral deploys and manages virtual machines on QEMU/KVM hosts.\n\n\
        Start the host agent with `corral serve`, then use the other commands from the same \
        machine (they talk to the agent's unix socket).\n\n\
        Examples:\n  \
        corral serve --state-dir /var/lib/corral\n  \
        corral host info\n  \
        corral vm create --name web01 --vcpus 2 --memory 1G --disk 10G --nic default\n  \
        corral vm start web01 && corral vm console web01"
)]
struct Cli {
    /// Agent to talk to: a unix socket path, or https://HOST:PORT (an agent started with
    /// `serve --listen`; needs --token and --fingerprint). Default: the socket in the default
    /// state directory.
    #[arg(long, global = true, env = "CORRAL_CONNECT")]
    connect: Option<String>,
    /// Token of a remote agent (its STATE_DIR/token file).
    #[arg(long, global = true, env = "CORRAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 fingerprint of a remote agent's certificate (`corral host info` on that host
    /// shows it).
    #[arg(long, global = true, env = "CORRAL_FINGERPRINT")]
    fingerprint: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host agent.
    Serve(cmd::serve::ServeArgs),
    /// This host's facts, and the pool's hosts (list, show, evacuate, forget).
    #[command(subcommand)]
    Host(cmd::misc::HostCommand),
    /// The pool of hosts this agent belongs to.
    #[command(subcommand)]
    Pool(cmd::pool::PoolCommand),
    /// (internal) The self-fencing guard an agent in a pool starts: kills this host's HA
    /// VMs when the agent stops renewing its pool membership.
    #[command(hide = true)]
    FenceGuard {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Virtual machines: create, power, change, consoles.
    #[command(subcommand)]
    Vm(cmd::vm::VmCommand),
    /// Storage repositories.
    #[command(subcommand)]
    Sr(cmd::misc::SrCommand),
    /// The ISO library.
    #[command(subcommand)]
    Iso(cmd::misc::IsoCommand),
    /// Networks VMs attach to.
    #[command(subcommand)]
    Network(cmd::misc::NetworkCommand),
    /// OS templates VMs are created from.
    #[command(subcommand)]
    Template(cmd::misc::TemplateCommand),
    /// Operations, running and finished.
    #[command(subcommand)]
    Task(cmd::misc::TaskCommand),
    /// API tokens with a role (admin, operator, viewer): create, list, revoke.
    #[command(subcommand)]
    Token(cmd::auth::TokenCommand),
    /// Who did what: mutating requests and console sessions, with caller, address and result.
    Audit(cmd::auth::AuditArgs),
    /// Follow the agent's events (state changes, task progress). Ctrl-C stops.
    Events(cmd::misc::EventsArgs),
    /// Sample this machine's CPU, memory, network and disk use into a workload profile
    /// (no agent needed; run it on the physical servers you plan to consolidate).
    Measure(cmd::measure::MeasureArgs),
    /// Plan which workloads go on which hosts, and explain why (no agent needed).
    Plan(cmd::plan::PlanArgs),
    /// Copy this running Linux server into a new VM on an agent, converted to boot on virtio
    /// (run it as root on the server).
    #[command(long_about = cmd::p2v::P2V_HELP)]
    P2v(cmd::p2v::P2vArgs),
}

/// Where the CLI finds the agent: an `https://` URL is a remote agent, anything else a socket.
pub fn client_for(
    connect: Option<&str>,
    token: Option<&str>,
    fingerprint: Option<&str>,
) -> anyhow::Result<corral_client::Client> {
    let c = match connect {
        Some(c) if c.contains("://") => corral_client::Client::https(c, token, fingerprint)?,
        Some(c) => corral_client::Client::unix(PathBuf::from(c.strip_prefix("unix:").unwrap_or(c))),
        None => corral_client::Client::unix(
            corral_agent::config::default_state_dir().join("corral.sock"),
        ),
    };
    Ok(c)
}

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args),
        Command::Measure(args) => cmd::measure::run(args),
        Command::Plan(args) => cmd::plan::run(args),
        Command::P2v(cmd::p2v::P2vArgs {
            sub: Some(cmd::p2v::P2vCommand::Media(m)),
            ..
        }) => cmd::p2v_media::run(m, cli.fingerprint, json),
        Command::P2v(args) => runtime()
            .map_err(|e| anyhow::Error::new(e).context("cannot start the async runtime"))
            .and_then(|rt| rt.block_on(cmd::p2v::run(args, cli.token, cli.fingerprint, json))),
        Command::FenceGuard { state_dir } => corral_agent::pool::fence::run_guard(&state_dir)
            .map_err(|e| anyhow::Error::new(e).context("fence guard failed")),
        other => match client_for(
            cli.connect.as_deref(),
            cli.token.as_deref(),
            cli.fingerprint.as_deref(),
        ) {
            Err(e) => Err(e),
            Ok(client) => match runtime() {
                Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
                Ok(rt) => {
                    let result = rt.block_on(async move {
                        match other {
                            Command::Host(c) => cmd::misc::host(&client, c, json).await,
                            Command::Pool(c) => cmd::pool::pool(&client, c, json).await,
                            Command::Vm(c) => cmd::vm::run(&client, c, json).await,
                            Command::Sr(c) => cmd::misc::sr(&client, c, json).await,
                            Command::Iso(c) => cmd::misc::iso(&client, c, json).await,
                            Command::Network(c) => cmd::misc::network(&client, c, json).await,
                            Command::Template(c) => cmd::misc::template(&client, c, json).await,
                            Command::Task(c) => cmd::misc::task(&client, c, json).await,
                            Command::Events(a) => cmd::misc::events(&client, a, json).await,
                            Command::Token(c) => cmd::auth::token(&client, c, json).await,
                            Command::Audit(a) => cmd::auth::audit(&client, a, json).await,
                            Command::Serve(_)
                            | Command::Measure(_)
                            | Command::Plan(_)
                            | Command::P2v(_)
                            | Command::FenceGuard { .. } => {
                                unreachable!("handled above")
                            }
                        }
                    });
                    // Do not wait for blocking tasks: a detached console leaves tokio's stdin
                    // thread in a read(2) that only the next key press would end.
                    rt.shutdown_background();
                    result
                }
            },
        },
    };
    if let Err(e) = result {
        output::print_error(&e, json);
        std::process::exit(1);
    }
}

/// A small runtime for CLI commands: they do one request at a time.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
