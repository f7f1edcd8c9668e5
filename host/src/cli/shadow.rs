//! `switchyard shadow start|status|promote|drop NAME`: the admin API of a
//! module's shadow (see `ingress::http::shadow`), from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ShadowAction {
    /// Load FILE as a candidate of module NAME: it sees a copy of every
    /// message NAME handles; its effects are compared, never committed.
    Start { name: String, file: PathBuf },
    /// What the candidate did so far: counts and the last differences.
    Status { name: String },
    /// Make the candidate the serving version (like a reload).
    Promote {
        name: String,
        /// Refuse when it differed on more than this share of the messages
        /// compared (0.0 to 1.0).
        #[arg(long)]
        max_diff_rate: Option<f64>,
    },
    /// Drop the candidate; the serving version is untouched.
    Drop { name: String },
}

/// Sends `action` to the host at `base`.
pub async fn request(
    action: ShadowAction,
    base: &str,
    token: &str,
) -> anyhow::Result<reqwest::Response> {
    let client = reqwest::Client::new();
    let admin = |name: &str| format!("{base}/v1/admin/modules/{name}/shadow");
    let request = match action {
        ShadowAction::Start { name, file } => {
            let bytes = tokio::fs::read(&file)
                .await
                .with_context(|| format!("reading {}", file.display()))?;
            client.put(admin(&name)).body(bytes)
        }
        ShadowAction::Status { name } => client.get(format!("{base}/v1/modules/{name}/shadow")),
        ShadowAction::Promote {
            name,
            max_diff_rate,
        } => {
            let mut r = client.post(format!("{}/promote", admin(&name)));
            if let Some(rate) = max_diff_rate {
                r = r.query(&[("max-diff-rate", rate)]);
            }
            r
        }
        ShadowAction::Drop { name } => client.delete(admin(&name)),
    };
    request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("calling {base}"))
}
