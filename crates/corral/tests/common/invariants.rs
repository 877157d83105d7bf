//! What "nothing was lost and nothing was left behind" means for one agent's state directory,
//! checked from the outside the way an operator would look: the VM list through the CLI, the
//! files in the repositories and the state directory, the QEMU processes on the host, and the
//! task list. The crash and fault tests (`chaos.rs`, `faults.rs`, `load.rs`) call
//! [`inconsistencies`] after every fault; an empty answer is a consistent state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

use super::TestAgent;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One VM as `vm list --json` shows it, with what the checks need.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub power_state: String,
    pub disks: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    pub pid: Option<u32>,
    pub raw: Value,
}

pub fn listed(a: &TestAgent) -> Vec<Listed> {
    let list = a.json(&["vm", "list"]);
    list.as_array()
        .expect("vm list is an array")
        .iter()
        .map(|v| {
            let disks: Vec<PathBuf> = v["disks"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|d| d["path"].as_str().map(PathBuf::from))
                        .collect()
                })
                .unwrap_or_default();
            let mut files = Vec::new();
            for k in ["kernel", "initrd"] {
                if let Some(p) = v["kernel_boot"][k].as_str() {
                    files.push(PathBuf::from(p));
                }
            }
            if let Some(cds) = v["cdroms"].as_array() {
                for c in cds {
                    if let Some(m) = c["media"].as_str() {
                        files.push(PathBuf::from(m));
                    }
                }
            }
            Listed {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                name: v["name"].as_str().unwrap_or_default().to_string(),
                power_state: v["power_state"].as_str().unwrap_or_default().to_string(),
                disks,
                files,
                pid: v["pid"].as_u64().map(|p| p as u32),
                raw: v.clone(),
            }
        })
        .collect()
}

/// The backing file a qcow2 header names (resolved against the image's directory), if any.
pub fn qcow2_backing(path: &Path) -> Result<Option<PathBuf>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = [0u8; 20];
    if f.read_exact(&mut head).is_err() || &head[..4] != b"QFI\xfb" {
        return Ok(None); // raw, or too short to be qcow2: no backing file
    }
    let off = u64::from_be_bytes(head[8..16].try_into().unwrap());
    let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
    if off == 0 || len == 0 {
        return Ok(None);
    }
    let all = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = all
        .get(off as usize..off as usize + len)
        .ok_or_else(|| format!("{}: backing file name out of range", path.display()))?;
    let p = PathBuf::from(String::from_utf8_lossy(name).into_owned());
    Ok(Some(if p.is_absolute() {
        p
    } else {
        path.parent().unwrap_or(Path::new("/")).join(p)
    }))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// QEMU processes on this host started for `state` (their command line names it), by pid.
pub fn qemu_processes(state: &Path) -> BTreeMap<u32, String> {
    let needle = state.to_string_lossy().into_owned();
    let mut out = BTreeMap::new();
    for e in entries(Path::new("/proc")) {
        let Ok(pid) = file_name(&e).parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_qemu = args
            .first()
            .is_some_and(|a| file_name(Path::new(a)).starts_with("qemu-system"));
        // A zombie (killed, not yet reaped by init) has an empty command line: not counted.
        if is_qemu && args.iter().any(|a| a.contains(&needle)) {
            let stat = std::fs::read_to_string(e.join("stat")).unwrap_or_default();
            let state_char = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            if state_char != "Z" {
                out.insert(pid, args.join(" "));
            }
        }
    }
    out
}

/// Every way the state directory of `a` can disagree with its VM list; empty when consistent.
/// `vms` is what `vm list` answered (see [`listed`]).
pub fn inconsistencies(a: &TestAgent, vms: &[Listed]) -> Vec<String> {
    let state = a.state_dir();
    let mut bad = Vec::new();

    // Each name once; each VM whole: its volumes and files exist and their chains are readable.
    let mut names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut used: BTreeSet<PathBuf> = BTreeSet::new();
    for v in vms {
        if !names.insert(v.name.clone()) {
            bad.push(format!("VM {:?} is listed twice", v.name));
        }
        ids.insert(v.id.clone());
        for d in &v.disks {
            let mut cur = d.clone();
            for _ in 0..64 {
                if !cur.exists() {
                    bad.push(format!(
                        "VM {:?}: volume {} (chain of {}) is missing",
                        v.name,
                        cur.display(),
                        d.display()
                    ));
                    break;
                }
                used.insert(cur.clone());
                match qcow2_backing(&cur) {
                    Ok(Some(next)) => cur = next,
                    Ok(None) => break,
                    Err(e) => {
                        bad.push(format!("VM {:?}: {e}", v.name));
                        break;
                    }
                }
            }
        }
        for f in &v.files {
            used.insert(f.clone());
            if !f.exists() {
                bad.push(format!("VM {:?}: file {} is missing", v.name, f.display()));
            }
        }
    }

    // Repositories: every file belongs to a VM (its volume, a base in its chain, a boot file).
    let srs = a.json(&["sr", "list"]);
    for sr in srs.as_array().into_iter().flatten() {
        let Some(dir) = sr["path"].as_str().map(PathBuf::from) else {
            continue;
        };
        let mut files = entries(&dir);
        files.extend(entries(&dir.join("bases")));
        for f in files {
            let n = file_name(&f);
            if f.is_dir() || n.starts_with('.') {
                continue;
            }
            if !used.contains(&f) {
                bad.push(format!("{} belongs to no VM", f.display()));
            }
        }
    }

    // Per-VM directories of the state: only recorded VMs have one.
    for (dir, strip) in [
        ("run", ""),
        ("install", ""),
        ("tpm", ""),
        ("seeds", ".iso"),
        ("nvram", ".fd"),
    ] {
        for e in entries(&state.join(dir)) {
            let n = file_name(&e);
            let id = n.strip_suffix(strip).unwrap_or(&n);
            if !ids.contains(id) {
                bad.push(format!("{dir}/{n} belongs to no VM"));
            }
        }
    }
    let staged = entries(&state.join("staging"));
    if !staged.is_empty() {
        bad.push(format!("staging leftovers: {staged:?}"));
    }

    // QEMU: exactly the running VMs have one, and each QEMU is a recorded VM's.
    let procs = qemu_processes(state);
    let mut owned = BTreeSet::new();
    for v in vms {
        let live = matches!(v.power_state.as_str(), "running" | "paused");
        match (live, v.pid) {
            (true, Some(pid)) => {
                owned.insert(pid);
                if !procs.contains_key(&pid) {
                    bad.push(format!(
                        "VM {:?} is {} but its QEMU (pid {pid}) is gone",
                        v.name, v.power_state
                    ));
                }
            }
            (true, None) => bad.push(format!(
                "VM {:?} is {} without a pid",
                v.name, v.power_state
            )),
            (false, _) => {}
        }
    }
    for (pid, cmd) in &procs {
        if !owned.contains(pid) {
            let short: String = cmd.chars().take(160).collect();
            bad.push(format!("QEMU pid {pid} belongs to no running VM: {short}"));
        }
    }
    bad
}

/// Tasks that say `running` although they started before `since_ms` (the agent that ran them
/// is gone, so they must be marked failed).
pub fn stale_running_tasks(a: &TestAgent, since_ms: u64) -> Vec<String> {
    let tasks = a.json(&["task", "list"]);
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["state"] == "running" && t["started_at_ms"].as_u64().unwrap_or(0) < since_ms)
        .map(|t| {
            format!(
                "task {} ({}) of a killed agent is still running",
                t["id"].as_str().unwrap_or_default(),
                t["operation"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
