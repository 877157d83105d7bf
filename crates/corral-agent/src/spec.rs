//! The spec step: a create request, a template and the host's facts become a [`VmSpec`], or
//! the problems that prevent it. Every limit a VM must respect (vCPUs, memory against the
//! host, disk and NIC counts, template restrictions) is checked here and only here; the
//! actor's edits (`vm set`, disk and NIC adds) call the same functions.
//!
//! Nothing here writes: facts come through [`HostFacts`], which the agent answers from its
//! records and the file system and tests answer from a table.

use crate::error::Error;
use crate::network::DEFAULT_NETWORK;
use corral_install::Template;
use corral_model::api::*;
use corral_model::host::{Network, StorageRepository};
use corral_model::validate::*;
use corral_model::*;
use std::path::{Path, PathBuf};

/// What the spec step needs to know about the host.
pub trait HostFacts {
    fn sr(&self, name: &str) -> Result<StorageRepository, Error>;
    fn network(&self, name: &str) -> Result<Network, Error>;
    fn template(&self, name: &str) -> Result<Template, Error>;
    /// Installed memory; 0 when unknown (then no host limit is applied).
    fn memory_total_bytes(&self) -> u64;
    /// The ISO library, where media named without a path are looked up.
    fn iso_dir(&self) -> &Path;
    fn is_file(&self, path: &Path) -> bool;
    /// Files or devices (a host CD drive is a block device).
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` holds an ISO 9660 image (the reason when not).
    fn check_iso(&self, path: &Path) -> Result<(), String>;
}

/// The limits a VM's size must respect, with its template's restrictions (when it still
/// exists) for `more_nics`/`more_disks` devices beyond the spec's own.
pub fn check_limits(
    facts: &dyn HostFacts,
    spec: &VmSpec,
    more_nics: usize,
    more_disks: usize,
) -> Result<(), Error> {
    validate_vcpus(spec.vcpus).map_err(Error::invalid)?;
    check_memory(facts, spec.memory_bytes)?;
    let disks = spec.disks.len() + more_disks;
    if disks > MAX_DISKS {
        return Err(Error::invalid(format!(
            "VM {:?} would have {disks} disks, more than the maximum of {MAX_DISKS}",
            spec.name
        )));
    }
    let nics = spec.nics.len() + more_nics;
    if nics > MAX_NICS {
        return Err(Error::invalid(format!(
            "VM {:?} would have {nics} NICs, more than the maximum of {MAX_NICS}",
            spec.name
        )));
    }
    let Some(t) = &spec.template else {
        return Ok(());
    };
    // A template deleted since leaves nothing to enforce.
    let Ok(tpl) = facts.template(t) else {
        return Ok(());
    };
    tpl.check_restrictions(spec.vcpus, spec.memory_bytes, nics, disks)
        .map_err(|p| Error::invalid(p.join("; ")))
}

/// Turn a create request into a full spec: template defaults, then the request, then
/// every check that needs host facts. Nothing is written here.
pub fn spec_from_request(
    facts: &dyn HostFacts,
    id: &str,
    req: &VmCreateRequest,
) -> Result<VmSpec, Error> {
    let mut req = req.clone();
    if let Some(name) = req.template.clone() {
        let tpl = facts.template(&name)?;
        tpl.apply_to_request(&mut req, DEFAULT_NETWORK)
            .map_err(|problems| Error::invalid(problems.join("; ")))?;
    }
    // Without a template: 1 vCPU, 1 GiB, no disks, one virtio NIC on the default network.
    let vcpus = req.vcpus.unwrap_or(1);
    validate_vcpus(vcpus).map_err(Error::invalid)?;
    let memory_bytes = req.memory_bytes.unwrap_or(1 << 30);
    check_memory(facts, memory_bytes)?;
    let cpu_weight = req.cpu_weight.unwrap_or(CPU_WEIGHT_NORMAL);
    validate_cpu_weight(cpu_weight).map_err(Error::invalid)?;

    let disk_reqs = req.disks.clone().unwrap_or_default();
    if disk_reqs.len() > MAX_DISKS {
        return Err(Error::invalid(format!(
            "{} disks is more than the maximum of {MAX_DISKS}",
            disk_reqs.len()
        )));
    }
    let mut disks = Vec::new();
    for (i, d) in disk_reqs.iter().enumerate() {
        let device = format!("disk{i}");
        disks.push(disk_from_request(facts, id, &device, d, DiskBus::Virtio)?);
    }

    let nic_reqs = req.nics.clone().unwrap_or_else(|| {
        vec![NicRequest {
            network: DEFAULT_NETWORK.into(),
            ..Default::default()
        }]
    });
    if nic_reqs.len() > MAX_NICS {
        return Err(Error::invalid(format!(
            "{} NICs is more than the maximum of {MAX_NICS}",
            nic_reqs.len()
        )));
    }
    let mut nics = Vec::new();
    for (i, n) in nic_reqs.iter().enumerate() {
        nics.push(nic_from_request(
            facts,
            &format!("nic{i}"),
            n,
            NicModel::Virtio,
        )?);
    }

    // CD drives are never virtio; an IDE-disk guest gets an IDE drive too.
    let cdrom_bus = if disks.iter().any(|d| d.bus == DiskBus::Ide) {
        DiskBus::Ide
    } else {
        DiskBus::Sata
    };
    let media = match &req.cdrom {
        Some(p) => Some(iso_path(facts, p)?),
        None => None,
    };
    let cdroms = vec![Cdrom {
        device: "cdrom0".into(),
        bus: cdrom_bus,
        media,
    }];

    let kernel_boot = match &req.kernel {
        Some(k) => Some(KernelBoot {
            kernel: check_file(facts, "kernel", k)?,
            initrd: req
                .initrd
                .as_deref()
                .map(|p| check_file(facts, "initrd", p))
                .transpose()?,
            cmdline: req.cmdline.clone().unwrap_or_default(),
        }),
        None if req.initrd.is_some() || req.cmdline.is_some() => {
            return Err(Error::invalid("--initrd and --cmdline need --kernel"))
        }
        None => None,
    };
    let boot_device = req.boot_device.unwrap_or(
        if req.cdrom.is_some() && req.disks.as_ref().is_none_or(|d| !d.is_empty()) {
            // A fresh VM with install media boots from it first.
            BootDevice::Cdrom
        } else {
            BootDevice::Disk
        },
    );

    let spec = VmSpec {
        name: req.name.clone(),
        description: req.description.clone().unwrap_or_default(),
        vcpus,
        memory_bytes,
        autostart: req.autostart.unwrap_or(false),
        cpu_weight,
        firmware: req.firmware.unwrap_or_default(),
        disks,
        cdroms,
        nics,
        kernel_boot,
        boot_device,
        template: req.template.clone(),
        is_template: false,
        install: None,
        tpm: req.tpm.unwrap_or(false),
    };
    Ok(spec)
}

pub fn check_memory(facts: &dyn HostFacts, bytes: u64) -> Result<(), Error> {
    validate_memory(bytes).map_err(Error::invalid)?;
    let total = facts.memory_total_bytes();
    if total > 0 && bytes > total {
        return Err(Error::invalid(format!(
            "memory {} is more than this host has ({})",
            format_size(bytes),
            format_size(total)
        )));
    }
    Ok(())
}

pub fn disk_from_request(
    facts: &dyn HostFacts,
    vm_id: &str,
    device: &str,
    d: &DiskRequest,
    default_bus: DiskBus,
) -> Result<Disk, Error> {
    match &d.import_from {
        // Size 0 with an image means "the image's size".
        Some(src) => {
            check_file(facts, "disk image", src)?;
            if d.size_bytes != 0 {
                validate_disk_size(d.size_bytes).map_err(Error::invalid)?;
            }
        }
        None => validate_disk_size(d.size_bytes).map_err(Error::invalid)?,
    }
    let sr_name = d.sr.clone().unwrap_or_else(|| "default".into());
    let sr = facts.sr(&sr_name)?;
    let format = d.format.unwrap_or_default();
    Ok(Disk {
        device: device.to_string(),
        size_bytes: d.size_bytes,
        format,
        bus: d.bus.unwrap_or(default_bus),
        path: sr
            .path
            .join(corral_storage::volume_file_name(vm_id, device, format)),
        sr: sr_name,
    })
}

pub fn nic_from_request(
    facts: &dyn HostFacts,
    device: &str,
    n: &NicRequest,
    default_model: NicModel,
) -> Result<Nic, Error> {
    facts.network(&n.network)?;
    let mac = match &n.mac {
        Some(m) => {
            validate_mac(m).map_err(Error::invalid)?;
            m.to_ascii_lowercase()
        }
        None => random_mac(),
    };
    Ok(Nic {
        device: device.to_string(),
        network: n.network.clone(),
        model: n.model.unwrap_or(default_model),
        mac,
    })
}

/// ISO media may be given as a path or as a name in the ISO library.
pub fn iso_path(facts: &dyn HostFacts, p: &Path) -> Result<PathBuf, Error> {
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        let in_library = facts.iso_dir().join(p);
        if facts.exists(&in_library) {
            in_library
        } else {
            return Err(Error::invalid(format!(
                "ISO {} is not an absolute path nor in the ISO library ({})",
                p.display(),
                facts.iso_dir().display()
            )));
        }
    };
    if !facts.exists(&path) {
        return Err(Error::invalid(format!(
            "ISO {} does not exist",
            path.display()
        )));
    }
    facts.check_iso(&path).map_err(Error::invalid)?;
    Ok(path)
}

fn check_file(facts: &dyn HostFacts, what: &str, p: &Path) -> Result<PathBuf, Error> {
    if !p.is_absolute() {
        return Err(Error::invalid(format!(
            "{what} path {} is not absolute",
            p.display()
        )));
    }
    if !facts.is_file(p) {
        return Err(Error::invalid(format!(
            "{what} {} does not exist",
            p.display()
        )));
    }
    Ok(p.to_path_buf())
}

/// A random locally administered unicast MAC in QEMU's 52:54:00 range.
pub fn random_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}
