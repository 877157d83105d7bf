//! Jobs: long work on one VM that runs off the actor's loop while the actor keeps serving
//! commands. A job has a kind (what it does, which decides what the state table allows
//! meanwhile: a lease refuses disk writers, a pending shutdown allows a poweroff), the task
//! it reports to, an optional deadline, and a way to end it (cancel, expiry, or the event it
//! waits for). The actor keeps them in a [`Jobs`] set and wakes for the first deadline or
//! cancellation among them.
//!
//! Kinds today: `Shutdown` (ACPI button pressed, waiting for QEMU to exit; cancellable),
//! `Lease` (an export or copy reading the halted VM's disks; ends when its holder drops it).
//! `Migrate` (a live migration's driver runs in its own task; it ends when the driver hands
//! its outcome back to the actor).

use super::state::LeaseKind;
use super::Lease;
use crate::error::Error;
use crate::tasks::TaskHandle;
use std::sync::Weak;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub enum JobKind {
    /// Waiting for the guest to power off after the ACPI button; `presser` presses it again
    /// every few seconds; `reply` answers the caller when QEMU exits.
    Shutdown {
        presser: tokio::task::JoinHandle<()>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// A read hold on the disks, alive while its holder keeps the `Arc<Lease>`.
    Lease(Weak<Lease>),
    /// A live migration to another member (`crate::migrate`); cancelled through its task,
    /// which the driver watches itself.
    Migrate,
}

pub struct Job {
    pub kind: JobKind,
    /// The task the job reports to (a lease's task belongs to its holder).
    pub task: Option<TaskHandle>,
    pub deadline: Option<Instant>,
}

impl Job {
    fn alive(&self) -> bool {
        match &self.kind {
            JobKind::Lease(l) => l.strong_count() > 0,
            JobKind::Shutdown { .. } | JobKind::Migrate => true,
        }
    }
}

/// How a job ended, for [`Jobs::finish`].
pub enum Ending {
    /// What it waited for happened (QEMU exited): success.
    Done,
    /// Ended with this error (expired, cancelled).
    Failed(Error),
    /// Cancelled by the user: the task ends `cancelled` with this note.
    Cancelled(String),
}

#[derive(Default)]
pub struct Jobs {
    jobs: Vec<Job>,
}

impl Jobs {
    pub fn add(&mut self, job: Job) {
        self.jobs.push(job);
    }

    /// Drop jobs whose holder has gone (released leases).
    fn prune(&mut self) {
        self.jobs.retain(Job::alive);
    }

    /// The kind of one live lease, if any.
    pub fn lease(&mut self) -> Option<LeaseKind> {
        self.prune();
        self.jobs.iter().find_map(|j| match &j.kind {
            JobKind::Lease(l) => l.upgrade().map(|l| l.kind),
            _ => None,
        })
    }

    pub fn shutting_down(&self) -> bool {
        self.jobs
            .iter()
            .any(|j| matches!(j.kind, JobKind::Shutdown { .. }))
    }

    pub fn migrating(&self) -> bool {
        self.jobs.iter().any(|j| matches!(j.kind, JobKind::Migrate))
    }

    /// End the migration job; answers its task.
    pub fn end_migration(&mut self) -> Option<TaskHandle> {
        self.take(|j| matches!(j.kind, JobKind::Migrate))
            .into_iter()
            .find_map(|j| j.task)
    }

    /// The earliest deadline among the jobs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.jobs.iter().filter_map(|j| j.deadline).min()
    }

    /// Tasks of jobs that stop when cancelled.
    pub fn cancellable(&self) -> Vec<TaskHandle> {
        self.jobs
            .iter()
            .filter(|j| matches!(j.kind, JobKind::Shutdown { .. }))
            .filter_map(|j| j.task.clone())
            .collect()
    }

    /// Remove and return the jobs `pick` selects.
    fn take(&mut self, pick: impl Fn(&Job) -> bool) -> Vec<Job> {
        let (taken, kept): (Vec<Job>, Vec<Job>) = self.jobs.drain(..).partition(pick);
        self.jobs = kept;
        taken
    }

    /// End the shutdowns (all of them, or the one of `task_id`) with `ending`.
    pub fn finish_shutdowns(&mut self, task_id: Option<&str>, ending: impl Fn() -> Ending) {
        let ended = self.take(|j| {
            matches!(j.kind, JobKind::Shutdown { .. })
                && task_id.is_none_or(|id| j.task.as_ref().is_some_and(|t| t.id == id))
        });
        for job in ended {
            finish(job, ending());
        }
    }

    /// End the jobs whose deadline has passed, each with the error `expired` makes.
    pub fn expire(&mut self, now: Instant, expired: impl Fn(&Job) -> Error) {
        let ended = self.take(|j| j.deadline.is_some_and(|d| d <= now));
        for job in ended {
            let e = expired(&job);
            finish(job, Ending::Failed(e));
        }
    }
}

fn finish(job: Job, ending: Ending) {
    let JobKind::Shutdown { presser, reply } = job.kind else {
        return;
    };
    presser.abort();
    let answer = match ending {
        Ending::Done => {
            if let Some(t) = &job.task {
                t.succeed(None);
            }
            Ok(())
        }
        Ending::Failed(e) => {
            if let Some(t) = &job.task {
                t.fail(&e);
            }
            Err(e)
        }
        Ending::Cancelled(note) => {
            if let Some(t) = &job.task {
                t.cancelled_with(&note);
            }
            Err(Error::new(corral_model::ErrorKind::InvalidState, note))
        }
    };
    let _ = reply.send(answer);
}
