//! The convergence policy of a live migration, as a pure state machine: fed one sample of
//! QEMU's figures about every half second, it says when to escalate and why.
//!
//! Pre-copy converges when the memory still to send shrinks until it fits in the downtime
//! limit. When it stops shrinking for `stall` (the guest dirties memory as fast as the link
//! carries it), the policy escalates one step at a time, each given `stall` to work:
//! 1. throttle the vCPUs (QEMU's auto-converge, 20 % rising by 10 % per round);
//! 2. raise the downtime limit to what the remaining memory needs at the measured rate, up
//!    to the user's `--max-downtime`;
//! 3. switch to post-copy, if the user allowed it;
//! 4. give up, with the figures that show why. The deadline gives up at any stage.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub start_downtime_ms: u64,
    pub max_downtime_ms: u64,
    pub postcopy: bool,
    pub deadline: Duration,
    /// How long remaining memory may stay flat before the next step.
    pub stall: Duration,
}

/// One reading of `query-migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Time since the memory phase began.
    pub at: Duration,
    pub remaining: u64,
    pub dirty_rate: u64,
    pub transfer_rate: u64,
    /// Dirty-bitmap syncs so far: the first pass over memory ends at the second. Before it
    /// QEMU knows no dirty rate and `remaining` moves in steps, so nothing is escalated.
    pub passes: u64,
}

/// What the driver must do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Throttle { reason: String },
    RaiseDowntime { to_ms: u64, reason: String },
    Postcopy { reason: String },
    GiveUp { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Plain,
    Throttled,
    Downtime,
    Postcopy,
}

#[derive(Debug, Clone)]
pub struct Converge {
    policy: Policy,
    stage: Stage,
    downtime_ms: u64,
    /// The lowest remaining seen, and when it was last lowered by at least 1 %.
    best: u64,
    progress_at: Duration,
    given_up: bool,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

impl Converge {
    pub fn new(policy: Policy) -> Self {
        Converge {
            downtime_ms: policy.start_downtime_ms,
            policy,
            stage: Stage::Plain,
            best: u64::MAX,
            progress_at: Duration::ZERO,
            given_up: false,
        }
    }

    /// The downtime limit in force.
    pub fn downtime_ms(&self) -> u64 {
        self.downtime_ms
    }

    fn figures(&self, s: &Sample) -> String {
        format!(
            "{} still to send, the guest dirties {}/s, the link carries {}/s",
            mib(s.remaining),
            mib(s.dirty_rate),
            mib(s.transfer_rate)
        )
    }

    /// Take one sample; answers the step to take, if any.
    pub fn observe(&mut self, s: Sample) -> Option<Step> {
        if self.given_up || self.stage == Stage::Postcopy {
            return None;
        }
        if s.at >= self.policy.deadline {
            self.given_up = true;
            return Some(Step::GiveUp {
                reason: format!(
                    "did not converge within its deadline of {} s: {}; the downtime limit was {} ms",
                    self.policy.deadline.as_secs(),
                    self.figures(&s),
                    self.downtime_ms
                ),
            });
        }
        if s.passes < 2 {
            self.progress_at = s.at;
            return None;
        }
        if s.remaining < self.best.saturating_sub(self.best / 100) || self.best == u64::MAX {
            self.best = s.remaining;
            self.progress_at = s.at;
            return None;
        }
        if s.at.saturating_sub(self.progress_at) < self.policy.stall {
            return None;
        }
        // Stalled: the next step, which gets a full window of its own.
        self.progress_at = s.at;
        self.best = s.remaining;
        let why = format!(
            "remaining memory stopped shrinking for {} s ({})",
            self.policy.stall.as_secs(),
            self.figures(&s)
        );
        match self.stage {
            Stage::Plain => {
                self.stage = Stage::Throttled;
                Some(Step::Throttle {
                    reason: format!("{why}: throttling the vCPUs (auto-converge)"),
                })
            }
            Stage::Throttled | Stage::Downtime
                if self.downtime_ms < self.policy.max_downtime_ms =>
            {
                self.stage = Stage::Downtime;
                // What sending the rest in one pause would take, with a fifth to spare.
                let needed = s
                    .remaining
                    .saturating_mul(1200)
                    .checked_div(s.transfer_rate)
                    .unwrap_or(u64::MAX);
                let to = needed
                    .max(self.downtime_ms.saturating_mul(2))
                    .min(self.policy.max_downtime_ms);
                self.downtime_ms = to;
                Some(Step::RaiseDowntime {
                    to_ms: to,
                    reason: format!("{why}: downtime limit raised to {to} ms"),
                })
            }
            _ if self.policy.postcopy => {
                self.stage = Stage::Postcopy;
                Some(Step::Postcopy {
                    reason: format!(
                        "{why} at the largest allowed downtime ({} ms): switching to post-copy",
                        self.downtime_ms
                    ),
                })
            }
            _ => {
                self.given_up = true;
                Some(Step::GiveUp {
                    reason: format!(
                        "cannot converge: {} even with the vCPUs throttled and the downtime limit at its maximum of {} ms (allow more with --max-downtime, or --postcopy)",
                        self.figures(&s),
                        self.downtime_ms
                    ),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn policy(postcopy: bool) -> Policy {
        Policy {
            start_downtime_ms: 50,
            max_downtime_ms: 300,
            postcopy,
            deadline: Duration::from_secs(100),
            stall: Duration::from_secs(3),
        }
    }

    /// Feed `remaining` (MiB) one per half second; the steps taken, by kind and time.
    fn run(policy: Policy, remaining: &[u64]) -> Vec<(f64, String)> {
        let mut c = Converge::new(policy);
        let mut out = Vec::new();
        for (i, r) in remaining.iter().enumerate() {
            let s = Sample {
                at: Duration::from_millis(500 * i as u64),
                remaining: r * MB,
                dirty_rate: 40 * MB,
                transfer_rate: 40 * MB,
                passes: 2,
            };
            if let Some(step) = c.observe(s) {
                let kind = match step {
                    Step::Throttle { .. } => "throttle".to_string(),
                    Step::RaiseDowntime { to_ms, .. } => format!("downtime {to_ms}"),
                    Step::Postcopy { .. } => "postcopy".into(),
                    Step::GiveUp { .. } => "give up".into(),
                };
                out.push((s.at.as_secs_f64(), kind));
            }
        }
        out
    }

    #[test]
    fn a_shrinking_migration_is_left_alone() {
        let r: Vec<u64> = (0..40).map(|i| 512 - i * 12).collect();
        assert!(run(policy(false), &r).is_empty());
        // A slow first pass over a thin link (1 MiB a sample) is progress too.
        let slow: Vec<u64> = (0..40).map(|i| 190 - i).collect();
        assert!(run(policy(false), &slow).is_empty());
    }

    #[test]
    fn a_stall_escalates_step_by_step_then_gives_up() {
        let flat = vec![64; 40];
        let steps = run(policy(false), &flat);
        let kinds: Vec<&str> = steps.iter().map(|(_, k)| k.as_str()).collect();
        // 64 MiB at 40 MiB/s needs 1.6 s: the limit goes straight to the 300 ms ceiling.
        assert_eq!(kinds, ["throttle", "downtime 300", "give up"]);
        assert_eq!(steps[0].0, 3.0);
        assert_eq!(steps[1].0, 6.0);
    }

    #[test]
    fn downtime_rises_to_what_the_rest_needs_and_postcopy_is_last() {
        // 4 MiB at 40 MiB/s: 100 ms, with a fifth to spare 120, at least double of 50.
        let steps = run(policy(true), &[4; 40]);
        let kinds: Vec<&str> = steps.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "throttle",
                "downtime 120",
                "downtime 240",
                "downtime 300",
                "postcopy"
            ]
        );
    }

    #[test]
    fn nothing_escalates_during_the_first_pass() {
        let mut c = Converge::new(policy(false));
        for i in 0..40 {
            let s = Sample {
                at: Duration::from_millis(500 * i),
                remaining: 187 * MB,
                passes: 1,
                ..Sample::default()
            };
            assert_eq!(c.observe(s), None);
        }
    }

    #[test]
    fn the_deadline_gives_up_with_the_figures() {
        let mut c = Converge::new(Policy {
            deadline: Duration::from_secs(2),
            ..policy(true)
        });
        let step = c.observe(Sample {
            at: Duration::from_secs(2),
            remaining: 100 * MB,
            dirty_rate: 80 * MB,
            transfer_rate: 10 * MB,
            passes: 1,
        });
        let Some(Step::GiveUp { reason }) = step else {
            panic!("{step:?}")
        };
        assert!(reason.contains("deadline of 2 s"), "{reason}");
        assert!(reason.contains("100.0 MiB still to send"), "{reason}");
        assert!(reason.contains("dirties 80.0 MiB/s"), "{reason}");
        assert_eq!(c.observe(Sample::default()), None);
    }
}
