//! Following a long task from the CLI: `follow_task` polls the task until it finishes and draws
//! what it reports (phase, progress, bytes with rate and ETA). On a terminal that is a progress
//! bar on stderr; without one (scripts, CI) each new phase is one line on stderr; with `--json`
//! nothing is drawn, so stdout stays machine-readable. A failed task becomes the agent's
//! `ApiError`, so the CLI prints it like any other error.

use corral_client::Client;
use corral_model::task::{Task, TaskState};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Polls start fast (short tasks finish in milliseconds; the user should not wait a whole
/// interval for them) and slow down to this.
const POLL: Duration = Duration::from_millis(250);
const FIRST_POLL: Duration = Duration::from_millis(10);

/// Wait for task `id` to finish, showing its progress unless `quiet`. Returns the finished task
/// when it succeeded, the task's error when it failed or was cancelled.
pub async fn follow_task(c: &Client, id: &str, quiet: bool) -> anyhow::Result<Task> {
    let task = watch_task(c, id, quiet).await?;
    match task.state {
        TaskState::Succeeded => Ok(task),
        TaskState::Cancelled => anyhow::bail!(
            "task {} was cancelled{}",
            task.id,
            task.result
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        _ => match task.error {
            Some(e) => Err(corral_client::ClientError::Api(e).into()),
            None => anyhow::bail!("task {} failed without a reason", task.id),
        },
    }
}

/// Wait for task `id` to finish, showing its progress unless `quiet`; the finished task,
/// whatever its outcome.
pub async fn watch_task(c: &Client, id: &str, quiet: bool) -> anyhow::Result<Task> {
    let draw = !quiet && std::io::stderr().is_terminal();
    let bar = if draw {
        let b = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
        b.enable_steady_tick(Duration::from_millis(200));
        Some(b)
    } else {
        None
    };
    let mut last_phase = String::new();
    let mut poll = FIRST_POLL;
    let task = loop {
        let t = c.show_task(id, false).await?;
        if let Some(b) = &bar {
            render(b, &t);
        } else if !quiet && t.phase != last_phase {
            eprintln!("{}: {}", t.operation, t.phase);
        }
        last_phase.clone_from(&t.phase);
        if t.state.is_finished() {
            break t;
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(POLL);
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(task)
}

/// The bar for a byte count: `LABEL [=====>   ] 1.2 GiB/4 GiB 300 MiB/s ETA 9s`; `label` is
/// literal text or an indicatif field such as `{msg}`.
pub fn bytes_style(label: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{label} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn render(b: &ProgressBar, t: &Task) {
    match (t.bytes_done, t.bytes_total) {
        (Some(done), Some(total)) if total > 0 => {
            if b.length() != Some(total) {
                b.set_length(total);
                b.set_style(bytes_style("{msg:30!}"));
            }
            b.set_position(done);
        }
        _ => {
            if b.length() != Some(1000) {
                b.set_length(1000);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg:30!} [{bar:30}] {percent:>3}% {elapsed}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
            }
            b.set_position((t.progress * 1000.0) as u64);
        }
    }
    b.set_message(phase_line(t));
}

/// The phase, with a migration's dirty rate and expected downtime when it has them.
fn phase_line(t: &Task) -> String {
    let m = &t.migration;
    match (m.dirty_rate_bytes_per_s, m.expected_downtime_ms) {
        (Some(d), Some(ms)) => format!(
            "{} (dirty {}/s, downtime ~{ms} ms)",
            t.phase,
            corral_model::format_size(d)
        ),
        _ => t.phase.clone(),
    }
}
