//! The `vend` command line: `serve`, `migrate`, and the ops commands over the HTTP ops API.

mod client;
mod fleet;
mod tenants;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Parts};
use crate::config::{Config, ProcessEnv};

#[derive(Debug, Parser)]
#[command(name = "vend", version, about = "Account-vending control plane")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API, the workers and the outbox dispatcher (configured by environment).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect and steer tenants through the ops API (VEND_URL, VEND_OPS_TOKEN).
    Tenants(tenants::TenantsArgs),
    /// Fleet operations through the ops API: rollouts of a stack template in waves.
    Fleet(fleet::FleetArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Do not run workers in this process.
    #[arg(long)]
    no_workers: bool,
    /// Do not serve HTTP in this process.
    #[arg(long)]
    no_api: bool,
    /// Do not deliver progress events from this process.
    #[arg(long)]
    no_dispatcher: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            crate::telemetry::init();
            let config = Config::from_env(&ProcessEnv)?;
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                stop.cancel();
            });
            let parts = Parts {
                api: !args.no_api,
                workers: !args.no_workers,
                dispatcher: !args.no_dispatcher,
            };
            app::serve(config, parts, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            crate::telemetry::init();
            let url = std::env::var("DATABASE_URL").map_err(|_| {
                anyhow::anyhow!("DATABASE_URL: is required (a postgres:// connection string)")
            })?;
            let pool = crate::db::connect(&url, 2).await?;
            crate::db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenants(args) => tenants::run(args).await,
        Command::Fleet(args) => fleet::run(args).await,
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_parse_as_documented() {
        for args in [
            vec!["vend", "serve", "--no-workers"],
            vec!["vend", "migrate"],
            vec!["vend", "tenants", "list", "--state", "failed", "--json"],
            vec![
                "vend",
                "tenants",
                "requeue",
                "acme",
                "--from",
                "deploy_stack",
            ],
            vec!["vend", "tenants", "watch", "acme", "--interval", "2s"],
            vec![
                "vend",
                "tenants",
                "retry-failed",
                "--step",
                "deploy_stack",
                "--dry-run",
            ],
        ] {
            assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
        }
        assert!(Cli::try_parse_from(["vend", "tenants", "requeue", "acme"]).is_err());
    }
}
