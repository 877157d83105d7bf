//! The VM state table: one pure function, [`transition`], says what every command and every
//! QEMU event does to a VM in every state. The actor asks it before it touches anything, so a
//! refusal never leaves half-done work, and every refusal names the state that caused it.
//!
//! A VM's state is its power state plus what holds it: read leases (an export or copy is
//! reading its disks), a pending shutdown (the ACPI button was pressed, QEMU has not exited),
//! and whether it is a template (never runs). Invariants the table keeps, checked by a
//! property test: a template is halted; a leased VM is halted; a pending shutdown only exists
//! while QEMU runs.

use corral_model::PowerState;
use std::fmt;

/// What holds a halted VM's disks for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseKind {
    Export,
    Copy,
}

impl LeaseKind {
    /// "being exported", for messages.
    pub fn participle(self) -> &'static str {
        match self {
            LeaseKind::Export => "exported",
            LeaseKind::Copy => "copied",
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            LeaseKind::Export => "export",
            LeaseKind::Copy => "copy",
        }
    }
}

/// Everything the table needs to know about a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmState {
    pub power: PowerState,
    /// The kind of one live lease, if any.
    pub leased: Option<LeaseKind>,
    pub template: bool,
    pub shutting_down: bool,
    /// A live migration to another member is under way (see `crate::migrate`).
    pub migrating: bool,
}

impl VmState {
    pub fn halted() -> Self {
        VmState {
            power: PowerState::Halted,
            leased: None,
            template: false,
            shutting_down: false,
            migrating: false,
        }
    }
    /// The invariants of the module documentation.
    pub fn is_valid(&self) -> bool {
        let held = self.template || self.leased.is_some();
        let halted = self.power == PowerState::Halted;
        (halted || !held) && !(halted && (self.shutting_down || self.migrating))
    }
}

/// A change to the configuration that needs the VM halted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Edit {
    /// Add or remove a disk: writes volumes, so not while a lease reads them.
    Disks {
        add: bool,
    },
    Nics {
        add: bool,
    },
    /// Switch between paravirtual and emulated devices.
    DeviceModel,
    /// Attach or remove the vTPM.
    Tpm {
        attach: bool,
    },
    AbandonInstall,
    FinishInstall,
}

impl Edit {
    fn verb(self) -> &'static str {
        match self {
            Edit::Disks { add: true } => "add a disk to",
            Edit::Disks { add: false } => "remove a disk from",
            Edit::Nics { add: true } => "add a NIC to",
            Edit::Nics { add: false } => "remove a NIC from",
            Edit::DeviceModel => "change the device model of",
            Edit::Tpm { attach: true } => "attach a TPM to",
            Edit::Tpm { attach: false } => "remove the TPM of",
            Edit::AbandonInstall => "abandon the install of",
            Edit::FinishInstall => "finish the install of",
        }
    }
    fn touches_disks(self) -> bool {
        matches!(self, Edit::Disks { .. })
    }
}

/// Something that happens to a VM: a command from a user or another part of the agent, or
/// news from its QEMU process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Start,
    Shutdown,
    Poweroff,
    Reboot,
    Pause,
    Resume,
    /// A halted-only configuration change.
    Edit(Edit),
    /// A change allowed in any state (description, CD media, CPU weight, ...).
    Configure,
    Delete {
        force: bool,
    },
    /// An export or copy takes a read lease on the disks.
    Lease(LeaseKind),
    /// The last lease was released.
    LeaseEnded,
    /// A linked clone freezes the disks into bases.
    Freeze,
    ConvertToTemplate,
    /// A pending shutdown was cancelled or ran out of time; the guest keeps running.
    ShutdownAbandoned,
    /// QEMU paused the vCPUs on its own (a STOP event: I/O error, monitor, debugger).
    QemuStopped,
    /// QEMU resumed the vCPUs (a RESUME event).
    QemuResumed,
    /// The QEMU process exited (guest powered off, crash, kill).
    QemuExited,
    /// A live migration starts.
    Migrate,
}

impl Event {
    /// The words a refusal uses: "cannot <verb> VM ...".
    fn verb(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Shutdown => "shut down",
            Event::Poweroff => "power off",
            Event::Reboot => "reboot",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::Edit(e) => e.verb(),
            Event::Configure => "change",
            Event::Delete { .. } => "delete",
            Event::Lease(k) => k.verb(),
            Event::LeaseEnded => "release",
            Event::Freeze => "clone",
            Event::ConvertToTemplate => "convert to a template",
            Event::ShutdownAbandoned => "abandon the shutdown of",
            Event::QemuStopped | Event::QemuResumed | Event::QemuExited => "observe",
            Event::Migrate => "migrate",
        }
    }
}

/// Why the table refused an event. Every variant carries the state that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The power state does not allow it.
    PowerState {
        event: Event,
        state: PowerState,
        /// The refusal suggests `--force` (delete of a running VM).
        hint_force: bool,
    },
    /// An export or copy is reading the disks.
    Leased { event: Event, lease: LeaseKind },
    /// Templates never run and are never templated again.
    Template { event: Event },
    /// A live migration owns the VM until it ends.
    Migrating { event: Event },
}

impl Refusal {
    /// The power state the VM was in, for the error's details.
    pub fn kind(&self) -> corral_model::ErrorKind {
        match self {
            Refusal::Leased { .. } | Refusal::Migrating { .. } => corral_model::ErrorKind::Busy,
            Refusal::PowerState { .. } | Refusal::Template { .. } => {
                corral_model::ErrorKind::InvalidState
            }
        }
    }

    /// The message for VM `name`.
    pub fn message(&self, name: &str) -> String {
        match *self {
            Refusal::PowerState {
                event,
                state,
                hint_force,
            } => {
                let hint = if hint_force {
                    "; shut it down first or use --force"
                } else {
                    ""
                };
                format!("cannot {} VM {name:?}: it is {state}{hint}", event.verb())
            }
            Refusal::Leased { event, lease } => format!(
                "cannot {} VM {name:?}: it is being {} (wait for that task or cancel it)",
                event.verb(),
                lease.participle()
            ),
            Refusal::Migrating {
                event: Event::Migrate,
            } => format!("VM {name:?} is already migrating (corral task list shows the task)"),
            Refusal::Migrating { event } => format!(
                "cannot {} VM {name:?}: it is migrating to another host (wait for the vm.migrate task or cancel it)",
                event.verb()
            ),
            Refusal::Template {
                event: Event::Start,
            } => {
                format!("{name:?} is a template; install a VM from it instead")
            }
            Refusal::Template {
                event: Event::ConvertToTemplate,
            } => format!("VM {name:?} is already a template"),
            Refusal::Template { event } => {
                format!("cannot {} VM {name:?}: it is a template", event.verb())
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message("this VM"))
    }
}

/// The state after `event`, or why it is refused. Pure: the actor does the work only after
/// the table allowed it, then records the new state.
///
/// QEMU events are facts, never refused: news that does not fit the state leaves it as it is.
pub fn transition(s: VmState, event: Event) -> Result<VmState, Refusal> {
    use PowerState::*;
    let refuse = |hint_force| {
        Err(Refusal::PowerState {
            event,
            state: s.power,
            hint_force,
        })
    };
    let free = || match s.leased {
        Some(lease) => Err(Refusal::Leased { event, lease }),
        None => Ok(()),
    };
    let to = |power| VmState {
        power,
        shutting_down: s.shutting_down && power != Halted,
        migrating: s.migrating && power != Halted,
        ..s
    };
    // While a migration runs only QEMU's news and harmless settings get through.
    let observed = matches!(
        event,
        Event::QemuStopped | Event::QemuResumed | Event::QemuExited | Event::Configure
    );
    if s.migrating && !observed {
        return Err(Refusal::Migrating { event });
    }
    match event {
        Event::Migrate => {
            if s.power == Halted {
                return refuse(false);
            }
            if s.shutting_down {
                return Err(Refusal::PowerState {
                    event,
                    state: s.power,
                    hint_force: false,
                });
            }
            Ok(VmState {
                migrating: true,
                ..s
            })
        }
        Event::Start => {
            if s.power != Halted {
                return refuse(false);
            }
            free()?;
            if s.template {
                return Err(Refusal::Template { event });
            }
            Ok(to(Running))
        }
        Event::Shutdown => match s.power {
            Running => Ok(VmState {
                shutting_down: true,
                ..s
            }),
            _ => refuse(false),
        },
        Event::ShutdownAbandoned => Ok(VmState {
            shutting_down: false,
            ..s
        }),
        Event::Poweroff => match s.power {
            Halted => refuse(false),
            _ => Ok(to(Halted)),
        },
        Event::Reboot => match s.power {
            Running => Ok(s),
            _ => refuse(false),
        },
        Event::Pause => match s.power {
            Running => Ok(to(Paused)),
            _ => refuse(false),
        },
        Event::Resume => match s.power {
            Paused => Ok(to(Running)),
            _ => refuse(false),
        },
        Event::Edit(edit) => {
            if s.power != Halted {
                return refuse(false);
            }
            if edit.touches_disks() {
                free()?;
            }
            Ok(s)
        }
        Event::Configure => Ok(s),
        Event::Delete { force } => {
            free()?;
            match (s.power, force) {
                (Halted, _) | (_, true) => Ok(to(Halted)),
                _ => refuse(true),
            }
        }
        Event::Lease(kind) => {
            if s.power != Halted {
                return refuse(false);
            }
            Ok(VmState {
                leased: Some(kind),
                ..s
            })
        }
        Event::LeaseEnded => Ok(VmState { leased: None, ..s }),
        Event::Freeze => {
            if s.power != Halted {
                return refuse(false);
            }
            free()?;
            Ok(s)
        }
        Event::ConvertToTemplate => {
            if s.power != Halted {
                return refuse(false);
            }
            free()?;
            if s.template {
                return Err(Refusal::Template { event });
            }
            Ok(VmState {
                template: true,
                ..s
            })
        }
        Event::QemuStopped => Ok(match s.power {
            Running => to(Paused),
            _ => s,
        }),
        Event::QemuResumed => Ok(match s.power {
            Paused => to(Running),
            _ => s,
        }),
        Event::QemuExited => Ok(to(Halted)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PowerState::*;

    fn st(power: PowerState) -> VmState {
        VmState {
            power,
            ..VmState::halted()
        }
    }

    /// (from, event, Ok(to) or Err(message fragment)), for VM "v".
    #[test]
    fn table() {
        let leased = VmState {
            leased: Some(LeaseKind::Export),
            ..VmState::halted()
        };
        let template = VmState {
            template: true,
            ..VmState::halted()
        };
        let rows: Vec<(VmState, Event, Result<PowerState, &str>)> = vec![
            (st(Halted), Event::Start, Ok(Running)),
            (
                st(Running),
                Event::Start,
                Err("cannot start VM \"v\": it is running"),
            ),
            (st(Paused), Event::Start, Err("it is paused")),
            (leased, Event::Start, Err("it is being exported")),
            (template, Event::Start, Err("\"v\" is a template")),
            (st(Running), Event::Shutdown, Ok(Running)),
            (
                st(Paused),
                Event::Shutdown,
                Err("cannot shut down VM \"v\": it is paused"),
            ),
            (st(Halted), Event::Shutdown, Err("it is halted")),
            (st(Running), Event::Poweroff, Ok(Halted)),
            (st(Paused), Event::Poweroff, Ok(Halted)),
            (
                st(Halted),
                Event::Poweroff,
                Err("cannot power off VM \"v\": it is halted"),
            ),
            (st(Running), Event::Reboot, Ok(Running)),
            (st(Paused), Event::Reboot, Err("cannot reboot")),
            (st(Running), Event::Pause, Ok(Paused)),
            (st(Paused), Event::Pause, Err("cannot pause")),
            (st(Paused), Event::Resume, Ok(Running)),
            (
                st(Running),
                Event::Resume,
                Err("cannot resume VM \"v\": it is running"),
            ),
            (
                st(Halted),
                Event::Edit(Edit::Disks { add: true }),
                Ok(Halted),
            ),
            (
                st(Running),
                Event::Edit(Edit::Disks { add: true }),
                Err("cannot add a disk to VM \"v\": it is running"),
            ),
            (
                leased,
                Event::Edit(Edit::Disks { add: false }),
                Err("cannot remove a disk from VM \"v\": it is being exported"),
            ),
            (leased, Event::Edit(Edit::Nics { add: true }), Ok(Halted)),
            (
                st(Paused),
                Event::Edit(Edit::Nics { add: false }),
                Err("cannot remove a NIC from"),
            ),
            (st(Running), Event::Configure, Ok(Running)),
            (st(Halted), Event::Delete { force: false }, Ok(Halted)),
            (
                st(Running),
                Event::Delete { force: false },
                Err("it is running; shut it down first or use --force"),
            ),
            (st(Running), Event::Delete { force: true }, Ok(Halted)),
            (
                leased,
                Event::Delete { force: true },
                Err("cannot delete VM \"v\": it is being exported"),
            ),
            (st(Halted), Event::Lease(LeaseKind::Copy), Ok(Halted)),
            (
                st(Running),
                Event::Lease(LeaseKind::Copy),
                Err("cannot copy VM \"v\": it is running"),
            ),
            (leased, Event::Lease(LeaseKind::Copy), Ok(Halted)),
            (st(Halted), Event::Freeze, Ok(Halted)),
            (
                st(Running),
                Event::Freeze,
                Err("cannot clone VM \"v\": it is running"),
            ),
            (
                leased,
                Event::Freeze,
                Err("cannot clone VM \"v\": it is being exported"),
            ),
            (
                template,
                Event::ConvertToTemplate,
                Err("VM \"v\" is already a template"),
            ),
            (st(Running), Event::QemuStopped, Ok(Paused)),
            (st(Halted), Event::QemuStopped, Ok(Halted)),
            (st(Paused), Event::QemuResumed, Ok(Running)),
            (st(Running), Event::QemuExited, Ok(Halted)),
        ];
        for (from, event, want) in rows {
            let got = transition(from, event);
            match (want, got) {
                (Ok(p), Ok(s)) => assert_eq!(s.power, p, "{from:?} + {event:?}"),
                (Err(frag), Err(r)) => {
                    let m = r.message("v");
                    assert!(
                        m.contains(frag),
                        "{from:?} + {event:?}: {m:?} lacks {frag:?}"
                    );
                }
                (want, got) => panic!("{from:?} + {event:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn exit_ends_a_pending_shutdown() {
        let s = transition(st(Running), Event::Shutdown).unwrap_or_else(|r| panic!("{r}"));
        assert!(s.shutting_down);
        let s = transition(s, Event::QemuExited).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(s, VmState::halted());
    }

    #[test]
    fn a_migrating_vm_refuses_changes_but_hears_qemu() {
        let m = transition(st(Running), Event::Migrate).unwrap_or_else(|r| panic!("{r}"));
        assert!(m.migrating);
        for e in [
            Event::Poweroff,
            Event::Shutdown,
            Event::Pause,
            Event::Delete { force: true },
            Event::Migrate,
        ] {
            let r = transition(m, e).unwrap_err();
            assert_eq!(r.kind(), corral_model::ErrorKind::Busy, "{e:?}");
            assert!(r.message("v").contains("migrat"), "{}", r.message("v"));
        }
        assert_eq!(transition(m, Event::Configure), Ok(m));
        let gone = transition(m, Event::QemuExited).unwrap_or_else(|r| panic!("{r}"));
        assert!(!gone.migrating && gone.power == Halted);
        assert!(transition(st(Halted), Event::Migrate).is_err());
    }

    #[test]
    fn converting_makes_a_template_that_never_starts() {
        let s = transition(VmState::halted(), Event::ConvertToTemplate)
            .unwrap_or_else(|r| panic!("{r}"));
        assert!(s.template);
        assert_eq!(
            transition(s, Event::Start).map_err(|r| r.kind()),
            Err(corral_model::ErrorKind::InvalidState)
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn event() -> impl Strategy<Value = Event> {
            let edits = prop_oneof![
                any::<bool>().prop_map(|add| Edit::Disks { add }),
                any::<bool>().prop_map(|add| Edit::Nics { add }),
                Just(Edit::DeviceModel),
                any::<bool>().prop_map(|attach| Edit::Tpm { attach }),
                Just(Edit::AbandonInstall),
                Just(Edit::FinishInstall),
            ];
            prop_oneof![
                Just(Event::Start),
                Just(Event::Shutdown),
                Just(Event::Poweroff),
                Just(Event::Reboot),
                Just(Event::Pause),
                Just(Event::Resume),
                edits.prop_map(Event::Edit),
                Just(Event::Configure),
                any::<bool>().prop_map(|force| Event::Delete { force }),
                Just(Event::Lease(LeaseKind::Export)),
                Just(Event::Lease(LeaseKind::Copy)),
                Just(Event::LeaseEnded),
                Just(Event::Freeze),
                Just(Event::ConvertToTemplate),
                Just(Event::ShutdownAbandoned),
                Just(Event::QemuStopped),
                Just(Event::QemuResumed),
                Just(Event::QemuExited),
                Just(Event::Migrate),
            ]
        }

        proptest! {
            /// Random event sequences from a new VM never reach an invalid state, and every
            /// refusal names the state it refused in.
            #[test]
            fn sequences_stay_valid(events in proptest::collection::vec(event(), 0..60)) {
                let mut s = VmState::halted();
                for e in events {
                    match transition(s, e) {
                        Ok(next) => {
                            prop_assert!(next.is_valid(), "{s:?} + {e:?} -> {next:?}");
                            s = next;
                        }
                        Err(r) => {
                            let m = r.message("v");
                            let named = match r {
                                Refusal::PowerState { state, .. } => m.contains(state.as_str()) && state == s.power,
                                Refusal::Leased { lease, .. } => m.contains(lease.participle()) && s.leased.is_some(),
                                Refusal::Template { .. } => m.contains("template") && s.template,
                                Refusal::Migrating { .. } => m.contains("migrating") && s.migrating,
                            };
                            prop_assert!(named, "{s:?} + {e:?}: {m}");
                        }
                    }
                }
            }
        }
    }
}
