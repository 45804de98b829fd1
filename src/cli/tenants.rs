//! `vend tenants ...`: list, show, history, retry, requeue, offboard, restore, tier and watch, over the
//! ops API.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use crate::domain::{StepState, TenantState};
use crate::http::views::{BulkRetryView, HistoryView, TenantDetail, TenantPage};

use super::client::OpsClient;

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(flatten)]
    api: super::client::ApiArgs,
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// List tenants, newest first.
    List {
        /// Only tenants in this state (pending, provisioning, active, failed).
        #[arg(long)]
        state: Option<String>,
        /// Page size (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this cursor (printed after a full page).
        #[arg(long)]
        cursor: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Show a tenant and each step of its workflow.
    Show { slug: String },
    /// Show every transition, attempt, error and operator action.
    History { slug: String },
    /// Run the failed or backing-off step now.
    Retry { slug: String },
    /// Retry every tenant whose current run has a failed step (at most 1,000 a call).
    RetryFailed {
        /// Only tenants failed at this step.
        #[arg(long)]
        step: Option<String>,
        /// Only tenants whose failed step ended with this error code.
        #[arg(long)]
        error_code: Option<String>,
        /// List the tenants that would be retried; retry none.
        #[arg(long)]
        dry_run: bool,
    },
    /// Rewind to a step and run from there.
    Requeue {
        slug: String,
        /// The step to start again from.
        #[arg(long = "from")]
        from: String,
    },
    /// Offboard the tenant: its endpoint goes dark now; after the grace period (VEND_OFFBOARD_GRACE)
    /// its resources are deleted and its account closed.
    Offboard {
        slug: String,
        /// Why the tenant leaves (kept in its history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Bring an offboarding tenant back while its grace period lasts.
    Restore { slug: String },
    /// Move the tenant to another tier (free, pro, enterprise): pro <-> free changes its usage plan,
    /// enterprise gives it an account of its own, free or pro from enterprise moves it into the pool
    /// and closes its account after the grace period. It stays active and reachable throughout.
    Tier { slug: String, tier: String },
    /// Open drift findings of a tenant (what differs in AWS from what vend made).
    Drift { slug: String },
    /// Follow a tenant's steps until it is active or closed (exit 0) or failed, or an offboarding step
    /// failed (exit 1).
    Watch {
        slug: String,
        /// How often to look.
        #[arg(long, default_value = "1s", value_parser = super::parse_interval)]
        interval: Duration,
        /// Give up after this long (exit 2).
        #[arg(long, value_parser = super::parse_interval)]
        timeout: Option<Duration>,
    },
}

pub async fn run(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    let api = args.api.client()?;
    let json_out = args.api.json;
    match args.command {
        TenantsCommand::List {
            state,
            limit,
            cursor,
            all,
        } => {
            let mut cursor = cursor;
            let mut first = true;
            loop {
                let mut q = vec![format!("limit={limit}")];
                if let Some(s) = &state {
                    q.push(format!("state={}", urlencode(s)));
                }
                if let Some(c) = &cursor {
                    q.push(format!("cursor={}", urlencode(c)));
                }
                let page: TenantPage = api
                    .call(Method::GET, &format!("/v1/tenants?{}", q.join("&")), None)
                    .await?;
                if json_out {
                    println!("{}", serde_json::to_string_pretty(&page)?);
                } else {
                    print_tenants(&page, first);
                }
                first = false;
                match (all, page.next_cursor) {
                    (true, Some(c)) => cursor = Some(c),
                    (false, Some(c)) if !json_out => {
                        println!("more: vend tenants list --cursor {c}");
                        break;
                    }
                    _ => break,
                }
            }
        }
        TenantsCommand::Show { slug } => {
            let t: TenantDetail = api.call(Method::GET, &tenant_path(&slug, ""), None).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print_detail(&t);
            }
        }
        TenantsCommand::History { slug } => {
            // Every page, so the CLI shows the whole history however long it is.
            let mut h: HistoryView = api
                .call(Method::GET, &tenant_path(&slug, "/history"), None)
                .await?;
            while let Some(cursor) = h.next_cursor.take() {
                let next: HistoryView = api
                    .call(
                        Method::GET,
                        &tenant_path(&slug, &format!("/history?cursor={cursor}")),
                        None,
                    )
                    .await?;
                h.history.extend(next.history);
                h.next_cursor = next.next_cursor;
            }
            if json_out {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                for e in &h.history {
                    let times = e
                        .detail
                        .as_ref()
                        .and_then(|d| d.get("count"))
                        .and_then(serde_json::Value::as_u64)
                        .map(|n| format!(" (x{n})"))
                        .unwrap_or_default();
                    println!(
                        "{}  {:<16} {:<20} {}{times}{}",
                        e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                        e.kind,
                        e.step.as_deref().unwrap_or("-"),
                        e.message,
                        e.actor
                            .as_deref()
                            .map(|a| format!("  [{a}]"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        TenantsCommand::Retry { slug } => {
            let t: TenantDetail = api
                .call(Method::POST, &tenant_path(&slug, "/retry"), None)
                .await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("retry requested for {slug}");
                print_detail(&t);
            }
        }
        TenantsCommand::RetryFailed {
            step,
            error_code,
            dry_run,
        } => {
            let body = json!({ "step": step, "error_code": error_code, "dry_run": dry_run });
            let r: BulkRetryView = api.call(Method::POST, "/v1/retries", Some(&body)).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for t in &r.tenants {
                    println!(
                        "{:<32} {:<20} {}",
                        t.slug,
                        t.step,
                        t.error_code.as_deref().unwrap_or("")
                    );
                }
                if r.dry_run {
                    println!("{} failed tenants match; none retried (dry run)", r.matched);
                } else {
                    println!(
                        "{} failed tenants matched, {} retried",
                        r.matched,
                        r.retried.len()
                    );
                }
            }
        }
        TenantsCommand::Requeue { slug, from } => {
            let body = json!({ "from_step": from });
            let t: TenantDetail = api
                .call(Method::POST, &tenant_path(&slug, "/requeue"), Some(&body))
                .await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("requeued {slug} from {from}");
                print_detail(&t);
            }
        }
        TenantsCommand::Offboard { slug, reason } => {
            let body = json!({ "reason": reason });
            let t: TenantDetail = api
                .call(Method::POST, &tenant_path(&slug, "/offboard"), Some(&body))
                .await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("offboarding {slug}");
                print_detail(&t);
            }
        }
        TenantsCommand::Tier { slug, tier } => {
            let body = json!({ "tier": tier });
            let t: TenantDetail = api
                .call(Method::POST, &tenant_path(&slug, "/tier"), Some(&body))
                .await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("moving {slug} to {tier}");
                print_detail(&t);
            }
        }
        TenantsCommand::Drift { slug } => {
            let v: serde_json::Value = api
                .call(
                    Method::GET,
                    &format!("/v1/drift?tenant={}", urlencode(&slug)),
                    None,
                )
                .await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list = v["findings"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("{slug}: no drift");
                }
                for f in list {
                    println!(
                        "{}  {}  {}{}",
                        f["detected_at"].as_str().unwrap_or(""),
                        f["resource"].as_str().unwrap_or(""),
                        f["detail"].as_str().unwrap_or(""),
                        if f["repaired_at"].is_string() {
                            "  (repair started)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        TenantsCommand::Restore { slug } => {
            let t: TenantDetail = api
                .call(Method::POST, &tenant_path(&slug, "/restore"), None)
                .await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("restored {slug}");
                print_detail(&t);
            }
        }
        TenantsCommand::Watch {
            slug,
            interval,
            timeout,
        } => {
            return watch(&api, &slug, interval, timeout, json_out).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(
    api: &OpsClient,
    slug: &str,
    interval: Duration,
    timeout: Option<Duration>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let started = tokio::time::Instant::now();
    let mut last: Vec<String> = Vec::new();
    loop {
        let t: TenantDetail = api.call(Method::GET, &tenant_path(slug, ""), None).await?;
        let lines: Vec<String> = t.steps.iter().map(step_line).collect();
        if json_out {
            if lines != last {
                println!("{}", serde_json::to_string(&t)?);
            }
        } else {
            for (i, line) in lines.iter().enumerate() {
                if last.get(i) != Some(line) {
                    println!("{}  {line}", chrono::Utc::now().format("%H:%M:%S"));
                }
            }
        }
        last = lines;
        match t.tenant.state {
            TenantState::Active => {
                if !json_out {
                    println!(
                        "{slug} is active{}",
                        t.tenant
                            .endpoint
                            .as_deref()
                            .map(|e| format!(" at {e}"))
                            .unwrap_or_default()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            TenantState::Closed => {
                if !json_out {
                    println!("{slug} is closed");
                }
                return Ok(ExitCode::SUCCESS);
            }
            // An offboarding tenant whose step failed stays offboarding: that is the end of a watch.
            TenantState::Failed | TenantState::Offboarding
                if t.tenant.state == TenantState::Failed
                    || t.steps.iter().any(|s| s.state == StepState::Failed) =>
            {
                if !json_out {
                    let failed = t.steps.iter().find(|s| s.state == StepState::Failed);
                    eprintln!(
                        "{slug} failed{}",
                        failed
                            .map(|s| format!(
                                " at {}: {}",
                                s.name,
                                s.last_error.as_deref().unwrap_or("")
                            ))
                            .unwrap_or_default()
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            eprintln!(
                "gave up watching {slug} after {}",
                humantime::format_duration(started.elapsed())
            );
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(interval).await;
    }
}

fn step_line(s: &crate::http::views::StepView) -> String {
    let mut line = format!(
        "{:<20} {:<10} attempts={}",
        s.name,
        s.state.as_str(),
        s.attempts
    );
    if let Some(r) = &s.wait_reason {
        line.push_str(&format!(" ({r})"));
    }
    if let Some(e) = &s.last_error
        && s.state != StepState::Succeeded
    {
        line.push_str(&format!(" last_error={e}"));
    }
    line
}

fn print_tenants(page: &TenantPage, header: bool) {
    if header {
        println!(
            "{:<24} {:<13} {:<11} {:<14} CREATED",
            "SLUG", "STATE", "TIER", "ACCOUNT"
        );
    }
    for t in &page.tenants {
        println!(
            "{:<24} {:<13} {:<11} {:<14} {}",
            t.slug,
            t.state.as_str(),
            t.tier.as_str(),
            t.account_id.as_deref().unwrap_or("-"),
            t.created_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
}

fn print_detail(t: &TenantDetail) {
    let v = &t.tenant;
    println!("tenant    {} ({})", v.slug, v.name);
    println!("state     {}", v.state.as_str());
    println!("tier      {} (workflow {})", v.tier.as_str(), v.workflow);
    println!("account   {}", v.account_id.as_deref().unwrap_or("-"));
    println!("endpoint  {}", v.endpoint.as_deref().unwrap_or("-"));
    println!("created   {}", v.created_at.format("%Y-%m-%d %H:%M:%S"));
    println!();
    println!(
        "{:<20} {:<10} {:>8}  {:<20} LAST ERROR",
        "STEP", "STATE", "ATTEMPTS", "NEXT ATTEMPT"
    );
    for s in &t.steps {
        println!(
            "{:<20} {:<10} {:>8}  {:<20} {}",
            s.name,
            s.state.as_str(),
            s.attempts,
            s.next_attempt_at
                .map(|d| d.format("%H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            s.last_error.as_deref().unwrap_or("")
        );
    }
}

fn tenant_path(slug: &str, suffix: &str) -> String {
    format!("/v1/tenants/{}{suffix}", urlencode(slug))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
