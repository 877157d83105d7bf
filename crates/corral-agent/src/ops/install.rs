//! `vm install`: create a VM and install an operating system into it, as one `vm.install` task.
//!
//! A request flows in two halves. [`Ops::install_vm`] does every check that needs no network
//! (name, template, restrictions, paths, URL syntax, sizes of the answer files) and answers at
//! once with an error or the task id; it reserves the VM's name. The task then runs
//! [`Ops::run_install`]: find the installer (detect the install tree and download its kernel
//! and initrd into `STATE/install/<vm-id>`, put the unattended file into the initrd; or use the
//! ISO, the PXE boot directory, the disk image), create the VM with install-time boot settings
//! (`VmSpec::install`, which makes QEMU exit instead of rebooting), start it, wait until the
//! installer powers the guest off or reboots it, switch the VM to disk boot (`Op::FinishInstall`:
//! installer kernel dropped, install media ejected, empty drive kept), remove the scratch files
//! and start the installed system.
//!
//! Failure policy: anything that fails before the VM exists (unreachable host, 404, unknown
//! tree layout, download errors, cancel) leaves no VM and no files. Once the installer has
//! booted, a failure (install timeout, cancel) powers the VM off and leaves it halted, with the
//! failed task in its history, so the console log can be read: an installer's last screen is
//! usually the only explanation there is.

use crate::answers::AnswerServer;
use crate::error::Error;
use crate::network::DEFAULT_NETWORK;
use crate::ops::install_plan::{
    choose_template, compose_cmdline, detected_tree, plan_of, PlanInputs,
};
use crate::ops::Ops;
use crate::tasks::TaskHandle;
use crate::vm::{Op, VmHandle};
use corral_install::fetch::{self, FetchOptions, Progress};
use corral_install::templates::{ArgValues, InstallMethod, UnattendedKind};
use corral_install::tree::{self, DetectOptions, Detected, Unattended};
use corral_install::url::Scheme;
use corral_install::{seed, Location, Template};
use corral_model::api::*;
use corral_model::host::NetworkKind;
use corral_model::install::{InstallPlan, TemplateReason};
use corral_model::task::Operation;
use corral_model::validate::validate_name;
use corral_model::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long an installer may run when the request does not say.
pub const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_INSTALL_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Answer files and cloud-init documents are small text; this bounds what a client can make
/// the agent hold in memory.
const MAX_ANSWER_FILE_BYTES: usize = 1 << 20;
const MAX_EXTRA_ARGS: usize = 4096;
/// Boot files the agent's TFTP boot server announces, in order of preference.
const PXE_BOOT_FILES: &[&str] = &["boot.ipxe", "pxelinux.0", "lpxelinux.0", "ipxe.efi"];
/// How often the install task looks at the guest's power state.
const POLL: Duration = Duration::from_millis(500);

/// What the task will do to get an installer running; decided before the task starts.
enum Plan {
    /// Detect the tree at `location`, download its kernel and initrd; with `pxe`, serve them
    /// from the agent's TFTP boot server instead of booting them directly.
    Tree { location: Location, pxe: bool },
    /// Boot vendor media from the CD drive once.
    Cdrom,
    /// Network boot from an existing TFTP directory (default network), or the LAN's server.
    Pxe {
        boot_server: Option<(PathBuf, String)>,
    },
    /// Import a disk image and boot it (cloud images); optional NoCloud seed in the CD drive.
    DiskImport {
        cloud_init: Option<CloudInitRequest>,
    },
}

/// A validated install, ready to run.
struct Prepared {
    id: String,
    /// The request's VM part, kept to rebuild `spec` with the template detection chooses.
    create: VmCreateRequest,
    spec: VmSpec,
    disk_sources: Vec<Option<PathBuf>>,
    template: Option<Template>,
    plan: Plan,
    extra_args: String,
    unattended: Option<(UnattendedKind, String)>,
    /// Serve the answer file over HTTP (cloud-init autoinstall, or a template whose
    /// `installer_args` use `{unattended_url}`); only on the default (NAT) network.
    serve_answers: bool,
    /// The answer-file listener while the install task runs.
    answers: Option<AnswerServer>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid(msg)
}

impl Ops {
    /// Validate an install request, reserve the name, and start the `vm.install` task.
    /// Returns the task id; the VM appears when the installer is about to boot.
    pub async fn install_vm(self: &Arc<Self>, req: VmInstallRequest) -> Result<String, Error> {
        validate_name("VM", &req.vm.name).map_err(Error::invalid)?;
        if let Some(t) = &req.vm.template {
            if self.host.is_template_vm(t) {
                return self.install_from_template_vm(req).await;
            }
        }
        let prepared = self.prepare_install(req)?;
        let name = prepared.spec.name.clone();
        self.host.registry_mut().reserve(&name)?;
        let task = self
            .host
            .tasks
            .start(Operation::VmInstall, Some((&prepared.id, &name)));
        let task_id = task.id.clone();
        let agent = self.clone();
        tokio::spawn(async move {
            let result = agent.run_install(prepared, &task).await;
            task.finish_with_note(result);
        });
        Ok(task_id)
    }

    /// `vm install --template T` where T is a template VM (`vm convert-to-template`): the
    /// installed system is T's, so the VM is a linked clone of it, started at once.
    async fn install_from_template_vm(
        self: &Arc<Self>,
        req: VmInstallRequest,
    ) -> Result<String, Error> {
        if req.source.is_some()
            || req.unattended.is_some()
            || req.cloud_init.is_some()
            || req.extra_args.is_some()
        {
            return Err(invalid(format!(
                "{:?} is a template VM: installing from it clones its installed system, so it \
                 takes no install source, answer file or installer arguments",
                req.vm.template.as_deref().unwrap_or_default()
            )));
        }
        let mut create = req.vm;
        create.start = true;
        let (_, task) = self.create_from_template_vm(create).await?;
        Ok(task)
    }

    /// Every check that needs no network; nothing is written.
    fn prepare_install(&self, req: VmInstallRequest) -> Result<Prepared, Error> {
        let VmInstallRequest {
            vm: mut create,
            source,
            extra_args,
            unattended,
            cloud_init,
            timeout_secs,
        } = req;
        if create.kernel.is_some() || create.initrd.is_some() || create.cmdline.is_some() {
            return Err(invalid(
                "vm install boots the installer's own kernel: give the tree with --location \
                 (URL,kernel=PATH,initrd=PATH overrides detection) and kernel arguments with \
                 --extra-args",
            ));
        }
        if create.start {
            return Err(invalid(
                "vm install always starts the VM; `start` is not an install setting",
            ));
        }
        let template = match &create.template {
            Some(t) => Some(self.host.templates().get(t)?.clone()),
            None => None,
        };
        let timeout = match timeout_secs {
            None => DEFAULT_INSTALL_TIMEOUT,
            Some(s) if (1..=MAX_INSTALL_TIMEOUT_SECS).contains(&s) => Duration::from_secs(s),
            Some(s) => {
                return Err(invalid(format!(
                    "install timeout {s} s is out of range (1 s to {MAX_INSTALL_TIMEOUT_SECS} s)"
                )))
            }
        };
        let extra_args = extra_args.unwrap_or_default();
        check_kernel_args(&extra_args)?;

        let first_nic_bridged = self.first_nic_is_bridged(&create, template.as_ref())?;
        let source = source.ok_or_else(|| {
            invalid(
                "give one install source: --location URL, --cdrom ISO, --pxe or --disk-import \
                 IMAGE (or --template NAME of a template VM)",
            )
        })?;
        let (plan, method) = match source {
            InstallSource::Location { location } => {
                let loc = parse_location(&location)?;
                let method = method_of_scheme(loc.url.scheme);
                (
                    Plan::Tree {
                        location: loc,
                        pxe: false,
                    },
                    method,
                )
            }
            InstallSource::Cdrom { iso } => {
                let iso = crate::spec::iso_path(self.host.as_ref(), &iso)?;
                if create.cdrom.as_ref().is_some_and(|c| c != &iso) {
                    return Err(invalid(
                        "give the install media once (source ISO and cdrom differ)",
                    ));
                }
                create.cdrom = Some(iso);
                (Plan::Cdrom, Some(InstallMethod::Cdrom))
            }
            InstallSource::Pxe {
                boot_server,
                location,
            } => {
                if first_nic_bridged && (boot_server.is_some() || location.is_some()) {
                    return Err(invalid(
                        "the agent serves PXE only on the default (NAT) network; the VM's first \
                         NIC is on a bridge, where the LAN's boot server answers (drop \
                         --boot-server/--location)",
                    ));
                }
                let plan =
                    match (boot_server, location) {
                        (Some(_), Some(_)) => return Err(invalid(
                            "give either --boot-server DIR or --location URL for --pxe, not both",
                        )),
                        (Some(dir), None) => Plan::Pxe {
                            boot_server: Some(check_boot_server(&dir)?),
                        },
                        (None, Some(location)) => Plan::Tree {
                            location: parse_location(&location)?,
                            pxe: true,
                        },
                        (None, None) if first_nic_bridged => Plan::Pxe { boot_server: None },
                        (None, None) => return Err(invalid(
                            "--pxe on the default network needs a boot server: --boot-server DIR \
                             (a TFTP directory with boot.ipxe or pxelinux.0) or --location URL \
                             (the agent builds one from the tree's kernel and initrd)",
                        )),
                    };
                (plan, Some(InstallMethod::Pxe))
            }
            InstallSource::DiskImport { image } => {
                let disks = create.disks.get_or_insert_with(Vec::new);
                let size = template
                    .as_ref()
                    .and_then(|t| t.disks.first())
                    .map_or(0, |d| d.size_bytes);
                if disks.is_empty() {
                    disks.push(DiskRequest {
                        size_bytes: size,
                        bus: template
                            .as_ref()
                            .and_then(|t| t.disks.first())
                            .map(|d| d.bus),
                        ..Default::default()
                    });
                }
                if disks[0].import_from.is_some() {
                    return Err(invalid(
                        "the first disk is the imported image; give it once",
                    ));
                }
                disks[0].import_from = Some(image);
                (
                    Plan::DiskImport { cloud_init: None },
                    Some(InstallMethod::DiskImport),
                )
            }
        };
        if !extra_args.trim().is_empty() && !matches!(plan, Plan::Tree { .. }) {
            return Err(invalid(
                "--extra-args needs --location (or --pxe --location): install media, boot \
                 servers and images bring their own kernel command line",
            ));
        }
        if let (Some(t), Some(m)) = (&template, method) {
            if !t.install_methods.contains(&m) {
                let can: Vec<&str> = t.install_methods.iter().map(|m| m.as_str()).collect();
                return Err(invalid(format!(
                    "template {:?} does not install from {} (it installs from: {})",
                    t.name,
                    m.as_str(),
                    can.join(", ")
                )));
            }
        }
        let plan = match (plan, cloud_init) {
            (Plan::DiskImport { .. }, Some(ci)) => {
                for (what, text) in [
                    ("user-data", Some(&ci.user_data)),
                    ("meta-data", ci.meta_data.as_ref()),
                    ("network-config", ci.network_config.as_ref()),
                ] {
                    if text.is_some_and(|t| t.len() > MAX_ANSWER_FILE_BYTES) {
                        return Err(invalid(format!(
                            "cloud-init {what} is larger than {}",
                            format_size(MAX_ANSWER_FILE_BYTES as u64)
                        )));
                    }
                }
                Plan::DiskImport {
                    cloud_init: Some(ci),
                }
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "--cloud-init seeds image installs: use it with --disk-import",
                ))
            }
            (plan, None) => plan,
        };
        let unattended = match unattended {
            None => None,
            Some(text) => {
                if text.len() > MAX_ANSWER_FILE_BYTES {
                    return Err(invalid(format!(
                        "the unattended file is larger than {}",
                        format_size(MAX_ANSWER_FILE_BYTES as u64)
                    )));
                }
                if !matches!(plan, Plan::Tree { .. }) {
                    return Err(invalid(
                        "--unattended is read by the installer the tree boots, so it needs \
                         --location (or --pxe --location)",
                    ));
                }
                let kind = template.as_ref().map(|t| t.unattended);
                match kind {
                    Some(k) if seed::initrd_file_name(k).is_some() => Some((k, text)),
                    Some(UnattendedKind::CloudInit) if first_nic_bridged => {
                        return Err(invalid(
                            "cloud-init autoinstall reads its answers from the agent over HTTP, \
                             which a guest reaches on the default (NAT) network only; the VM's \
                             first NIC is on a bridge",
                        ))
                    }
                    Some(k @ UnattendedKind::CloudInit) => Some((k, text)),
                    _ => {
                        return Err(invalid(format!(
                            "template {} has no unattended installer (preseed, kickstart, \
                             AutoYaST or cloud-init autoinstall); pick the OS's template with \
                             --template",
                            create.template.as_deref().unwrap_or("(none)")
                        )))
                    }
                }
            }
        };

        let id = uuid::Uuid::new_v4().to_string();
        let disk_sources: Vec<Option<PathBuf>> = create
            .disks
            .iter()
            .flatten()
            .map(|d| d.import_from.clone())
            .collect();
        let mut spec = crate::spec::spec_from_request(self.host.as_ref(), &id, &create)?;
        // Without --template a tree install takes the template of the OS detection finds,
        // which may bring the disk: that check waits until then (`adopt_template`).
        let template_from_tree = template.is_none() && matches!(plan, Plan::Tree { .. });
        if !matches!(plan, Plan::DiskImport { .. }) {
            if spec.disks.is_empty() && !template_from_tree {
                return Err(invalid(
                    "an install needs a disk to install onto (--disk SIZE, or a template with one)",
                ));
            }
            spec.install = Some(InstallBoot {
                task_id: String::new(),
                pxe: None,
                timeout_secs: Some(timeout.as_secs()),
                deadline_ms: None,
            });
        }
        spec.boot_device = match plan {
            Plan::Cdrom => BootDevice::Cdrom,
            Plan::Pxe { .. } | Plan::Tree { pxe: true, .. } => BootDevice::Network,
            _ => BootDevice::Disk,
        };
        let serve_answers = !first_nic_bridged
            && unattended.as_ref().is_some_and(|(kind, _)| {
                *kind == UnattendedKind::CloudInit
                    || template
                        .as_ref()
                        .is_some_and(|t| t.installer_args.contains("{unattended_url}"))
            });
        Ok(Prepared {
            id,
            create,
            spec,
            disk_sources,
            template,
            plan,
            extra_args,
            unattended,
            serve_answers,
            answers: None,
        })
    }

    /// Whether the VM's first NIC (from the request or the template's default) is bridged.
    fn first_nic_is_bridged(
        &self,
        create: &VmCreateRequest,
        template: Option<&Template>,
    ) -> Result<bool, Error> {
        let network = match create.nics.as_ref().and_then(|n| n.first()) {
            Some(n) => n.network.clone(),
            None if create.nics.is_some() || template.is_some_and(|t| t.nic_count == 0) => {
                return Ok(false)
            }
            None => DEFAULT_NETWORK.to_string(),
        };
        Ok(self.network(&network)?.kind == NetworkKind::Bridge)
    }

    /// The task body. Returns the success note.
    async fn run_install(
        self: &Arc<Self>,
        mut p: Prepared,
        task: &TaskHandle,
    ) -> Result<String, Error> {
        let scratch = self.host.layout.install_dir(&p.id);
        if let Some(i) = &mut p.spec.install {
            i.task_id = task.id.clone();
        }
        let name = p.spec.name.clone();
        // Before the seed or the installer's scratch files exist: a crash from here until the
        // VM is recorded removes them at the next start (`crate::intents`).
        crate::intents::begin_create(&self.host, &p.id, &name, Vec::new()).await?;
        // Before the VM exists: any failure releases the name and removes the scratch files.
        let staged = self.stage_installer(&mut p, &scratch, task).await;
        let created = match staged {
            Ok(notes) => {
                task.phase("creating the VM", 0.35);
                match self
                    .materialize_vm(p.id.clone(), p.spec.clone(), p.disk_sources.clone(), task)
                    .await
                {
                    Ok(h) => Ok((h, notes)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (handle, mut notes) = match created {
            Ok(x) => x,
            Err(e) => {
                self.host.registry_mut().release(&name);
                let _ = std::fs::remove_dir_all(&scratch);
                let _ = std::fs::remove_file(self.host.layout.seed_iso(&p.id));
                if e.kind != ErrorKind::Unavailable {
                    crate::intents::finish(&self.host, &p.id).await;
                }
                return Err(e);
            }
        };

        if p.spec.install.is_none() {
            // Image install: the imported disk is the installed system.
            task.phase("booting the imported image", 0.8);
            self.sub_op(
                &handle,
                Operation::VmStart,
                Op::Action(VmAction::Start, ActionRequest::default()),
            )
            .await?;
            notes.insert(0, "imported the image and started the VM".into());
            return Ok(notes.join("; "));
        }

        task.phase("booting the installer", 0.4);
        self.sub_op(
            &handle,
            Operation::VmStart,
            Op::Action(VmAction::Start, ActionRequest::default()),
        )
        .await?;
        task.phase(
            &format!("installing (watch it: corral vm console {name})"),
            0.5,
        );
        // On failure the installer files stay (removed with the VM), so `vm start` retries
        // the installer (a new `vm.install` task watches the retry: `watch_install`) and the
        // console log can be read; `vm set --abandon-install` gives up.
        self.wait_for_installer(&handle, task).await?;
        let done = self
            .finish_install(&handle, matches!(p.plan, Plan::Cdrom), task)
            .await?;
        notes.insert(0, done);
        Ok(notes.join("; "))
    }

    /// After an agent restart: an install whose task the restart interrupted gets a new
    /// `vm.install` task that waits for the installer (or, when the guest powered off while
    /// the agent was down, takes that as the installer's end) and switches the VM to disk
    /// boot, as the lost task would have, within the deadline the install had. Installs that
    /// had failed stay as they were (`vm start` retries them).
    pub(crate) fn resume_installs(self: &Arc<Self>) {
        let handles: Vec<VmHandle> = self.host.registry().by_id.values().cloned().collect();
        for h in handles {
            let info = h.info();
            let Some(install) = &info.install else {
                continue;
            };
            let interrupted = self
                .host
                .tasks
                .get(&install.task_id)
                .is_some_and(|t| crate::tasks::was_interrupted(&t));
            if !interrupted {
                continue;
            }
            let task = self
                .host
                .tasks
                .start(Operation::VmInstall, Some((&info.id, &info.name)));
            watch_install(self.clone(), info.id.clone(), task);
        }
    }

    /// The installer is done: boot settings back to normal, scratch files gone, installed
    /// system started.
    async fn finish_install(
        &self,
        h: &VmHandle,
        eject_cdrom: bool,
        task: &TaskHandle,
    ) -> Result<String, Error> {
        task.phase("rebooting into the installed system", 0.9);
        self.sub_op(
            h,
            Operation::VmFinishInstall,
            Op::FinishInstall { eject_cdrom },
        )
        .await?;
        let _ = std::fs::remove_dir_all(self.host.layout.install_dir(&h.id));
        self.sub_op(
            h,
            Operation::VmStart,
            Op::Action(VmAction::Start, ActionRequest::default()),
        )
        .await?;
        Ok("the installer finished; the VM now boots from its disk".into())
    }

    /// Run an operation on the VM as its own task (so it shows in the VM's history).
    async fn sub_op(&self, h: &VmHandle, operation: Operation, op: Op) -> Result<(), Error> {
        let info = h.info();
        let t = self
            .host
            .tasks
            .start(operation, Some((&info.id, &info.name)));
        h.call(op, t).await
    }

    /// Get the installer ready before the VM exists: download and prepare kernel and initrd,
    /// the PXE directory, or the cloud-init seed. Returns notes for the user.
    async fn stage_installer(
        &self,
        p: &mut Prepared,
        scratch: &Path,
        task: &TaskHandle,
    ) -> Result<Vec<String>, Error> {
        let mut notes = Vec::new();
        match &p.plan {
            Plan::Cdrom => {}
            Plan::Pxe { boot_server } => {
                if let (Some(i), Some((dir, file))) = (&mut p.spec.install, boot_server) {
                    i.pxe = Some(PxeBoot {
                        tftp_root: dir.clone(),
                        boot_file: file.clone(),
                    });
                }
            }
            Plan::DiskImport { cloud_init } => {
                if let Some(ci) = cloud_init.clone() {
                    let iso = self.host.layout.seed_iso(&p.id);
                    let meta = ci
                        .meta_data
                        .clone()
                        .unwrap_or_else(|| seed::nocloud_meta_data(&p.id, &p.spec.name));
                    task.phase("writing the cloud-init seed", 0.1);
                    blocking(move || {
                        if let Some(dir) = iso.parent() {
                            std::fs::create_dir_all(dir).map_err(|e| {
                                Error::caused(
                                    ErrorKind::Internal,
                                    format!("cannot create {}", dir.display()),
                                    e,
                                )
                            })?;
                        }
                        seed::build_nocloud_iso(
                            &iso,
                            ci.user_data.as_bytes(),
                            meta.as_bytes(),
                            ci.network_config.as_deref().map(str::as_bytes),
                        )
                        .map_err(|e| Error::from_error(ErrorKind::InvalidInput, e))?;
                        Ok(iso)
                    })
                    .await
                    .map(|iso| {
                        if let Some(c) = p.spec.cdroms.first_mut() {
                            c.media = Some(iso);
                        }
                    })?;
                    notes.push("cloud-init seed (NoCloud, label cidata) in the CD drive".into());
                }
            }
            Plan::Tree { location, pxe } => {
                let (location, pxe) = (location.clone(), *pxe);
                let installer = self
                    .fetch_installer(p, location, pxe, scratch, task)
                    .await?;
                notes.extend(installer.notes);
                p.answers = installer.answers;
                if pxe {
                    let script = format!(
                        "#!ipxe\nkernel vmlinuz {}\ninitrd initrd.img\nboot\n",
                        installer.cmdline
                    );
                    std::fs::write(scratch.join("boot.ipxe"), script).map_err(|e| {
                        Error::caused(ErrorKind::Internal, "cannot write the PXE boot script", e)
                    })?;
                    if let Some(i) = &mut p.spec.install {
                        i.pxe = Some(PxeBoot {
                            tftp_root: scratch.to_path_buf(),
                            boot_file: "boot.ipxe".into(),
                        });
                    }
                } else {
                    p.spec.kernel_boot = Some(KernelBoot {
                        kernel: installer.kernel,
                        initrd: Some(installer.initrd),
                        cmdline: installer.cmdline,
                    });
                }
            }
        }
        Ok(notes)
    }

    /// How detection sees the tree for this install, and the tree's URL as the guest sees it
    /// (QEMU's NAT shows the host's loopback as 10.0.2.2).
    fn detect_options(
        &self,
        p: &Prepared,
        location: &Location,
    ) -> (DetectOptions, corral_install::SourceUrl) {
        let on_nat = p
            .spec
            .nics
            .first()
            .is_some_and(|n| n.network == DEFAULT_NETWORK);
        let guest_url = on_nat.then(|| guest_view_on_nat(&location.url)).flatten();
        let guest_location = guest_url.clone().unwrap_or_else(|| location.url.clone());
        let template = p.template.as_ref();
        let catalog_names = self.host.templates().catalog().os_names();
        let opts = DetectOptions {
            kernel: location.kernel.clone(),
            initrd: location.initrd.clone(),
            family_hint: template.map(|t| t.os.family),
            suite_hints: template
                .and_then(|t| t.os.codename.clone())
                .into_iter()
                .collect(),
            guest_url,
            unattended: if p.unattended.is_some() {
                Unattended::InInitrd
            } else {
                Unattended::None
            },
            extra_kernel_paths: self.host.templates().catalog().osinfo_kernel_paths(),
            os_names: catalog_names,
        };
        (opts, guest_location)
    }

    /// Detect the tree at `location` (only the small files detection reads are fetched).
    async fn detect_tree(
        &self,
        location: &Location,
        opts: DetectOptions,
    ) -> Result<Detected, Error> {
        let url = location.url.clone();
        blocking(move || {
            let src = fetch::open(&url, &FetchOptions::default()).map_err(fetch_err)?;
            tree::detect(src.as_ref(), &url, &opts).map_err(|e| Error::from_error(e.kind(), e))
        })
        .await
    }

    /// Without `--template`: take the template for the OS the tree holds (see
    /// `install_plan::choose_template`) and rebuild the VM spec with it, keeping the install's
    /// boot settings. Says which template and why.
    fn adopt_template(
        &self,
        p: &mut Prepared,
        detected: &Detected,
    ) -> Result<corral_model::install::TemplateChoice, Error> {
        let (template, choice) = choose_template(
            self.host.templates().catalog(),
            p.template.as_ref(),
            detected.os.osinfo_id.as_deref(),
        );
        if choice.reason != TemplateReason::Given {
            if let Some(t) = &template {
                let mut create = p.create.clone();
                create.template = Some(t.name.clone());
                let mut spec = crate::spec::spec_from_request(self.host.as_ref(), &p.id, &create)?;
                spec.install = p.spec.install.take();
                spec.boot_device = p.spec.boot_device;
                p.spec = spec;
                p.create = create;
                p.template = template;
            }
            if p.spec.disks.is_empty() {
                return Err(invalid(format!(
                    "an install needs a disk to install onto (--disk SIZE, or a template with one); {}",
                    choice.explanation
                )));
            }
        }
        Ok(choice)
    }

    /// Detect the tree, download kernel and initrd into `scratch`, add the unattended file,
    /// and compose the kernel command line.
    async fn fetch_installer(
        &self,
        p: &mut Prepared,
        location: Location,
        pxe: bool,
        scratch: &Path,
        task: &TaskHandle,
    ) -> Result<FetchedInstaller, Error> {
        task.phase(
            &format!("detecting the install tree at {}", location.url),
            0.02,
        );
        std::fs::create_dir_all(scratch).map_err(|e| {
            Error::caused(
                ErrorKind::Internal,
                format!("cannot create {}", scratch.display()),
                e,
            )
        })?;
        let (mut opts, guest_location) = self.detect_options(p, &location);
        let (kernel_name, initrd_name) = if pxe {
            ("vmlinuz", "initrd.img")
        } else {
            ("kernel", "initrd")
        };
        let kernel = scratch.join(kernel_name);
        let initrd = scratch.join(initrd_name);
        let (k, i) = (kernel.clone(), initrd.clone());
        let t = task.clone();
        let (answers, unattended_url) = match (&p.unattended, p.serve_answers) {
            (Some((kind, text)), true) => {
                let (server, url) = self.serve_answers(p, *kind, text, scratch).await?;
                if *kind == UnattendedKind::CloudInit {
                    opts.unattended = Unattended::Url(url.clone());
                }
                (Some(server), Some(url))
            }
            _ => (None, None),
        };
        // Answer files the installer can read from its initrd go there too: that needs no
        // network and survives a retry.
        let unattended = p
            .unattended
            .clone()
            .filter(|(kind, _)| seed::initrd_file_name(*kind).is_some());
        let detected = self.detect_tree(&location, opts).await?;
        let choice = self.adopt_template(p, &detected)?;
        let (kernel_path, initrd_path) =
            (detected.kernel_path.clone(), detected.initrd_path.clone());
        blocking(move || {
            let src = fetch::open(&location.url, &FetchOptions::default()).map_err(fetch_err)?;
            t.phase_span(
                &format!("fetching the installer's kernel ({kernel_path})"),
                0.05,
                0.15,
            );
            let mut progress = |pr: Progress| {
                if let Some(total) = pr.total_bytes {
                    t.bytes(pr.done_bytes, total);
                }
                !t.is_cancelled()
            };
            src.fetch_to_file(&kernel_path, &k, &mut progress)
                .map_err(fetch_err)?;
            t.phase_span(
                &format!("fetching the installer's initrd ({initrd_path})"),
                0.15,
                0.33,
            );
            src.fetch_to_file(&initrd_path, &i, &mut progress)
                .map_err(fetch_err)?;
            if let Some((kind, text)) = unattended {
                let name = seed::initrd_file_name(kind).unwrap_or("preseed.cfg");
                seed::append_to_initrd(
                    &i,
                    &i,
                    &[seed::SeedFile {
                        name: name.into(),
                        data: text.into_bytes(),
                        mode: 0o644,
                    }],
                )
                .map_err(|e| Error::from_error(ErrorKind::Internal, e))?;
            }
            Ok(())
        })
        .await?;
        if task.is_cancelled() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "the install was cancelled",
            ));
        }
        let mut notes = tree_notes(p, &detected);
        if choice.reason != TemplateReason::Given {
            notes.insert(1, choice.explanation.clone());
        }
        let cmdline = compose_cmdline(
            &detected.installer_args,
            p.template.as_ref(),
            &ArgValues {
                location: Some(guest_location.to_string_with_credentials()),
                unattended_url: unattended_url.clone(),
                name: Some(p.spec.name.clone()),
            },
            &p.extra_args,
        );
        check_kernel_args(&cmdline)?;
        if let Some(url) = &unattended_url {
            notes.push(format!("the agent serves the answer file at {url}"));
        }
        Ok(FetchedInstaller {
            kernel,
            initrd,
            cmdline,
            notes,
            answers,
        })
    }

    /// `vm install --dry-run`: every check and the tree's detection of a real install, then
    /// the plan it would follow. Nothing is created, reserved or downloaded beyond the small
    /// files detection reads, and no task runs.
    pub async fn plan_install(
        self: &Arc<Self>,
        req: VmInstallRequest,
    ) -> Result<InstallPlan, Error> {
        validate_name("VM", &req.vm.name).map_err(Error::invalid)?;
        if let Some(t) = &req.vm.template {
            if self.host.is_template_vm(t) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{t:?} is a template VM: an install from it is a linked clone, which                          has no plan to show (vm clone shows what it copies)"
                    ),
                ));
            }
        }
        let source = match &req.source {
            Some(InstallSource::Location { .. }) => "location",
            Some(InstallSource::Cdrom { .. }) => "cdrom",
            Some(InstallSource::Pxe { .. }) => "pxe",
            Some(InstallSource::DiskImport { .. }) => "disk_import",
            None => "none",
        };
        let given_location = match &req.source {
            Some(InstallSource::Location { location })
            | Some(InstallSource::Pxe {
                location: Some(location),
                ..
            }) => parse_location(location).ok().map(|l| l.url.to_string()),
            Some(InstallSource::Cdrom { iso }) => Some(iso.display().to_string()),
            Some(InstallSource::DiskImport { image }) => Some(image.display().to_string()),
            Some(InstallSource::Pxe {
                boot_server: Some(dir),
                ..
            }) => Some(dir.display().to_string()),
            _ => None,
        };
        let mut p = self.prepare_install(req)?;
        // The same answer as a real install when the name is taken; released at once.
        {
            let mut registry = self.host.registry_mut();
            registry.reserve(&p.spec.name)?;
            registry.release(&p.spec.name);
        }
        let mut notes = Vec::new();
        let (mut detected, mut kernel_args) = (None, None);
        let mut choice =
            choose_template(self.host.templates().catalog(), p.template.as_ref(), None).1;
        if let Plan::Tree { location, pxe } = &p.plan {
            let (location, pxe) = (location.clone(), *pxe);
            let (mut opts, guest_location) = self.detect_options(&p, &location);
            // The answer-file listener gets its port and token when the install runs.
            let unattended_url = match &p.unattended {
                Some((kind, _)) if p.serve_answers => {
                    let file = match kind {
                        UnattendedKind::CloudInit => String::new(),
                        k => seed::initrd_file_name(*k).unwrap_or("answers").to_string(),
                    };
                    let url = format!("http://10.0.2.2:PORT/TOKEN/{file}");
                    if *kind == UnattendedKind::CloudInit {
                        opts.unattended = Unattended::Url(url.clone());
                    }
                    notes.push(format!(
                        "the agent will serve the answer file at {url} (port and token are chosen when the install runs)"
                    ));
                    Some(url)
                }
                _ => None,
            };
            let d = self.detect_tree(&location, opts).await?;
            choice = self.adopt_template(&mut p, &d)?;
            let mut tree_notes = tree_notes(&p, &d);
            tree_notes.append(&mut notes);
            notes = tree_notes;
            let cmdline = compose_cmdline(
                &d.installer_args,
                p.template.as_ref(),
                &ArgValues {
                    location: Some(guest_location.to_string_with_credentials()),
                    unattended_url,
                    name: Some(p.spec.name.clone()),
                },
                &p.extra_args,
            );
            check_kernel_args(&cmdline)?;
            if pxe {
                notes.push(
                    "the agent's TFTP boot server will boot the installer (boot.ipxe)".into(),
                );
            }
            detected = Some(detected_tree(&d, &location.url));
            kernel_args = Some(cmdline);
        }
        if let Plan::DiskImport { cloud_init } = &p.plan {
            notes.push(if cloud_init.is_some() {
                "the first disk is a copy of the image, grown to its size; the cloud-init seed                  (NoCloud, label cidata) goes in the CD drive"
                    .into()
            } else {
                "the first disk is a copy of the image, grown to its size".into()
            });
        }
        let mut plan = plan_of(
            &p.spec,
            PlanInputs {
                source,
                location: given_location,
                detected,
                template: choice,
                kernel_args,
                notes,
            },
        );
        for (disk, src) in plan.disks.iter_mut().zip(&p.disk_sources) {
            disk.import_from = src.clone();
        }
        Ok(plan)
    }

    /// Start the install's answer-file listener; returns it and the URL the installer is
    /// given (cloud-init: the NoCloud directory holding `user-data` and `meta-data`; others:
    /// the file itself).
    async fn serve_answers(
        &self,
        p: &Prepared,
        kind: UnattendedKind,
        text: &str,
        scratch: &Path,
    ) -> Result<(AnswerServer, String), Error> {
        let meta;
        let files: Vec<(&str, &[u8])> = if kind == UnattendedKind::CloudInit {
            meta = seed::nocloud_meta_data(&p.id, &p.spec.name);
            vec![
                ("user-data", text.as_bytes()),
                ("meta-data", meta.as_bytes()),
            ]
        } else {
            let name = seed::initrd_file_name(kind).unwrap_or("answers");
            vec![(name, text.as_bytes())]
        };
        let server = AnswerServer::start(scratch, &files)
            .await
            .map_err(|e| Error::from_error(ErrorKind::Internal, e))?;
        let url = match kind {
            UnattendedKind::CloudInit => server.guest_url(),
            _ => format!("{}{}", server.guest_url(), files[0].0),
        };
        Ok((server, url))
    }

    /// Wait until the installer powers the guest off (or reboots it, which ends QEMU during an
    /// install). When the timeout passes or the task is cancelled, power the VM off and fail.
    async fn wait_for_installer(&self, h: &VmHandle, task: &TaskHandle) -> Result<(), Error> {
        let result = self.installer_finished(h, task).await;
        if result.is_err() && h.info().power_state != PowerState::Halted {
            let _ = self
                .sub_op(
                    h,
                    Operation::VmPoweroff,
                    Op::Action(VmAction::Poweroff, ActionRequest::default()),
                )
                .await;
        }
        result
    }

    async fn installer_finished(&self, h: &VmHandle, task: &TaskHandle) -> Result<(), Error> {
        // The deadline is the install's own (set when the installer started), so a resumed
        // install keeps the user's --timeout and a retry gets it afresh.
        let install = h.info().install.unwrap_or_default();
        let timeout = install
            .timeout_secs
            .map_or(DEFAULT_INSTALL_TIMEOUT, Duration::from_secs);
        let left = match install.deadline_ms {
            Some(at) => Duration::from_millis(at.saturating_sub(crate::clock::now_ms())),
            None => timeout,
        };
        let deadline = tokio::time::Instant::now() + left;
        loop {
            if h.info().power_state == PowerState::Halted {
                return Ok(());
            }
            if task.is_cancelled() {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "the install was cancelled; the VM was powered off and left halted",
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                let name = h.info().name;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the installer did not finish within {} s; the VM was powered off and \
                         left halted (its last screen: corral vm console {name} --log)",
                        timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Ops {
    /// The guest-tools ISO `vm tools insert` uses: `--tools-iso`, else the newest
    /// `virtio-win*.iso` in the ISO library (what Windows guests need for virtio disks and NICs).
    pub fn tools_iso(&self) -> Result<PathBuf, Error> {
        if let Some(p) = &self.tools_iso {
            return crate::spec::iso_path(self.host.as_ref(), p);
        }
        // By name, so virtio-win-0.1.240.iso wins over virtio-win-0.1.229.iso.
        let newest = corral_storage::list_isos(&self.iso_dir)
            .into_iter()
            .filter(|i| i.name.to_ascii_lowercase().starts_with("virtio-win"))
            .max_by(|a, b| a.name.cmp(&b.name));
        match newest {
            Some(iso) => crate::spec::iso_path(self.host.as_ref(), &iso.path),
            None => Err(Error::not_found(format!(
                "no guest-tools ISO: put virtio-win.iso into the ISO library ({}) or start the \
                 agent with --tools-iso PATH",
                self.iso_dir.display()
            ))),
        }
    }
}

/// Watch an installer that runs without its original task (after an agent restart, or a
/// `vm start` that retries a failed install): wait for it within the install's deadline,
/// then switch the VM to disk boot. `task` is the new `vm.install` task.
pub(crate) fn watch_install(agent: Arc<Ops>, vm_id: String, task: TaskHandle) {
    tokio::spawn(async move {
        let result = async {
            let h = agent
                .host
                .registry()
                .by_id
                .get(&vm_id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("VM {vm_id} is gone")))?;
            let info = h.info();
            // The answer files the installer may fetch again, at the URL it was given.
            let _answers = AnswerServer::resume(&agent.host.layout.install_dir(&vm_id))
                .await
                .map_err(|e| Error::from_error(ErrorKind::Internal, e))?;
            task.phase(
                &format!(
                    "installing (watch it: corral vm console {}; the installer was restarted)",
                    info.name
                ),
                0.5,
            );
            agent.wait_for_installer(&h, &task).await?;
            agent
                .finish_install(&h, h.info().boot_device == BootDevice::Cdrom, &task)
                .await
        }
        .await;
        task.finish_with_note(result);
    });
}

struct FetchedInstaller {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
    notes: Vec<String>,
    answers: Option<AnswerServer>,
}

/// What an install tells about its tree: what was detected, what detection noted, and a
/// template that is for another family than the tree.
fn tree_notes(p: &Prepared, detected: &Detected) -> Vec<String> {
    let mut notes = detected.notes.clone();
    notes.insert(
        0,
        format!(
            "detected {} {} ({} layout{})",
            detected.os.name,
            detected.os.version,
            detected.layout,
            detected
                .os
                .osinfo_id
                .as_deref()
                .map(|id| format!(", osinfo {id}"))
                .unwrap_or_default()
        ),
    );
    if let Some(t) = &p.template {
        if detected.os.family != t.os.family {
            notes.push(format!(
                "the tree holds {} but template {} is for {:?}",
                detected.os.name, t.name, t.os.family
            ));
        }
    }
    notes
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::caused(ErrorKind::Internal, "install worker failed", e))?
}

fn fetch_err(e: fetch::FetchError) -> Error {
    Error::from_error(e.kind(), e)
}

fn parse_location(text: &str) -> Result<Location, Error> {
    let loc = Location::parse(text).map_err(|e| Error::from_error(ErrorKind::InvalidInput, e))?;
    if loc.url.scheme == Scheme::File && !Path::new(&loc.url.path).is_dir() {
        return Err(invalid(format!(
            "install tree {} is not a directory on the agent's host",
            loc.url.path
        )));
    }
    Ok(loc)
}

fn method_of_scheme(s: Scheme) -> Option<InstallMethod> {
    match s {
        Scheme::Http | Scheme::Https => Some(InstallMethod::Http),
        Scheme::Ftp => Some(InstallMethod::Ftp),
        Scheme::Nfs => Some(InstallMethod::Nfs),
        // A local directory is the admin's own copy of a tree or of media: always allowed.
        Scheme::File => None,
    }
}

/// QEMU's user-mode network shows the host's loopback to the guest as 10.0.2.2.
fn guest_view_on_nat(url: &corral_install::SourceUrl) -> Option<corral_install::SourceUrl> {
    if url.scheme == Scheme::File {
        return None;
    }
    let loopback = url.host == "localhost"
        || url
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| {
        let mut u = url.clone();
        u.host = "10.0.2.2".into();
        u
    })
}

/// Kernel arguments end up on QEMU's `-append`, in an iPXE script and in the installer's
/// view: one line of printable text, no iPXE expansions.
fn check_kernel_args(args: &str) -> Result<(), Error> {
    if args.len() > MAX_EXTRA_ARGS {
        return Err(invalid(format!(
            "kernel arguments are longer than {MAX_EXTRA_ARGS} bytes"
        )));
    }
    if let Some(c) = args.chars().find(|c| c.is_control()) {
        return Err(invalid(format!(
            "kernel arguments contain a control character ({:?})",
            c
        )));
    }
    if args.contains("${") {
        return Err(invalid(
            "kernel arguments may not contain \"${\" (iPXE would expand it)",
        ));
    }
    Ok(())
}

/// A PXE boot directory must exist and hold a boot file the agent can announce.
fn check_boot_server(dir: &Path) -> Result<(PathBuf, String), Error> {
    if !dir.is_absolute() {
        return Err(invalid(format!(
            "boot server directory {} is not an absolute path",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(invalid(format!(
            "boot server directory {} does not exist",
            dir.display()
        )));
    }
    PXE_BOOT_FILES
        .iter()
        .find(|f| dir.join(f).is_file())
        .map(|f| (dir.to_path_buf(), f.to_string()))
        .ok_or_else(|| {
            invalid(format!(
                "boot server directory {} has no boot file (looked for {})",
                dir.display(),
                PXE_BOOT_FILES.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_are_one_safe_line() {
        assert!(check_kernel_args("console=ttyS0 priority=critical").is_ok());
        assert!(check_kernel_args("a\nkernel evil").is_err());
        assert!(check_kernel_args("x=${net0/ip}").is_err());
        assert!(check_kernel_args(&"a".repeat(MAX_EXTRA_ARGS + 1)).is_err());
    }

    #[test]
    fn loopback_trees_are_reached_through_the_nat_gateway() {
        let u = corral_install::SourceUrl::parse("http://127.0.0.1:8000/tree/").unwrap();
        assert_eq!(guest_view_on_nat(&u).unwrap().host, "10.0.2.2");
        let u = corral_install::SourceUrl::parse("http://mirror.example/debian/").unwrap();
        assert!(guest_view_on_nat(&u).is_none());
    }

    #[test]
    fn boot_server_needs_a_boot_file() {
        let d = tempfile::tempdir().unwrap();
        let e = check_boot_server(d.path()).unwrap_err();
        assert!(e.message.contains("boot.ipxe"), "{}", e.message);
        std::fs::write(d.path().join("pxelinux.0"), b"x").unwrap();
        assert_eq!(check_boot_server(d.path()).unwrap().1, "pxelinux.0");
        assert!(check_boot_server(Path::new("relative")).is_err());
    }
}
