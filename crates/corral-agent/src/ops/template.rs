//! Templates made from VMs (`vm convert-to-template`) and VMs stamped from them (`vm create
//! --template T` / `vm install --template T` where T is a template VM): a template keeps its
//! volumes in the repository's `bases/` (it never starts, so never writes), and each VM made
//! from it gets overlays directly on those bases, so stamping many does not lengthen chains.
//! The bases lock of [`super::clone`] is held while references to bases change.

use super::clone::{spec_of, FrozenDisk, BASES};
use crate::error::Error;
use crate::network::DEFAULT_NETWORK;
use crate::ops::Ops;
use crate::spec::random_mac;
use crate::vm::Op;
use corral_model::api::*;
use corral_model::task::Operation;
use corral_model::validate::*;
use corral_model::*;
use std::sync::Arc;

impl Ops {
    /// `vm convert-to-template NAME`.
    pub async fn convert_to_template(&self, name: &str) -> Result<(VmInfo, String), Error> {
        let _guard = BASES.lock().await;
        self.vm_op(name, Operation::VmConvertToTemplate, Op::ConvertToTemplate)
            .await
    }

    /// `vm create --template T` (and `vm install --template T`) where `T` is a template VM:
    /// the new VM gets linked clones of T's disks and T's settings, overridden by the request.
    /// Disks the request lists are added after the cloned ones; NICs the request lists replace
    /// T's (otherwise T's NICs are kept with new MACs).
    pub async fn create_from_template_vm(
        self: &Arc<Self>,
        req: VmCreateRequest,
    ) -> Result<(VmInfo, String), Error> {
        let tname = req.template.clone().unwrap_or_default();
        let tpl = self.vm(&tname)?;
        let t = tpl.info();
        if !t.is_template {
            return Err(Error::invalid(format!(
                "VM {tname:?} is not a template (convert it with `vm convert-to-template`, or clone it)"
            )));
        }
        let name = req.name.clone();
        let start = req.start;
        let (info, task) = self
            .with_new_name(&name, Operation::VmCreate, |task| async move {
                let _guard = BASES.lock().await;
                let t = tpl.info();
                let mut spec = spec_of(&t);
                let frozen: Vec<FrozenDisk> = t
                    .disks
                    .iter()
                    .map(|d| FrozenDisk {
                        disk: d.clone(),
                        base: d.path.clone(),
                        base_format: d.format,
                    })
                    .collect();
                self.apply_overrides(&mut spec, &req, &frozen)?;
                // A fresh TPM: VMs stamped from one template must not share its identity.
                self.layer_and_record(spec, &frozen, &task, (&t.id, false))
                    .await
            })
            .await?;
        if start {
            let h = self.vm(&name)?;
            let t = self
                .host
                .tasks
                .start(Operation::VmStart, Some((&info.id, &info.name)));
            h.call(Op::Action(VmAction::Start, ActionRequest::default()), t)
                .await?;
            return Ok((h.info(), task));
        }
        Ok((info, task))
    }

    fn apply_overrides(
        &self,
        spec: &mut VmSpec,
        req: &VmCreateRequest,
        frozen: &[FrozenDisk],
    ) -> Result<(), Error> {
        spec.template = req.template.clone();
        spec.name = req.name.clone();
        spec.is_template = false;
        if let Some(d) = &req.description {
            spec.description = d.clone();
        }
        if let Some(v) = req.vcpus {
            validate_vcpus(v).map_err(Error::invalid)?;
            spec.vcpus = v;
        }
        if let Some(m) = req.memory_bytes {
            crate::spec::check_memory(self.host.as_ref(), m)?;
            spec.memory_bytes = m;
        }
        if let Some(a) = req.autostart {
            spec.autostart = a;
        }
        if let Some(w) = req.cpu_weight {
            validate_cpu_weight(w).map_err(Error::invalid)?;
            spec.cpu_weight = w;
        }
        if let Some(f) = req.firmware {
            spec.firmware = f;
        }
        if let Some(t) = req.tpm {
            spec.tpm = t;
        }
        if let Some(b) = req.boot_device {
            spec.boot_device = b;
        }
        match &req.nics {
            Some(nics) => {
                if nics.len() > MAX_NICS {
                    return Err(Error::invalid(format!(
                        "{} NICs is more than the maximum of {MAX_NICS}",
                        nics.len()
                    )));
                }
                spec.nics = nics
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        crate::spec::nic_from_request(
                            self.host.as_ref(),
                            &format!("nic{i}"),
                            n,
                            NicModel::Virtio,
                        )
                    })
                    .collect::<Result<_, _>>()?;
            }
            None => {
                for n in spec.nics.iter_mut() {
                    n.mac = random_mac();
                    if self.network(&n.network).is_err() {
                        n.network = DEFAULT_NETWORK.into();
                    }
                }
            }
        }
        if let Some(extra) = &req.disks {
            if frozen.len() + extra.len() > MAX_DISKS {
                return Err(Error::invalid(format!(
                    "{} disks is more than the maximum of {MAX_DISKS}",
                    frozen.len() + extra.len()
                )));
            }
            if !extra.is_empty() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "extra disks with a template VM: create the VM, then `vm disk add`",
                ));
            }
        }
        if let Some(k) = &req.kernel {
            if !k.is_absolute() || !k.is_file() {
                return Err(Error::invalid(format!(
                    "kernel {} is not an existing absolute path",
                    k.display()
                )));
            }
            spec.kernel_boot = Some(KernelBoot {
                kernel: k.clone(),
                initrd: req.initrd.clone(),
                cmdline: req.cmdline.clone().unwrap_or_default(),
            });
        } else if let Some(kb) = spec.kernel_boot.as_mut() {
            if let Some(i) = &req.initrd {
                kb.initrd = Some(i.clone());
            }
            if let Some(c) = &req.cmdline {
                kb.cmdline = c.clone();
            }
        }
        if let Some(iso) = &req.cdrom {
            let path = crate::spec::iso_path(self.host.as_ref(), iso)?;
            match spec.cdroms.first_mut() {
                Some(c) => c.media = Some(path),
                None => spec.cdroms.push(Cdrom {
                    device: "cdrom0".into(),
                    bus: DiskBus::Sata,
                    media: Some(path),
                }),
            }
        }
        Ok(())
    }
}
