//! `vend fleet rollout ...`: start, follow and steer fleet rollouts over the ops API.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    api: super::client::ApiArgs,
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Roll a stack's template (as it is now in VEND_TEMPLATES_DIR) out to every active silo tenant.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Start a rollout.
    Start {
        /// `tenant` or `baseline`.
        #[arg(long, default_value = "tenant")]
        stack: String,
        /// Tenants in the first wave (default 1).
        #[arg(long)]
        canary: Option<i32>,
        /// Tenants per later wave: N, or P% of the tenants after the canary (default 10).
        #[arg(long)]
        wave_size: Option<String>,
        /// Failures tolerated before the rollout halts (default 0).
        #[arg(long)]
        max_failures: Option<i32>,
    },
    /// One rollout, or every rollout without an id.
    Status { id: Option<String> },
    /// Pause: running updates finish, no new ones start.
    Pause { id: String },
    /// Resume a paused rollout.
    Resume { id: String },
    /// Abort: no new updates start.
    Abort { id: String },
}

fn line(r: &Value) -> String {
    let t = &r["tenants"];
    format!(
        "{}  {:<9} {} stack, version {}  {} of {} updated, {} failed, {} pending",
        r["id"].as_str().unwrap_or(""),
        r["state"].as_str().unwrap_or(""),
        r["stack"].as_str().unwrap_or(""),
        r["version"].as_str().unwrap_or(""),
        t["updated"],
        t["total"],
        t["failed"],
        t["pending"],
    )
}

pub async fn run(args: FleetArgs) -> anyhow::Result<ExitCode> {
    let api = args.api.client()?;
    let FleetCommand::Rollout(cmd) = args.command;
    let (method, path, body) = match cmd {
        RolloutCommand::Start {
            stack,
            canary,
            wave_size,
            max_failures,
        } => (
            Method::POST,
            "/v1/rollouts".to_owned(),
            Some(
                json!({"stack": stack, "canary": canary, "wave_size": wave_size,
                        "max_failures": max_failures}),
            ),
        ),
        RolloutCommand::Status { id: None } => (Method::GET, "/v1/rollouts".to_owned(), None),
        RolloutCommand::Status { id: Some(id) } => {
            (Method::GET, format!("/v1/rollouts/{id}"), None)
        }
        RolloutCommand::Pause { id } => (Method::POST, format!("/v1/rollouts/{id}/pause"), None),
        RolloutCommand::Resume { id } => (Method::POST, format!("/v1/rollouts/{id}/resume"), None),
        RolloutCommand::Abort { id } => (Method::POST, format!("/v1/rollouts/{id}/abort"), None),
    };
    // Unset options are left to the server's defaults.
    let body = body.map(|mut b| {
        if let Some(o) = b.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        b
    });
    let v: Value = api.call(method, &path, body.as_ref()).await?;
    if args.api.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let Some(list) = v["rollouts"].as_array() {
        if list.is_empty() {
            println!("no rollouts");
        }
        for r in list {
            println!("{}", line(r));
        }
    } else {
        println!("{}", line(&v));
    }
    Ok(ExitCode::SUCCESS)
}
