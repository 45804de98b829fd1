//! `vend-aws-proxy`: the fault-injecting AWS proxy in front of an emulator, for development and tests.
//! Point vend's `AWS_ENDPOINT_URL` at it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vend_aws_proxy::{Proxy, ProxyConfig};

/// A fault-injecting AWS proxy in front of an emulator: quotas, throttles, 5xx, lost responses and an
/// asynchronous, capped CreateAccount.
#[derive(Debug, Parser)]
#[command(name = "vend-aws-proxy", version)]
struct Args {
    /// The emulator to forward to (e.g. moto).
    #[arg(long)]
    upstream: String,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:4566")]
    listen: SocketAddr,
    /// Probability of a random throttle on any call.
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// Probability of a random 5xx on any call.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Probability that a call is made but its answer replaced by a 5xx.
    #[arg(long, default_value_t = 0.0)]
    lost_response_rate: f64,
    /// How long CreateAccount stays IN_PROGRESS.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    create_account_delay: Duration,
    /// CreateAccount requests allowed in progress at once.
    #[arg(long, default_value_t = 5)]
    create_account_cap: usize,
    /// CloseAccount requests allowed per --close-account-window (default: no limit).
    #[arg(long)]
    close_account_quota: Option<usize>,
    /// The rolling window of that quota.
    #[arg(long, default_value = "30d", value_parser = parse_interval)]
    close_account_window: Duration,
    /// Turn off the quotas from AWS's published figures.
    #[arg(long)]
    no_quotas: bool,
    /// Seed of the fault dice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = Args::parse();
    let mut config = ProxyConfig::new(&a.upstream);
    config.throttle_rate = a.throttle_rate;
    config.error_rate = a.error_rate;
    config.lost_response_rate = a.lost_response_rate;
    config.create_account_delay = a.create_account_delay;
    config.create_account_cap = a.create_account_cap;
    config.close_account_quota = a.close_account_quota;
    config.close_account_window = a.close_account_window;
    config.seed = a.seed;
    if a.no_quotas {
        config.quotas.clear();
    }
    let listener = match tokio::net::TcpListener::bind(a.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", a.listen);
            return ExitCode::FAILURE;
        }
    };
    println!(
        "vend-aws-proxy on http://{} -> {} (stats: /_proxy/stats)",
        a.listen, a.upstream
    );
    match Proxy::new(config).serve(listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
        assert!(
            Args::try_parse_from(["vend-aws-proxy", "--upstream", "http://127.0.0.1:5000"]).is_ok()
        );
        assert!(
            Args::try_parse_from(["vend-aws-proxy"]).is_err(),
            "--upstream is required"
        );
    }
}
