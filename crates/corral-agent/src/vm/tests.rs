//! Unit tests of the VM actor: a real actor over an in-memory store, driven against a fake
//! runtime whose guests are `corral_testkit::fake_qemu` QMP servers. Every action from every
//! power state, commands that overlap, and agent crashes between steps.

use super::runtime::{ReattachError, Running, Runtime};
use super::state::LeaseKind;
use super::{Lease, Op, VmHandle};
use crate::config::Layout;
use crate::context::{Host, Records};
use crate::error::Error;
use crate::events::EventBus;
use crate::tasks::Tasks;
use crate::templates::Templates;
use corral_model::api::*;
use corral_model::task::Operation;
use corral_model::*;
use corral_qemu::qmp::Qmp;
use corral_store::{Expect, MemoryStore, Store};
use corral_testkit::fake_qemu::{Behaviour, FakeQemu};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Guests are fake QEMUs keyed by VM id; pids are counters, never signalled.
#[derive(Default)]
struct FakeRuntime {
    guests: Mutex<HashMap<String, (u32, FakeQemu)>>,
    next_pid: AtomicU32,
    behaviour: Mutex<Behaviour>,
    dir: std::path::PathBuf,
    /// The next launch fails with this.
    fail_launch: Mutex<Option<Error>>,
}

impl FakeRuntime {
    fn guests(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, FakeQemu)>> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn socket(&self, vm_id: &str) -> std::path::PathBuf {
        self.dir.join(format!("{vm_id}.qmp"))
    }
    /// Leave a fake QEMU running for `vm_id` as if it survived an agent crash.
    fn plant(&self, vm_id: &str, status: &'static str) {
        let fake = FakeQemu::start(
            &self.socket(vm_id),
            Behaviour {
                initial_status: status,
                ..Behaviour::default()
            },
        )
        .unwrap_or_else(|e| panic!("fake qemu: {e}"));
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.guests().insert(vm_id.to_string(), (pid, fake));
    }
    fn status(&self, vm_id: &str) -> Option<String> {
        self.guests()
            .get(vm_id)
            .filter(|(_, f)| !f.has_exited())
            .map(|(_, f)| f.status())
    }
    fn crash(&self, vm_id: &str) {
        if let Some((_, f)) = self.guests().get(vm_id) {
            f.kill();
        }
    }
    async fn connect(&self, vm_id: &str, pid: u32) -> Result<Running, Error> {
        let qmp = Qmp::connect(&self.socket(vm_id), Duration::from_secs(5))
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        let events = qmp.subscribe();
        Ok(Running {
            pid,
            qmp,
            events,
            taps: vec![],
            cpu_weight: CpuWeightStatus::from_result(256, Ok("fake".into())),
            vnc: None,
        })
    }
}

impl Runtime for FakeRuntime {
    async fn launch(&self, rec: &VmRecord, paused: bool) -> Result<Running, Error> {
        if let Some(e) = self
            .fail_launch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(e);
        }
        let behaviour = self
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let fake = FakeQemu::start(&self.socket(&rec.id), behaviour)
            .map_err(|e| Error::internal(e.to_string()))?;
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.guests().insert(rec.id.clone(), (pid, fake));
        let run = self.connect(&rec.id, pid).await?;
        if !paused {
            run.qmp
                .execute("cont", serde_json::json!({}))
                .await
                .map_err(|e| Error::internal(e.to_string()))?;
        }
        Ok(run)
    }
    async fn reattach(&self, rec: &VmRecord) -> Result<(Running, PowerState), ReattachError> {
        let pid = match self.guests().get(&rec.id) {
            Some((pid, f)) if !f.has_exited() => *pid,
            _ => return Err(ReattachError::Gone),
        };
        let run = self
            .connect(&rec.id, pid)
            .await
            .map_err(|_| ReattachError::Gone)?;
        let status = run
            .qmp
            .query_status()
            .await
            .map_err(ReattachError::Status)?;
        use corral_qemu::qmp::RunState;
        let state = match (status.status, rec.power_state) {
            (RunState::Running, _) => PowerState::Running,
            (RunState::Prelaunch, PowerState::Halted) => {
                self.crash(&rec.id);
                return Err(ReattachError::HalfStarted { pid });
            }
            (RunState::Prelaunch, PowerState::Running) => {
                run.qmp
                    .execute("cont", serde_json::json!({}))
                    .await
                    .map_err(ReattachError::FinishStart)?;
                PowerState::Running
            }
            _ => PowerState::Paused,
        };
        Ok((run, state))
    }
    async fn cleanup(&self, vm_id: &str, _run: &Running) {
        self.guests().remove(vm_id);
    }
    async fn clear_leftovers(&self, rec: &VmRecord) {
        self.guests().remove(&rec.id);
    }
    fn kill(&self, run: &Running) {
        for (_, (pid, f)) in self.guests().iter() {
            if *pid == run.pid {
                f.kill();
            }
        }
    }
    fn set_cpu_weight(&self, _vm_id: &str, weight: u32) -> CpuWeightStatus {
        CpuWeightStatus::from_result(weight, Ok(format!("fake={weight}")))
    }
}

struct Harness {
    host: Arc<Host>,
    runtime: Arc<FakeRuntime>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let events = Arc::new(EventBus::default());
    let tasks = Tasks::load(store.clone(), "hosts/h/tasks/".into(), events.clone())
        .await
        .unwrap_or_else(|e| panic!("tasks: {e}"));
    let layout = Layout {
        root: dir.path().to_path_buf(),
    };
    let templates = Templates::builtin().unwrap_or_else(|e| panic!("templates: {e}"));
    let (host, _notices) = Host::new(
        Records::new(store.clone()),
        events,
        tasks,
        layout,
        ("host-under-test".into(), "testhost".into()),
        dir.path().join("isos"),
        templates,
    );
    let runtime = Arc::new(FakeRuntime {
        dir: dir.path().to_path_buf(),
        ..FakeRuntime::default()
    });
    Harness {
        host: Arc::new(host),
        runtime,
        store,
        _dir: dir,
    }
}

fn spec(name: &str) -> VmSpec {
    VmSpec {
        memory_bytes: 64 << 20,
        cdroms: vec![Cdrom {
            device: "cdrom0".into(),
            bus: DiskBus::Sata,
            media: None,
        }],
        ..corral_testkit::vm_spec(name)
    }
}

impl Harness {
    /// Write `name`'s record as the agent last saw it and load it, as at an agent start.
    async fn load(&self, name: &str, id: &str, power: PowerState) -> VmHandle {
        let rec = VmRecord {
            id: id.into(),
            host: "host-under-test".into(),
            spec: spec(name),
            power_state: power,
            created_at_ms: 0,
            ha: Default::default(),
        };
        let rev = self
            .host
            .records
            .put_json(&format!("vms/{id}"), &rec, Expect::Any)
            .await
            .unwrap_or_else(|e| panic!("put: {e}"));
        let h = super::actor::spawn(self.host.clone(), self.runtime.clone(), rec, rev).await;
        self.host.registry_mut().insert(name, h.clone());
        h
    }

    /// A VM in `power`, reached through real actions.
    async fn vm_in(&self, name: &str, power: PowerState) -> VmHandle {
        let h = self
            .load(name, &format!("id-{name}"), PowerState::Halted)
            .await;
        if power != PowerState::Halted {
            self.act(&h, VmAction::Start)
                .await
                .unwrap_or_else(|e| panic!("start: {e}"));
        }
        if power == PowerState::Paused {
            self.act(&h, VmAction::Pause)
                .await
                .unwrap_or_else(|e| panic!("pause: {e}"));
        }
        assert_eq!(h.info().power_state, power);
        h
    }

    async fn act(&self, h: &VmHandle, action: VmAction) -> Result<(), Error> {
        self.op(h, Op::Action(action, ActionRequest::default()))
            .await
    }

    async fn op(&self, h: &VmHandle, op: Op) -> Result<(), Error> {
        let info = h.info();
        let task = self
            .host
            .tasks
            .start(Operation::VmUpdate, Some((&info.id, &info.name)));
        h.call(op, task).await
    }

    /// The power state in the store.
    async fn recorded(&self, id: &str) -> Option<PowerState> {
        self.host
            .records
            .get_json::<VmRecord>(&format!("vms/{id}"))
            .await
            .unwrap_or_else(|e| panic!("get: {e}"))
            .map(|r| r.power_state)
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Every action from every power state: allowed ones reach the documented state in the
/// actor, the store and the guest; refused ones change nothing and name the state.
#[tokio::test]
async fn every_action_from_every_state() {
    use PowerState::*;
    use VmAction::*;
    // (from, action, Ok(to) | Err(fragment of the refusal))
    let table: Vec<(PowerState, VmAction, Result<PowerState, &str>)> = vec![
        (Halted, Start, Ok(Running)),
        (Running, Start, Err("cannot start VM \"v\": it is running")),
        (Paused, Start, Err("cannot start VM \"v\": it is paused")),
        (
            Halted,
            Shutdown,
            Err("cannot shut down VM \"v\": it is halted"),
        ),
        (Running, Shutdown, Ok(Halted)),
        (
            Paused,
            Shutdown,
            Err("cannot shut down VM \"v\": it is paused"),
        ),
        (
            Halted,
            Poweroff,
            Err("cannot power off VM \"v\": it is halted"),
        ),
        (Running, Poweroff, Ok(Halted)),
        (Paused, Poweroff, Ok(Halted)),
        (Halted, Reboot, Err("cannot reboot VM \"v\": it is halted")),
        (Running, Reboot, Ok(Running)),
        (Paused, Reboot, Err("cannot reboot VM \"v\": it is paused")),
        (Halted, Pause, Err("cannot pause VM \"v\": it is halted")),
        (Running, Pause, Ok(Paused)),
        (Paused, Pause, Err("cannot pause VM \"v\": it is paused")),
        (Halted, Resume, Err("cannot resume VM \"v\": it is halted")),
        (
            Running,
            Resume,
            Err("cannot resume VM \"v\": it is running"),
        ),
        (Paused, Resume, Ok(Running)),
    ];
    for (from, action, want) in table {
        let h = harness().await;
        let vm = h.vm_in("v", from).await;
        let got = h.act(&vm, action).await;
        let row = format!("{from} + {action:?}");
        match want {
            Ok(to) => {
                got.unwrap_or_else(|e| panic!("{row}: {e}"));
                assert_eq!(vm.info().power_state, to, "{row}: actor");
                assert_eq!(h.recorded(&vm.id).await, Some(to), "{row}: store");
                let guest = h.runtime.status(&vm.id);
                let expected_guest = match to {
                    Halted => None,
                    Running => Some("running".to_string()),
                    Paused => Some("paused".to_string()),
                };
                assert_eq!(guest, expected_guest, "{row}: guest");
            }
            Err(fragment) => {
                let e = got.err().unwrap_or_else(|| panic!("{row}: allowed"));
                assert_eq!(e.kind, ErrorKind::InvalidState, "{row}");
                assert!(e.message.contains(fragment), "{row}: {}", e.message);
                assert_eq!(
                    e.details,
                    Some(serde_json::json!({ "power_state": from })),
                    "{row}"
                );
                assert_eq!(vm.info().power_state, from, "{row}: unchanged");
                assert_eq!(
                    h.recorded(&vm.id).await,
                    Some(from),
                    "{row}: store unchanged"
                );
            }
        }
    }
}

/// Commands to one VM are served in order: a start and a poweroff sent together both
/// succeed, one after the other; a second start queued behind the first is refused with
/// the state the first one reached.
#[tokio::test]
async fn concurrent_commands_are_serialized() {
    let h = harness().await;
    let vm = h.vm_in("v", PowerState::Halted).await;
    let (a, b) = tokio::join!(h.act(&vm, VmAction::Start), h.act(&vm, VmAction::Start));
    let refused = [&a, &b].iter().filter(|r| r.is_err()).count();
    assert_eq!(refused, 1, "exactly one of two starts wins: {a:?} {b:?}");
    let e = a.err().or(b.err()).unwrap_or_else(|| panic!("no refusal"));
    assert!(e.message.contains("it is running"), "{}", e.message);
    let (c, d) = tokio::join!(h.act(&vm, VmAction::Poweroff), h.act(&vm, VmAction::Start));
    c.unwrap_or_else(|e| panic!("poweroff: {e}"));
    d.unwrap_or_else(|e| panic!("start after poweroff: {e}"));
    assert_eq!(vm.info().power_state, PowerState::Running);
}

/// A shutdown waits for the guest; a poweroff meanwhile is served and ends the shutdown too.
#[tokio::test]
async fn poweroff_during_a_pending_shutdown_completes_both() {
    let h = harness().await;
    *h.runtime
        .behaviour
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Behaviour {
        honours_powerdown: false,
        ..Behaviour::default()
    };
    let vm = h.vm_in("v", PowerState::Running).await;
    let shutdown = {
        let (h2, vm2) = (h.host.clone(), vm.clone());
        tokio::spawn(async move {
            let task = h2.tasks.start(Operation::VmShutdown, Some((&vm2.id, "v")));
            vm2.call(
                Op::Action(VmAction::Shutdown, ActionRequest::default()),
                task,
            )
            .await
        })
    };
    eventually("the power button", || {
        h.runtime
            .guests()
            .get(&vm.id)
            .is_some_and(|(_, f)| f.commands().iter().any(|c| c == "system_powerdown"))
    })
    .await;
    h.act(&vm, VmAction::Poweroff)
        .await
        .unwrap_or_else(|e| panic!("poweroff: {e}"));
    let done = tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap_or_else(|_| panic!("shutdown still pending"));
    assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    assert_eq!(h.recorded(&vm.id).await, Some(PowerState::Halted));
}

/// A guest that ignores the button: the shutdown fails `busy` after its timeout and the VM
/// keeps running; a cancelled shutdown ends `cancelled` with the VM still running.
#[tokio::test]
async fn ignored_and_cancelled_shutdowns_leave_the_guest_running() {
    let h = harness().await;
    *h.runtime
        .behaviour
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Behaviour {
        honours_powerdown: false,
        ..Behaviour::default()
    };
    let vm = h.vm_in("v", PowerState::Running).await;
    let e = h
        .op(
            &vm,
            Op::Action(
                VmAction::Shutdown,
                ActionRequest {
                    timeout_secs: Some(1),
                    ..ActionRequest::default()
                },
            ),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("shutdown of a deaf guest succeeded"));
    assert_eq!(e.kind, ErrorKind::Busy, "{}", e.message);
    assert!(e.message.contains("did not power off"), "{}", e.message);
    assert_eq!(vm.info().power_state, PowerState::Running);

    let task = h
        .host
        .tasks
        .start(Operation::VmShutdown, Some((&vm.id, "v")));
    let id = task.id.clone();
    let vm2 = vm.clone();
    let pending = tokio::spawn(async move {
        vm2.call(
            Op::Action(VmAction::Shutdown, ActionRequest::default()),
            task,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.host
        .tasks
        .cancel(&id)
        .unwrap_or_else(|e| panic!("cancel: {e}"));
    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap_or_else(|_| panic!("cancel did not end the shutdown"));
    let e = match answer {
        Ok(Err(e)) => e,
        other => panic!("cancelled shutdown answered {other:?}"),
    };
    assert!(e.message.contains("still running"), "{}", e.message);
    assert_eq!(
        h.host.tasks.get(&id).map(|t| t.state),
        Some(corral_model::task::TaskState::Cancelled)
    );
    assert_eq!(h.runtime.status(&vm.id).as_deref(), Some("running"));
}

/// While an export holds a lease, what would write the disks is `busy`; edits that do not
/// touch disks are allowed; when the lease is dropped the VM starts again.
#[tokio::test]
async fn a_lease_blocks_disk_writers_until_released() {
    let h = harness().await;
    let vm = h.vm_in("v", PowerState::Halted).await;
    let lease = Arc::new(Lease {
        kind: LeaseKind::Export,
    });
    h.op(&vm, Op::Lease(lease.clone()))
        .await
        .unwrap_or_else(|e| panic!("lease: {e}"));
    let e = h
        .act(&vm, VmAction::Start)
        .await
        .err()
        .unwrap_or_else(|| panic!("started while exported"));
    assert_eq!(e.kind, ErrorKind::Busy);
    assert!(e.message.contains("it is being exported"), "{}", e.message);
    let e = h
        .op(
            &vm,
            Op::Delete(VmDeleteRequest {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("deleted while exported"));
    assert_eq!(e.kind, ErrorKind::Busy);
    h.op(
        &vm,
        Op::Update(VmUpdateRequest {
            description: Some("still editable".into()),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("description: {e}"));
    drop(lease);
    h.act(&vm, VmAction::Start)
        .await
        .unwrap_or_else(|e| panic!("start after the lease: {e}"));
}

/// A guest that dies on its own is noticed: the VM becomes halted in the actor and store.
#[tokio::test]
async fn a_guest_that_exits_on_its_own_is_recorded_halted() {
    let h = harness().await;
    let vm = h.vm_in("v", PowerState::Running).await;
    let (_, mut events) = h.host.events.subscribe(None);
    h.runtime.crash(&vm.id);
    eventually("halted", || vm.info().power_state == PowerState::Halted).await;
    assert_eq!(h.recorded(&vm.id).await, Some(PowerState::Halted));
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap_or_else(|_| panic!("no event"))
        .unwrap_or_else(|e| panic!("events: {e}"));
    assert!(
        matches!(
            ev.event,
            corral_model::event::Event::PowerStateChanged {
                to: PowerState::Halted,
                ..
            }
        ),
        "{ev:?}"
    );
}

/// The agent crashed between steps; at the next load each case ends in one running copy or
/// a halted VM, with the reason in its history.
#[tokio::test]
async fn crashes_between_steps_recover_to_one_consistent_state() {
    let h = harness().await;
    // Recorded running, guest still running: re-attached.
    h.runtime.plant("a", "running");
    let a = h.load("a", "a", PowerState::Running).await;
    assert_eq!(a.info().power_state, PowerState::Running);
    // Recorded running, guest gone: halted, with a vm.recover note.
    let b = h.load("b", "b", PowerState::Running).await;
    assert_eq!(b.info().power_state, PowerState::Halted);
    assert_eq!(h.recorded("b").await, Some(PowerState::Halted));
    // Recorded running (the start was acknowledged), guest never got `cont`: finished.
    h.runtime.plant("c", "prelaunch");
    let c = h.load("c", "c", PowerState::Running).await;
    assert_eq!(c.info().power_state, PowerState::Running);
    assert_eq!(h.runtime.status("c").as_deref(), Some("running"));
    // Recorded halted, guest spawned but never started (nobody was told): stopped.
    h.runtime.plant("d", "prelaunch");
    let d = h.load("d", "d", PowerState::Halted).await;
    assert_eq!(d.info().power_state, PowerState::Halted);
    assert_eq!(
        h.runtime.status("d"),
        None,
        "the half-started guest was stopped"
    );
    let notes: HashMap<String, String> = h
        .host
        .tasks
        .list()
        .into_iter()
        .filter(|t| t.operation == "vm.recover" || t.operation == "vm.reattach")
        .filter_map(|t| Some((t.vm_name.clone()?, t.result.clone()?)))
        .collect();
    assert!(notes["a"].contains("re-attached"), "{notes:?}");
    assert!(notes["b"].contains("marked halted"), "{notes:?}");
    assert!(notes["d"].contains("never given its vCPUs"), "{notes:?}");
}

/// A launch that fails leaves the VM halted in the actor and the store, with the error's
/// own kind.
#[tokio::test]
async fn a_failed_start_changes_nothing() {
    let h = harness().await;
    let vm = h.vm_in("v", PowerState::Halted).await;
    *h.runtime
        .fail_launch
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(Error::new(
        ErrorKind::Timeout,
        "QEMU did not answer on QMP in time",
    ));
    let e = h
        .act(&vm, VmAction::Start)
        .await
        .err()
        .unwrap_or_else(|| panic!("start succeeded"));
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert_eq!(vm.info().power_state, PowerState::Halted);
    assert_eq!(h.recorded(&vm.id).await, Some(PowerState::Halted));
}

/// Delete: refused for a running VM without force; with force the guest is stopped, the
/// record removed and the name freed.
#[tokio::test]
async fn delete_needs_force_for_a_running_vm() {
    let h = harness().await;
    let vm = h.vm_in("v", PowerState::Running).await;
    let e = h
        .op(&vm, Op::Delete(VmDeleteRequest::default()))
        .await
        .err()
        .unwrap_or_else(|| panic!("deleted a running VM"));
    assert!(e.message.contains("use --force"), "{}", e.message);
    assert_eq!(h.recorded(&vm.id).await, Some(PowerState::Running));
    h.op(
        &vm,
        Op::Delete(VmDeleteRequest {
            force: true,
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("force delete: {e}"));
    assert_eq!(h.recorded(&vm.id).await, None);
    assert!(h.host.vm("v").is_err());
    assert_eq!(h.runtime.status(&vm.id), None);
    assert!(h
        .store
        .get(&format!("vms/{}", vm.id))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_none());
}
