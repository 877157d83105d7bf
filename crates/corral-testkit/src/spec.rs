//! VM spec fixtures: the smallest valid VM, for tests to change what they need.

use corral_model::*;

/// One vCPU, 128 MiB, BIOS, no disks, CD drives or NICs.
pub fn vm_spec(name: &str) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        description: String::new(),
        vcpus: 1,
        memory_bytes: 128 << 20,
        autostart: false,
        cpu_weight: CPU_WEIGHT_NORMAL,
        firmware: Firmware::Bios,
        disks: Vec::new(),
        cdroms: Vec::new(),
        nics: Vec::new(),
        kernel_boot: None,
        boot_device: BootDevice::Disk,
        template: None,
        is_template: false,
        install: None,
        tpm: false,
    }
}
