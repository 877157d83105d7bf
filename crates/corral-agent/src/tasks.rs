//! The task registry. Every operation is a task: created when a request arrives, updated with
//! phase and progress by whoever does the work, finished with a result or a typed error, and
//! persisted (`hosts/<host>/tasks/<id>`) so history survives agent restarts. Waiters (the API
//! handler answering a synchronous request) are woken through a watch channel per task.
//!
//! Reads never touch the store: running tasks are in `live`, finished ones in `history`
//! (loaded at start). Writes go to the store through one writer task in order, so progress
//! updates from synchronous code never wait for the database.

use crate::clock::now_ms;
use crate::error::Error;
use crate::events::EventBus;
use corral_model::event::Event;
use corral_model::task::{Operation, Task, TaskState};
use corral_store::{Expect, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// The error of a task that was running when the agent stopped (set at the next start).
pub const INTERRUPTED: &str = "the agent stopped while this task was running";

/// Marks the error of an interrupted task, so a resumed install recognises it by data, not
/// by its message.
fn interrupted_error() -> Error {
    Error::internal(INTERRUPTED).with_details(serde_json::json!({ "interrupted": true }))
}

/// Whether `task` was running when the agent stopped (see [`Tasks::recover`]).
pub fn was_interrupted(task: &Task) -> bool {
    task.error
        .as_ref()
        .and_then(|e| e.details.as_ref())
        .and_then(|d| d.get("interrupted"))
        .and_then(|v| v.as_bool())
        == Some(true)
}

/// Finished tasks kept, in memory and in the store; the oldest go in batches of
/// `HISTORY_SLACK` once there are more.
const HISTORY_LIMIT: usize = 5000;
const HISTORY_SLACK: usize = 500;

/// Drop the oldest finished tasks once the history exceeds its limit by the slack (so the
/// scan runs once per `HISTORY_SLACK` tasks, not at every finish); the ids dropped.
fn prune(history: &mut HashMap<String, Task>) -> Vec<String> {
    if history.len() <= HISTORY_LIMIT + HISTORY_SLACK {
        return Vec::new();
    }
    let mut by_age: Vec<(u64, String)> = history
        .values()
        .map(|t| (t.started_at_ms, t.id.clone()))
        .collect();
    by_age.sort();
    by_age.truncate(history.len() - HISTORY_LIMIT);
    by_age
        .into_iter()
        .map(|(_, id)| {
            history.remove(&id);
            id
        })
        .collect()
}

struct Live {
    tx: watch::Sender<Task>,
    cancel: watch::Sender<bool>,
}

pub struct Tasks {
    events: Arc<EventBus>,
    live: Mutex<HashMap<String, Live>>,
    history: Mutex<HashMap<String, Task>>,
    /// `hosts/<host>/tasks/`.
    prefix: String,
    writer: mpsc::UnboundedSender<Write>,
}

/// A change for the writer task: a task to store, a key to delete, or a marker answered
/// once everything before it is written.
enum Write {
    Put(String, Vec<u8>),
    Delete(String),
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// A handle the worker uses to report on its task.
#[derive(Clone)]
pub struct TaskHandle {
    pub id: String,
    tasks: Arc<Tasks>,
    cancel: watch::Receiver<bool>,
    /// The share of the whole task the current phase covers, `[from, to]`: byte progress
    /// within the phase is mapped into it, so the overall progress never jumps back.
    span: Arc<Mutex<(f64, f64)>>,
}

impl TaskHandle {
    /// A new phase starting at `progress`; bytes reported in it fill the rest of the task.
    pub fn phase(&self, phase: &str, progress: f64) {
        self.phase_span(phase, progress, 1.0);
    }
    /// A new phase covering `[from, to]` of the task. Byte counts of the previous phase are
    /// cleared, so a client does not keep showing a finished download.
    pub fn phase_span(&self, phase: &str, from: f64, to: f64) {
        let from = from.clamp(0.0, 1.0);
        let to = to.clamp(from, 1.0);
        *self.span.lock().unwrap_or_else(|p| p.into_inner()) = (from, to);
        self.tasks.update(&self.id, |t| {
            t.phase = phase.to_string();
            t.progress = from;
            t.bytes_done = None;
            t.bytes_total = None;
        });
    }
    /// Bytes done in the current phase; the overall progress moves through the phase's span.
    pub fn bytes(&self, done: u64, total: u64) {
        let (from, to) = *self.span.lock().unwrap_or_else(|p| p.into_inner());
        self.tasks.update(&self.id, |t| {
            t.bytes_done = Some(done);
            t.bytes_total = Some(total);
            if total > 0 {
                let frac = (done as f64 / total as f64).clamp(0.0, 1.0);
                t.progress = from + (to - from) * frac;
            }
        });
    }
    /// A migration's latest figures (see [`corral_model::migrate::MigrationFigures`]).
    pub fn figures(&self, figures: &corral_model::migrate::MigrationFigures) {
        self.tasks
            .update(&self.id, |t| t.migration = figures.clone());
    }
    /// What the task changed so far (shown while it runs and kept in its history).
    pub fn set_changes(&self, changes: &[String]) {
        self.tasks
            .update(&self.id, |t| t.changes = changes.to_vec());
    }
    pub fn set_vm(&self, id: &str, name: &str) {
        self.tasks.update(&self.id, |t| {
            t.vm_id = Some(id.to_string());
            t.vm_name = Some(name.to_string());
        });
    }
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
    /// Resolves when the task is cancelled.
    pub async fn cancelled(&mut self) {
        while !*self.cancel.borrow() {
            if self.cancel.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
    pub fn succeed(&self, result: Option<String>) {
        self.tasks
            .finish(&self.id, TaskState::Succeeded, result, None);
    }
    pub fn fail(&self, error: &Error) {
        self.tasks
            .finish(&self.id, TaskState::Failed, None, Some(error.clone()));
    }
    pub fn cancelled_with(&self, note: &str) {
        self.tasks
            .finish(&self.id, TaskState::Cancelled, Some(note.to_string()), None);
    }
    /// Finish with a note on success; a failure after the task was cancelled counts as the
    /// cancellation it is.
    pub fn finish_with_note(&self, result: Result<String, Error>) {
        match result {
            Ok(note) => self.succeed(Some(note)),
            Err(e) if self.is_cancelled() => self.cancelled_with(&e.message),
            Err(e) => self.fail(&e),
        }
    }
    /// Finish from a result.
    pub fn complete<T>(&self, result: &Result<T, Error>) {
        match result {
            Ok(_) => self.succeed(None),
            Err(e) => self.fail(e),
        }
    }
}

impl Tasks {
    /// Load the history under `prefix`, mark tasks left running by a dead agent failed,
    /// prune the oldest beyond the limit, and start the writer.
    pub async fn load(
        store: Arc<dyn Store>,
        prefix: String,
        events: Arc<EventBus>,
    ) -> Result<Arc<Self>, corral_store::StoreError> {
        let mut all: Vec<Task> = store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<Task>(&v.value).ok())
            .collect();
        all.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then(a.id.cmp(&b.id)));
        let (writer, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, queue));
        let tasks = Arc::new(Tasks {
            events,
            live: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            prefix,
            writer,
        });
        if all.len() > HISTORY_LIMIT {
            for t in all.drain(..all.len() - HISTORY_LIMIT) {
                let _ = tasks.writer.send(Write::Delete(tasks.key(&t.id)));
            }
        }
        for mut t in all {
            if !t.state.is_finished() {
                t.state = TaskState::Failed;
                t.finished_at_ms = Some(now_ms());
                t.error = Some(interrupted_error().to_api());
                tasks.persist(&t);
            }
            tasks.history().insert(t.id.clone(), t);
        }
        Ok(tasks)
    }

    /// Wait until every task update made so far is in the store (before the agent exits).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.writer.send(Write::Flushed(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn history(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(self: &Arc<Self>, operation: Operation, vm: Option<(&str, &str)>) -> TaskHandle {
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            vm_id: vm.map(|v| v.0.to_string()),
            vm_name: vm.map(|v| v.1.to_string()),
            operation: operation.to_string(),
            state: TaskState::Running,
            phase: "starting".into(),
            progress: 0.0,
            bytes_done: None,
            bytes_total: None,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            result: None,
            error: None,
            changes: Vec::new(),
            migration: Default::default(),
        };
        let (tx, _) = watch::channel(task.clone());
        let (cancel, cancel_rx) = watch::channel(false);
        let id = task.id.clone();
        self.lock().insert(id.clone(), Live { tx, cancel });
        self.persist(&task);
        self.events.publish(Event::TaskUpdated {
            task: Box::new(task),
        });
        TaskHandle {
            id,
            tasks: self.clone(),
            cancel: cancel_rx,
            span: Arc::new(Mutex::new((0.0, 1.0))),
        }
    }

    /// A handle for an internal query that is not an operation (the stats sampler asking an
    /// actor for counters every few seconds): it is in no registry, so nothing is recorded.
    pub fn untracked(self: &Arc<Self>) -> TaskHandle {
        let (_, cancel) = watch::channel(false);
        TaskHandle {
            id: String::new(),
            tasks: self.clone(),
            cancel,
            span: Arc::new(Mutex::new((0.0, 1.0))),
        }
    }

    /// Record an already finished task (e.g. "guest died while the agent was down").
    pub fn record(
        self: &Arc<Self>,
        operation: Operation,
        vm: Option<(&str, &str)>,
        result: Result<String, Error>,
    ) {
        let h = self.start(operation, vm);
        match result {
            Ok(note) => h.succeed(Some(note)),
            Err(e) => h.fail(&e),
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Task)) {
        let snapshot = {
            let live = self.lock();
            let Some(l) = live.get(id) else { return };
            l.tx.send_modify(f);
            let t = l.tx.borrow().clone();
            t
        };
        self.events.publish(Event::TaskUpdated {
            task: Box::new(snapshot),
        });
    }

    fn finish(&self, id: &str, state: TaskState, result: Option<String>, error: Option<Error>) {
        let snapshot = {
            let mut live = self.lock();
            let Some(l) = live.remove(id) else { return };
            l.tx.send_modify(|t| {
                t.state = state;
                if state == TaskState::Succeeded {
                    t.progress = 1.0;
                    t.phase = "done".into();
                }
                t.finished_at_ms = Some(now_ms());
                t.result = result;
                t.error = error.map(|e| e.to_api());
            });
            let t = l.tx.borrow().clone();
            // Into the history before the live entry is dropped (both under the live lock),
            // so a reader never finds the task in neither.
            let pruned = {
                let mut history = self.history();
                history.insert(t.id.clone(), t.clone());
                prune(&mut history)
            };
            for id in pruned {
                let _ = self.writer.send(Write::Delete(self.key(&id)));
            }
            drop(l);
            t
        };
        self.persist(&snapshot);
        self.events.publish(Event::TaskUpdated {
            task: Box::new(snapshot),
        });
    }

    fn persist(&self, task: &Task) {
        if let Ok(bytes) = serde_json::to_vec(task) {
            let _ = self.writer.send(Write::Put(self.key(&task.id), bytes));
        }
    }

    pub fn get(&self, id: &str) -> Option<Task> {
        if let Some(l) = self.lock().get(id) {
            return Some(l.tx.borrow().clone());
        }
        self.get_stored(id)
    }

    /// Whether a task doing `operation` on VM `vm_id` is running now.
    pub fn is_running(&self, operation: Operation, vm_id: &str) -> bool {
        self.lock().values().any(|l| {
            let t = l.tx.borrow();
            t.operation == operation.as_str()
                && t.vm_id.as_deref() == Some(vm_id)
                && t.state == corral_model::task::TaskState::Running
        })
    }

    /// All tasks, oldest first.
    pub fn list(&self) -> Vec<Task> {
        self.recent(usize::MAX, |_| true)
    }

    /// The running tasks and the `finished` most recent finished ones that `keep` accepts,
    /// oldest first. Only those are cloned: the history holds thousands, and a full list
    /// serialised on every poll cost every other request its latency under load.
    pub fn recent(&self, finished: usize, keep: impl Fn(&Task) -> bool) -> Vec<Task> {
        let by_start = |a: &Task, b: &Task| {
            a.started_at_ms
                .cmp(&b.started_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        };
        // The live lock first, as `finish` takes them: a task moving from live to history
        // meanwhile is seen exactly once.
        let live = self.lock();
        let mut out: Vec<Task> = {
            let history = self.history();
            let mut done: Vec<&Task> = history.values().filter(|t| keep(t)).collect();
            if done.len() > finished {
                let cut = done.len() - finished;
                if finished > 0 {
                    done.select_nth_unstable_by(cut, |a, b| by_start(a, b));
                }
                done.drain(..cut);
            }
            done.into_iter().cloned().collect()
        };
        out.extend(
            live.values()
                .map(|l| l.tx.borrow().clone())
                .filter(|t| keep(t)),
        );
        drop(live);
        out.sort_by(by_start);
        out
    }

    pub fn cancel(&self, id: &str) -> Result<(), Error> {
        let live = self.lock();
        match live.get(id) {
            Some(l) => {
                let operation = l.tx.borrow().operation.clone();
                if !Operation::parse(&operation).is_some_and(Operation::cancellable) {
                    let cancellable: Vec<&str> = Operation::ALL
                        .iter()
                        .filter(|o| o.cancellable())
                        .map(|o| o.as_str())
                        .collect();
                    return Err(Error::new(
                        corral_model::ErrorKind::InvalidState,
                        format!(
                            "task {id} ({operation}) cannot be cancelled; cancellable operations: {}",
                            cancellable.join(", ")
                        ),
                    ));
                }
                let _ = l.cancel.send(true);
                Ok(())
            }
            None => match self.get_stored(id) {
                Some(t) => Err(Error::new(
                    corral_model::ErrorKind::InvalidState,
                    format!(
                        "task {id} ({}) cannot be cancelled: it has already finished ({})",
                        t.operation,
                        t.state.as_str()
                    ),
                )),
                None => Err(Error::not_found(format!("no task {id}"))),
            },
        }
    }

    fn get_stored(&self, id: &str) -> Option<Task> {
        self.history().get(id).cloned()
    }

    /// Wait until the task finishes and return it.
    pub async fn wait(&self, id: &str) -> Option<Task> {
        let rx = self.lock().get(id).map(|l| l.tx.subscribe());
        match rx {
            Some(mut rx) => loop {
                if rx.borrow().state.is_finished() {
                    return Some(rx.borrow().clone());
                }
                if rx.changed().await.is_err() {
                    // Sender dropped: the task finished and left the live set.
                    return self.get_stored(id);
                }
            },
            None => self.get_stored(id),
        }
    }
}

/// Store task records in the order they were made; a failed write is logged, not retried
/// (the next update of the same task writes it whole again).
async fn write_loop(store: Arc<dyn Store>, mut queue: mpsc::UnboundedReceiver<Write>) {
    while let Some(w) = queue.recv().await {
        let (key, result) = match w {
            Write::Put(key, bytes) => {
                let r = store.put(&key, &bytes, Expect::Any).await.map(|_| ());
                (key, r)
            }
            Write::Delete(key) => {
                let r = store.delete(&key, Expect::Any).await;
                (key, r)
            }
            Write::Flushed(done) => {
                let _ = done.send(());
                continue;
            }
        };
        if let Err(e) = result {
            tracing::warn!(%key, error = %e, "cannot persist task");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_store::SqliteStore;

    async fn tasks() -> Arc<Tasks> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().expect("store"));
        Tasks::load(
            store,
            "hosts/h/tasks/".into(),
            Arc::new(EventBus::default()),
        )
        .await
        .expect("tasks")
    }

    #[tokio::test]
    async fn bytes_move_within_the_phase_and_a_new_phase_clears_them() {
        let tasks = tasks().await;
        let t = tasks.start(Operation::VmInstall, None);
        t.phase_span("fetching the kernel", 0.05, 0.15);
        t.bytes(50, 100);
        let now = tasks.get(&t.id).expect("task");
        assert!((now.progress - 0.10).abs() < 1e-9, "{}", now.progress);
        assert_eq!((now.bytes_done, now.bytes_total), (Some(50), Some(100)));
        t.bytes(100, 100);
        assert!((tasks.get(&t.id).expect("task").progress - 0.15).abs() < 1e-9);

        t.phase("booting the installer", 0.4);
        let now = tasks.get(&t.id).expect("task");
        assert_eq!(now.phase, "booting the installer");
        assert_eq!((now.bytes_done, now.bytes_total), (None, None));
        assert!((now.progress - 0.4).abs() < 1e-9);
        // A plain phase's bytes fill the rest of the task (copies, exports).
        t.bytes(1, 2);
        assert!((tasks.get(&t.id).expect("task").progress - 0.7).abs() < 1e-9);
    }

    #[tokio::test]
    async fn tasks_left_running_by_a_dead_agent_load_as_interrupted() {
        let store: Arc<dyn Store> = Arc::new(corral_store::MemoryStore::new());
        let first = Tasks::load(
            store.clone(),
            "hosts/h/tasks/".into(),
            Arc::new(EventBus::default()),
        )
        .await
        .expect("tasks");
        let running = first.start(Operation::VmInstall, Some(("vm1", "web01")));
        let done = first.start(Operation::VmStart, Some(("vm1", "web01")));
        done.succeed(None);
        // Let the writer store them, then "crash" (drop without finishing `running`).
        for _ in 0..100 {
            if store.list("hosts/h/tasks/").await.expect("list").len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let again = Tasks::load(
            store,
            "hosts/h/tasks/".into(),
            Arc::new(EventBus::default()),
        )
        .await
        .expect("tasks");
        let t = again.get(&running.id).expect("interrupted task kept");
        assert_eq!(t.state, TaskState::Failed);
        assert!(was_interrupted(&t));
        let d = again.get(&done.id).expect("finished task kept");
        assert_eq!(d.state, TaskState::Succeeded);
        assert!(!was_interrupted(&d));
        assert_eq!(again.list().len(), 2);
    }

    #[tokio::test]
    async fn a_bounded_list_keeps_every_running_task_and_the_newest_finished() {
        let tasks = tasks().await;
        let old_running = tasks.start(Operation::VmInstall, Some(("vm1", "web01")));
        let mut finished = Vec::new();
        for i in 0..10 {
            let vm = if i % 2 == 0 { "web01" } else { "db01" };
            let t = tasks.start(Operation::VmStart, Some(("id", vm)));
            finished.push(t.id.clone());
            t.succeed(None);
            // Distinct start times order them.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        let got = ids(tasks.recent(3, |_| true));
        let mut want = vec![old_running.id.clone()];
        want.extend(finished[7..].iter().cloned());
        assert_eq!(
            got, want,
            "the running task first (oldest), then the 3 newest"
        );
        let web = ids(tasks.recent(2, |t| t.vm_name.as_deref() == Some("web01")));
        assert_eq!(
            web,
            vec![
                old_running.id.clone(),
                finished[6].clone(),
                finished[8].clone()
            ]
        );
        assert_eq!(tasks.recent(0, |_| true).len(), 1, "only the running one");
        assert_eq!(tasks.list().len(), 11);
    }

    #[test]
    fn the_history_is_pruned_to_its_limit_oldest_first() {
        let task = |i: u64| Task {
            id: format!("t{i:05}"),
            vm_id: None,
            vm_name: None,
            operation: "vm.start".into(),
            state: TaskState::Succeeded,
            phase: "done".into(),
            progress: 1.0,
            bytes_done: None,
            bytes_total: None,
            started_at_ms: i,
            finished_at_ms: Some(i),
            result: None,
            error: None,
            migration: Default::default(),
            changes: Vec::new(),
        };
        let mut history: HashMap<String, Task> = (0..(HISTORY_LIMIT + HISTORY_SLACK) as u64)
            .map(|i| (format!("t{i:05}"), task(i)))
            .collect();
        assert!(prune(&mut history).is_empty(), "within the slack");
        let newest = (HISTORY_LIMIT + HISTORY_SLACK) as u64;
        history.insert(format!("t{newest:05}"), task(newest));
        let dropped = prune(&mut history);
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(dropped.len(), HISTORY_SLACK + 1);
        assert!(dropped.contains(&"t00000".to_string()));
        assert!(history.contains_key(&format!("t{newest:05}")));
        assert!(!history.contains_key(&format!("t{:05}", HISTORY_SLACK)));
    }
}
