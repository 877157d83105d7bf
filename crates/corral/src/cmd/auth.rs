//! `corral token` (named API tokens with a role) and `corral audit` (who did what): thin
//! layers over the client's `/v1/tokens` and `/v1/audit` calls.

use crate::output;
use anyhow::Context;
use clap::Subcommand;
use corral_client::Client;
use corral_model::auth::{parse_duration, AuditQuery, Role, TokenCreateRequest};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token for a person or a program; prints its secret once (keep it: it cannot
    /// be shown again).
    Create {
        name: String,
        /// admin (everything), operator (power and consoles), viewer (reads).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Only VMs whose name matches this pattern (`*` and `?`; viewer and operator).
        #[arg(long, value_name = "PATTERN")]
        vms: Option<String>,
        /// Lifetime, e.g. 12h, 30d, 2w; without it the token lasts until revoked.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<u64>,
    },
    /// Tokens with their role, VM pattern, creation, expiry and last use (never secrets).
    List,
    /// Revoke a token: every host of the pool refuses it from its next request.
    Revoke { name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Only entries since this long ago (1h, 7d) or this time (2026-01-02T03:04:05Z).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only entries about this VM.
    #[arg(long)]
    vm: Option<String>,
}

pub async fn token(c: &Client, cmd: TokenCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            vms,
            expires,
        } => {
            let made = c
                .create_token(&TokenCreateRequest {
                    name,
                    role,
                    vms,
                    expires_in_secs: expires,
                })
                .await?;
            if json {
                output::json(&made);
            } else {
                let t = &made.token;
                println!("{}", made.secret);
                eprintln!(
                    "token {:?} ({}{}), {}; the secret above is shown only now",
                    t.name,
                    t.role,
                    t.vms
                        .as_deref()
                        .map(|p| format!(", VMs {p}"))
                        .unwrap_or_default(),
                    t.expires_ms
                        .map(|ms| format!("expires {}", output::time(ms)))
                        .unwrap_or_else(|| "never expires".into()),
                );
            }
        }
        TokenCommand::List => {
            let tokens = c.list_tokens().await?;
            if json {
                output::json(&tokens);
                return Ok(());
            }
            let when = |ms: Option<u64>, none: &str| ms.map(output::time).unwrap_or(none.into());
            output::table(
                &["NAME", "ROLE", "VMS", "CREATED", "EXPIRES", "LAST USED"],
                tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.role.to_string(),
                            t.vms.clone().unwrap_or_else(|| "*".into()),
                            output::time(t.created_ms),
                            when(t.expires_ms, "never"),
                            when(t.last_used_ms, "-"),
                        ]
                    })
                    .collect(),
            );
        }
        TokenCommand::Revoke { name } => {
            c.revoke_token(&name).await?;
            if !json {
                println!("token {name:?} revoked");
            }
        }
    }
    Ok(())
}

pub async fn audit(c: &Client, args: AuditArgs, json: bool) -> anyhow::Result<()> {
    let since_ms = args
        .since
        .as_deref()
        .map(|s| since(s, corral_model::time::now_ms()))
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("bad --since")?;
    let entries = c
        .audit(&AuditQuery {
            since_ms,
            vm: args.vm,
        })
        .await?;
    if json {
        output::json(&entries);
        return Ok(());
    }
    output::table(
        &["TIME", "WHO", "ROLE", "FROM", "REQUEST", "VM", "STATUS"],
        entries
            .iter()
            .map(|e| {
                vec![
                    output::time(e.time_ms),
                    e.who.clone(),
                    e.role.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    e.peer.clone(),
                    format!("{} {}", e.method, e.path),
                    e.vm.clone().unwrap_or_else(|| "-".into()),
                    e.status.to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `--since`: a duration back from `now_ms`, or a UTC time.
fn since(text: &str, now_ms: u64) -> Result<u64, String> {
    if text.trim().starts_with(|c: char| c.is_ascii_digit()) && text.len() < 10 {
        return parse_duration(text).map(|s| now_ms.saturating_sub(s * 1000));
    }
    corral_model::time::parse_utc(text.trim()).ok_or_else(|| {
        format!("{text:?} is neither a duration (1h, 7d) nor a time such as 2026-01-02T03:04:05Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = 1_700_000_000_000;
        assert_eq!(since("1h", now), Ok(now - 3_600_000));
        assert_eq!(since("2023-11-14T22:13:20Z", now), Ok(1_700_000_000_000));
        for bad in [
            "yesterday",
            "1x",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
        ] {
            assert!(since(bad, now).is_err(), "{bad}");
        }
        // What `corral audit` prints reads back as the same time.
        assert_eq!(since(&output::time(1_234_567_000), now), Ok(1_234_567_000));
    }
}
