//! Measurement against known loads on this machine, and against fixed kernel files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

use corral_measure::{
    host_capacity, measure, parse_cpuinfo, parse_diskstats, parse_meminfo, MeasureOptions, Sampler,
};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_thread_burning_one_core_shows_up_as_about_one_core() {
    let mut sampler = Sampler::new().expect("this machine's counters are readable");
    let cores = f64::from(sampler.cpu.cores);
    let stop = Arc::new(AtomicBool::new(false));
    let burner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x: u64 = 1;
            while !stop.load(Ordering::Relaxed) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                std::hint::black_box(x);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    sampler.sample().expect("sample");
    std::thread::sleep(Duration::from_millis(1500));
    let s = sampler.sample().expect("sample");
    stop.store(true, Ordering::Relaxed);
    burner.join().expect("burner thread");
    let busy_cores = s.cpu_utilisation * cores;
    // Other processes may add load on a shared machine, but our core must be there.
    assert!(
        busy_cores >= 0.8,
        "one busy core measured as {busy_cores:.2} cores"
    );
    assert!(busy_cores <= cores + 0.01);
    let expected_ghz = busy_cores * sampler.cpu.mhz / 1000.0;
    assert!(
        (s.cpu_ghz - expected_ghz).abs() < 1e-9,
        "consumed GHz = cores × clock × utilisation"
    );
    assert!(s.memory_used_gib > 0.0);
}

#[test]
fn a_file_written_with_fsync_shows_up_in_full_in_disk_write_bytes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut sampler = Sampler::new().expect("counters");
    sampler.sample().expect("sample");
    let started = Instant::now();
    let size = 16usize << 20;
    let mut f = std::fs::File::create(dir.path().join("load.bin")).expect("create");
    f.write_all(&vec![1u8; size]).expect("write");
    f.sync_all().expect("fsync");
    let s = sampler.sample().expect("sample");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        s.iops > 0.0 && s.disk_write_mbps > 0.0,
        "no disk writes measured: {:?}",
        s.disks
    );
    let bytes: f64 = s.disks.values().map(|d| d.write_bytes_per_s).sum::<f64>() * elapsed;
    assert!(
        bytes >= size as f64 * 0.9,
        "wrote {size} bytes, measured {bytes:.0}"
    );
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn fake_root(root: &Path, cpu: (u64, u64), sectors_written: u64, part_sectors: u64, rx: u64) {
    let w = sectors_written / 128;
    write(root, "proc/cpuinfo", "processor\t: 0\nmodel name\t: Test CPU\ncpu MHz\t\t: 2000.000\n\nprocessor\t: 1\nmodel name\t: Test CPU\ncpu MHz\t\t: 2000.000\n");
    write(
        root,
        "proc/stat",
        &format!(
            "cpu  {} 0 0 {} 0 0 0 0 0 0\ncpu0 1 0 0 1\ncpu1 1 0 0 1\n",
            cpu.0, cpu.1
        ),
    );
    write(root, "proc/meminfo", "MemTotal:       8388608 kB\nMemFree:         1048576 kB\nMemAvailable:    6291456 kB\nCached:          4194304 kB\n");
    write(
        root,
        "proc/net/dev",
        &format!("Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    lo: 999999 1 0 0 0 0 0 0 999999 1 0 0 0 0 0 0\n  eth0: {rx} 1 0 0 0 0 0 0 0 1 0 0 0 0 0 0\n   br0: {rx} 1 0 0 0 0 0 0 0 1 0 0 0 0 0 0\n"),
    );
    write(
        root,
        "proc/diskstats",
        &format!(" 254 0 vda 10 0 0 0 {w} 0 {sectors_written} 0 0 0 0\n 254 1 vda1 10 0 0 0 {w} 0 {part_sectors} 0 0 0 0\n 7 0 loop0 0 0 0 0 99 0 99999 0 0 0 0\n"),
    );
    std::fs::create_dir_all(root.join("sys/block/vda/vda1")).expect("mkdir");
    std::fs::create_dir_all(root.join("sys/block/loop0")).expect("mkdir");
    std::fs::create_dir_all(root.join("sys/class/net/eth0/device")).expect("mkdir");
    std::fs::create_dir_all(root.join("sys/class/net/br0")).expect("mkdir");
    std::fs::create_dir_all(root.join("sys/class/net/lo")).expect("mkdir");
}

#[test]
fn whole_disks_and_physical_nics_only_and_memory_excludes_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    fake_root(root, (100, 100), 0, 0, 0);
    let mut sampler = Sampler::with_root(root).expect("fake root");
    assert_eq!(sampler.disks(), ["vda".to_string()]);
    // Half the CPU time busy, 2048 sectors (1 MiB) written to vda (its partition repeats them),
    // 1 MB received on eth0 (the bridge repeats it).
    fake_root(root, (200, 200), 2048, 2048, 1_000_000);
    let s = sampler.sample().expect("sample");
    assert!((s.cpu_utilisation - 0.5).abs() < 1e-9);
    assert!(
        (s.cpu_ghz - 0.5 * 2.0 * 2.0).abs() < 1e-9,
        "2 cores × 2 GHz × 50 % = 2 GHz"
    );
    assert!(
        (s.memory_used_gib - 2.0).abs() < 1e-9,
        "8 GiB total − 6 GiB available"
    );
    assert_eq!(s.disks.keys().collect::<Vec<_>>(), ["vda"]);
    assert_eq!(s.nics.keys().collect::<Vec<_>>(), ["eth0"]);
    let d = s.disks["vda"];
    assert!((d.write_iops / d.write_bytes_per_s - 16.0 / (2048.0 * 512.0)).abs() < 1e-12);
    let cap = host_capacity(root).expect("capacity");
    assert_eq!(cap.host.cores, 2);
    assert!((cap.host.memory_gib - 8.0).abs() < 1e-9);
    assert!(
        cap.notes.iter().any(|n| n.contains("eth0")),
        "{:?}",
        cap.notes
    );
}

#[test]
fn ctrl_c_stops_measuring_and_keeps_the_samples() {
    let dir = tempfile::tempdir().expect("temp dir");
    fake_root(dir.path(), (100, 100), 0, 0, 0);
    let mut sampler = Sampler::with_root(dir.path()).expect("fake root");
    let stop = AtomicBool::new(false);
    let opts = MeasureOptions {
        interval: Duration::from_millis(100),
        duration: Some(Duration::from_secs(3600)),
    };
    let started = Instant::now();
    let profile = measure(&mut sampler, opts, &stop, |p| {
        if p.samples.len() == 3 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .expect("measure");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(profile.interrupted);
    assert_eq!(profile.samples.len(), 3);
    assert_eq!(profile.cpu_model, "Test CPU");
    assert!(
        profile.summary.contains_key("cpu_ghz") && profile.summary.contains_key("disk_write_mbps")
    );
    // The profile is a workload for the planner.
    let text = serde_json::to_string(&profile).expect("json");
    let w = corral_placement::input::parse_profile(&text, "db.json", "db").expect("profile parses");
    assert!((w.demand.peak[1] - 2.0).abs() < 1e-9);
}

#[test]
fn parsers_reject_garbage() {
    assert!(parse_meminfo("nothing here\n").is_err());
    assert!(parse_diskstats(" 8 0 sda x y z\n").is_err());
    assert_eq!(parse_cpuinfo("").cores, 0);
}
