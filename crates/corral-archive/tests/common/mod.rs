//! Test helpers: an in-memory disk source, a minimal independent tar writer (so tests can
//! build members the `tar` crate refuses to write: `..`, links, devices), and an independent
//! implementation of the archive hash for re-sealing edited archives.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic
#![allow(dead_code)]

use corral_archive::DiskSource;
use corral_model::*;
use std::io;

/// A disk held in memory with explicit allocated ranges.
pub struct MemSource {
    pub data: Vec<u8>,
    pub allocated: Vec<(u64, u64)>,
}

impl DiskSource for MemSource {
    fn virtual_size(&self) -> u64 {
        self.data.len() as u64
    }
    fn allocated_extents(&self) -> io::Result<Vec<(u64, u64)>> {
        Ok(self.allocated.clone())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A 8 MiB test disk: text at the start, zeros inside an allocated range, noise later, a hole.
pub fn sample_disk() -> MemSource {
    let mut data = vec![0u8; 8 << 20];
    let text = b"corral archive test data, compressible. ".repeat(30_000);
    data[..text.len()].copy_from_slice(&text);
    let n = noise(1 << 20, 7);
    data[5 << 20..6 << 20].copy_from_slice(&n);
    data[(8 << 20) - 10] = 0xAB;
    MemSource {
        data,
        // 2..3 MiB allocated but zero; 6..7 MiB a hole; the last 64 KiB allocated
        allocated: vec![(0, 3 << 20), (5 << 20, 1 << 20), ((8 << 20) - 65536, 65536)],
    }
}

pub fn spec(name: &str, disks: &[&str]) -> VmSpec {
    VmSpec {
        name: name.into(),
        description: "a test VM".into(),
        vcpus: 2,
        memory_bytes: 512 << 20,
        autostart: true,
        cpu_weight: 512,
        firmware: Firmware::Uefi,
        disks: disks
            .iter()
            .map(|d| Disk {
                device: d.to_string(),
                size_bytes: 8 << 20,
                format: DiskFormat::Raw,
                bus: DiskBus::Virtio,
                sr: "local".into(),
                path: format!("/var/lib/corral/{d}.raw").into(),
            })
            .collect(),
        cdroms: vec![],
        nics: vec![Nic {
            device: "nic0".into(),
            network: "lan".into(),
            model: NicModel::Virtio,
            mac: "52:54:00:12:34:56".into(),
        }],
        kernel_boot: None,
        boot_device: BootDevice::Disk,
        template: None,
        is_template: false,
        install: None,
        tpm: false,
    }
}

/// One member for the raw tar writer.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub kind: u8,
    pub data: Vec<u8>,
    pub link: String,
    /// Size written in the header (defaults to data length).
    pub declared_size: Option<u64>,
}

impl Member {
    pub fn file(name: &str, data: &[u8]) -> Self {
        Member {
            name: name.into(),
            kind: b'0',
            data: data.to_vec(),
            link: String::new(),
            declared_size: None,
        }
    }
    pub fn special(name: &str, kind: u8, link: &str) -> Self {
        Member {
            name: name.into(),
            kind,
            data: vec![],
            link: link.into(),
            declared_size: None,
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// A plain ustar writer, independent of the `tar` crate.
pub fn write_tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = [0u8; 512];
        let name = m.name.as_bytes();
        assert!(name.len() <= 100, "name too long for the test writer");
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(
            &mut h[124..136],
            m.declared_size.unwrap_or(m.data.len() as u64),
        );
        octal(&mut h[136..148], 0);
        h[156] = m.kind;
        h[157..157 + m.link.len()].copy_from_slice(m.link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&m.data);
        let pad = (512 - m.data.len() % 512) % 512;
        out.resize(out.len() + pad, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Read the members of a well-formed tar (test inputs only).
pub fn read_tar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.push((name, data));
    }
    out
}

/// Recompute `checksums.json` after editing members, per the documented hash definition.
pub fn reseal(members: &mut [(String, Vec<u8>)]) {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let last = members.len() - 1;
    assert_eq!(members[last].0, "checksums.json");
    for (name, data) in &members[..last] {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    let mut c: serde_json::Value = serde_json::from_slice(&members[last].1).unwrap();
    c["archive_xxh3_128"] = format!("{:032x}", h.digest128()).into();
    members[last].1 = serde_json::to_vec(&c).unwrap();
}

pub fn to_tar(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    write_tar(
        &members
            .iter()
            .map(|(n, d)| Member::file(n, d))
            .collect::<Vec<_>>(),
    )
}

/// Every file under `dir`, relative.
pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &std::path::Path, d: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
