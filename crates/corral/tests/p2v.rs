//! Hot P2V end to end (issue 12): the P2V fixture booted as a running "physical server"
//! (Debian 12 on a SATA disk, root on `/dev/sda1` by device name, `/var` on LVM, an e1000
//! NIC named `ens5`, no virtio in its initramfs) runs `corral p2v` against an agent it
//! reaches over HTTPS, while a file is being written. The new VM boots on virtio-blk and
//! virtio-net to its ready line with a DHCP address, the file written during the copy is
//! there and complete, only used data crossed the wire, and the fixture is unchanged.
//! Every wait has a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::server::*;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// An agent with an HTTPS listener on 127.0.0.1 (the guests reach it as 10.0.2.2): the
/// agent, its port and its certificate's fingerprint.
fn listening_agent() -> (TestAgent, u16, String) {
    let port = free_port();
    let a = TestAgent::start_with(&["--listen", &format!("127.0.0.1:{port}")]);
    let fingerprint = a.json(&["host", "info"])["remote"]["cert_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    (a, port, fingerprint)
}

/// The source's boot to its ready line under TCG.
const SOURCE_BOOT: Duration = Duration::from_secs(6 * 60);
/// `corral p2v` inside the source, both passes (under TCG the source reads and compresses
/// slowly).
const TRANSFER: Duration = Duration::from_secs(10 * 60);

#[test]
fn a_running_server_is_copied_hot_and_boots_on_virtio() {
    let src = fixture();
    let before = {
        let src = src.clone();
        std::thread::spawn(move || sha256(&src))
    };
    let (a, port, fingerprint) = listening_agent();
    let token = std::fs::read(a.state_dir().join("token")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let binary = std::fs::read(corral_bin()).unwrap();
    let tools = tools_image(
        work.path(),
        &[("corral", &binary, 0o755), ("token", &token, 0o600)],
    );
    let mut server = SourceServer::boot(&src, &tools);
    let t = Instant::now();
    server.wait_ready_and_log_in(SOURCE_BOOT);
    println!("source up: {:.0} s", t.elapsed().as_secs_f64());

    // What it found, before anything is sent.
    server.ok("mount -o ro /dev/sdb /mnt", Duration::from_secs(60));
    let dry = server.ok("/mnt/corral p2v --dry-run 2>&1", Duration::from_secs(120));
    println!("dry run:\n{dry}");
    for want in [
        "/dev/sda",
        "ext4",
        "Debian GNU/Linux 12",
        "initramfs-tools",
        "grub2",
    ] {
        assert!(
            dry.contains(want),
            "the dry run does not show {want:?}:\n{dry}"
        );
    }

    // A directory left out of the copy: its data is not sent, the VM has it empty.
    server.ok(
        "mkdir -p /root/excluded && head -c 16000000 /dev/urandom > /root/excluded/junk.bin",
        Duration::from_secs(60),
    );
    let (out, rc) = server.run(
        "/mnt/corral p2v --dry-run --exclude /etc 2>&1",
        Duration::from_secs(60),
    );
    assert_ne!(rc, 0, "--exclude /etc was taken:\n{out}");
    assert!(out.contains("needs that directory"), "{out}");

    // A file is written while the first pass runs; it must arrive whole.
    server.ok(
        "(sleep 2; dd if=/dev/urandom of=/root/during-copy.bin bs=1M count=24 2>/dev/null; \
         sha256sum /root/during-copy.bin > /root/during-copy.sha256; date +%s > /root/during-copy.done) \
         >/dev/null 2>&1 &",
        Duration::from_secs(30),
    );
    let t = Instant::now();
    let (out, rc) = server.run(
        &format!(
            "/mnt/corral --json p2v --to https://10.0.2.2:{port} --token-file /mnt/token \
             --fingerprint {fingerprint} --name oldweb --description 'old web server' --no-wait \
             --exclude /root/excluded \
             > /run/p2v.json 2> /run/p2v.err; cat /run/p2v.err; cat /run/p2v.json"
        ),
        TRANSFER,
    );
    let transfer = t.elapsed();
    println!("p2v ({:.0} s):\n{out}", transfer.as_secs_f64());
    assert_eq!(
        rc,
        0,
        "corral p2v failed:\n{out}\nagent log:\n{}",
        tail(&a.log(), 30)
    );
    let summary: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .expect("the JSON summary");
    let copied = server.ok(
        "cat /root/during-copy.done /root/during-copy.sha256",
        Duration::from_secs(30),
    );
    println!("summary: {summary}\nwriter: {copied}");
    assert!(
        summary["method"].as_str().unwrap().contains("frozen"),
        "{summary}"
    );
    let (data, wire) = (
        summary["data_bytes"].as_u64().unwrap(),
        summary["wire_bytes"].as_u64().unwrap(),
    );
    // Only used data crosses (the fixture is a 2 GiB disk with about 700 MiB used), and
    // compressed.
    assert!(
        data < 1200 << 20,
        "{data} bytes read: free blocks were sent"
    );
    assert!(wire < data, "{wire} bytes on the wire for {data} of data");
    let final_ms = summary["final_pass_ms"].as_u64().unwrap();
    println!(
        "data {} MiB, wire {} MiB, first pass {} ms, final pass {} ms ({} KiB)",
        data >> 20,
        wire >> 20,
        summary["first_pass_ms"],
        final_ms,
        summary["final_pass_bytes"].as_u64().unwrap() >> 10
    );

    // The conversion, then the server's last moments are over: it is switched off.
    let task = summary["task"].as_str().unwrap().to_string();
    let done = json_within(&a, &["task", "show", &task, "--wait"], CONVERT);
    assert_eq!(done["state"], "succeeded", "{done}");
    drop(server);
    let vm = a.vm("oldweb");
    assert_eq!(vm["description"], "old web server");
    assert_eq!(vm["disks"][0]["bus"], "virtio");
    assert_eq!(vm["nics"][0]["model"], "virtio");

    // The file written during the copy is there, whole.
    let volume = vm["disks"][0]["path"].as_str().unwrap().to_string();
    let shown = guestfish(
        std::path::Path::new(&volume),
        &[
            "cat",
            "/root/during-copy.sha256",
            ":",
            "checksum",
            "sha256",
            "/root/during-copy.bin",
            ":",
            "echo",
            "EXCLUDED:",
            ":",
            "ls",
            "/root/excluded",
        ],
    );
    let (files, excluded) = shown.split_once("EXCLUDED:").unwrap();
    let mut lines = files.lines().filter(|l| !l.trim().is_empty());
    let recorded = lines
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let actual = lines.next().unwrap().trim().to_string();
    assert_eq!(
        recorded, actual,
        "the file written during the copy arrived damaged"
    );
    assert_eq!(
        excluded.trim(),
        "",
        "--exclude /root/excluded: the VM has {excluded:?}"
    );
    let changes = done["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("emptied /root/excluded")),
        "{changes:?}"
    );

    // It boots on virtio to the ready line with a DHCP address.
    let t = Instant::now();
    a.ok(&["vm", "start", "oldweb"]);
    a.wait_console("oldweb", "CORRAL-SOURCE-READY", 1, SERVER_BOOT);
    println!("boot to ready: {:.0} s", t.elapsed().as_secs_f64());
    let ready = ready_fields(&a.console_log("oldweb"));
    assert_eq!(ready["root"], "/dev/vda1", "{ready:?}");
    assert!(
        ready["nic"].starts_with("en") && ready["nic"] != "ens5",
        "{ready:?}"
    );
    assert!(
        ready["ip"].starts_with("10.0.2."),
        "no DHCP address: {ready:?}"
    );
    a.ok(&["vm", "poweroff", "oldweb"]);

    let before = before.join().unwrap();
    assert_eq!(sha256(&src), before, "the fixture changed");
}

/// Frames of `pass` for `ranges` (offset, byte value), numbered from `first`, with or
/// without the end frame.
fn frames(ranges: &[(u64, u8)], first: u64, end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = first;
    for &(offset, byte) in ranges {
        out.extend(corral_p2v::wire::encode_data(
            seq,
            offset,
            &vec![byte; 65536],
            Some(1),
        ));
        seq += 1;
    }
    if end {
        out.extend(corral_p2v::wire::encode_end(seq));
    }
    out
}

fn body(bytes: Vec<u8>) -> corral_client::ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let _ = tx.send(Ok(bytes::Bytes::from(bytes))).await;
    });
    corral_client::ChannelBody(rx)
}

/// The session protocol without a server: resume after a cut, refusals of bad frames, bad
/// requests, a wrong token, too little space, abandoning; and a finished transfer of a disk
/// that holds no Linux refused by the conversion. Each refusal leaves nothing behind.
#[test]
fn p2v_sessions_resume_refuse_bad_data_and_leave_nothing_when_abandoned() {
    use corral_model::transfer::{P2vFinishRequest, P2vStartRequest};
    let (a, port, fingerprint) = listening_agent();
    let token = std::fs::read_to_string(a.state_dir().join("token")).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let c = corral_client::Client::https(&url, Some(token.trim()), Some(&fingerprint)).unwrap();
    let staging = a.state_dir().join("staging");
    let staged = || std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let start = |name: &str, data: u64| P2vStartRequest {
            name: name.into(),
            disk_bytes: 8 << 20,
            data_bytes: data,
            source_host: Some("oldweb".into()),
            ..Default::default()
        };
        // A wrong token is refused before anything exists.
        let wrong =
            corral_client::Client::https(&url, Some("not-the-token"), Some(&fingerprint)).unwrap();
        let e = wrong
            .p2v_start(&start("x", 1 << 20))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("token"), "{e}");
        // Bad requests, and too little space.
        let mut bad = start("bad name!", 1 << 20);
        let e = c.p2v_start(&bad).await.unwrap_err().to_string();
        assert!(e.contains("name"), "{e}");
        bad = start("odd", 1 << 20);
        bad.disk_bytes = 1000;
        let e = c.p2v_start(&bad).await.unwrap_err().to_string();
        assert!(e.contains("whole number of sectors"), "{e}");
        let mut huge = start("huge", 1 << 50);
        huge.disk_bytes = 60 << 40;
        let e = c.p2v_start(&huge).await.unwrap_err();
        println!("too little space: {e}");
        assert!(e.to_string().contains("not enough space"), "{e}");
        assert_eq!(staged(), 0);
        assert!(a.json(&["vm", "list"]).as_array().unwrap().is_empty());

        // A pass cut off after three frames resumes with the fourth; re-sent frames are
        // skipped.
        let s = c.p2v_start(&start("oldweb", 1 << 20)).await.unwrap();
        assert_eq!((s.pass, s.applied), (1, 0));
        assert_eq!(staged(), 1);
        let e = c
            .p2v_start(&start("oldweb", 1 << 20))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("already"), "the name is reserved: {e}");
        let cut = c
            .p2v_data(
                &s.id,
                1,
                body(frames(&[(0, 1), (65536, 2), (1 << 20, 3)], 1, false)),
            )
            .await
            .unwrap();
        assert_eq!((cut.applied, cut.pass_complete), (3, false));
        let shown = c.p2v_show(&s.id).await.unwrap();
        assert_eq!(shown.applied, 3);
        let e = c
            .p2v_finish(
                &s.id,
                &P2vFinishRequest {
                    method: "test".into(),
                    final_pass_ms: None,
                },
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not complete"), "{e}");
        let resumed = c
            .p2v_data(
                &s.id,
                1,
                body(frames(&[(1 << 20, 3), (2 << 20, 4)], 3, true)),
            )
            .await
            .unwrap();
        assert_eq!((resumed.applied, resumed.pass_complete), (5, true));
        assert_eq!(
            resumed.bytes_written,
            4 * 65536,
            "frame 3 was not written twice"
        );

        // Damaged and out-of-order frames are refused with the reason; the session stays.
        let mut damaged = frames(&[(0, 7)], 1, true);
        let n = damaged.len();
        damaged[n - 50] ^= 0xff;
        let e = c
            .p2v_data(&s.id, 2, body(damaged))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame 1"), "{e}");
        let e = c
            .p2v_data(&s.id, 2, body(frames(&[(0, 7)], 2, true)))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("frames are missing"), "{e}");
        let e = c
            .p2v_data(&s.id, 2, body(frames(&[(9 << 20, 7)], 1, true)))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the"), "{e}");
        let fin = c
            .p2v_data(&s.id, 2, body(frames(&[(0, 8)], 1, true)))
            .await
            .unwrap();
        assert_eq!((fin.pass, fin.pass_complete), (2, true));

        // Finished: this disk holds no Linux, so the conversion refuses it and nothing stays.
        let task = c
            .p2v_finish(
                &s.id,
                &P2vFinishRequest {
                    method: "test".into(),
                    final_pass_ms: Some(5),
                },
            )
            .await
            .unwrap();
        assert_eq!(task, s.task);
        let e = c.p2v_show(&s.id).await.unwrap_err().to_string();
        assert!(e.contains("no P2V session"), "{e}");
        let t = json_within(&a, &["task", "show", &task, "--wait"], CONVERT);
        assert_eq!(t["state"], "failed", "{t}");
        println!("a disk without Linux: {}", t["error"]["message"]);
        assert_eq!(t["error"]["details"]["refusal"], "no_linux", "{t}");
        assert_eq!(staged(), 0);
        assert!(a.json(&["vm", "list"]).as_array().unwrap().is_empty());

        // Abandoned: everything goes, the name is free again.
        let s = c.p2v_start(&start("again", 1 << 20)).await.unwrap();
        c.p2v_data(&s.id, 1, body(frames(&[(0, 1)], 1, false)))
            .await
            .unwrap();
        c.p2v_cancel(&s.id).await.unwrap();
        assert_eq!(staged(), 0);
        let t = a.json(&["task", "show", &s.task]);
        assert_eq!(t["state"], "cancelled", "{t}");
        c.p2v_cancel(&c.p2v_start(&start("again", 1 << 20)).await.unwrap().id)
            .await
            .unwrap();
        assert_eq!(staged(), 0);
    });
}

/// Cold P2V: the media `corral p2v media` builds, with every answer on it, boots the
/// fixture's server (a copy of its disk, so its checksum proves it was not written) from a
/// CD, copies the idle disk in one pass and powers off; the agent's VM boots on virtio with
/// a DHCP address.
#[test]
fn the_p2v_media_copies_a_server_that_boots_from_it() {
    let src = fixture();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("server.img");
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    let before = sha256(&disk);
    let (a, port, fingerprint) = listening_agent();
    let iso = work.path().join("p2v.iso");
    let t = Instant::now();
    let made = a.ok(&[
        "p2v",
        "media",
        "-o",
        iso.to_str().unwrap(),
        "--to",
        &format!("https://10.0.2.2:{port}"),
        "--token-file",
        a.state_dir().join("token").to_str().unwrap(),
        "--fingerprint",
        &fingerprint,
        "--name",
        "coldweb",
        "--description",
        "copied cold",
        "--unattended",
    ]);
    println!("media ({:.1} s): {made}", t.elapsed().as_secs_f64());

    // The server boots the media and powers itself off once its disk is sent.
    let log = work.path().join("serial.log");
    let t = Instant::now();
    let mut qemu = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine", "pc", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
        ])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},if=none,id=d0,format=raw", disk.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=cd,format=raw,media=cdrom,readonly=on",
            iso.display()
        ))
        .args([
            "-device",
            "ahci,id=sata",
            "-device",
            "ide-hd,drive=d0,bus=sata.0",
        ])
        .args(["-device", "ide-cd,drive=cd,bus=sata.2", "-boot", "d"])
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "e1000,netdev=n0,addr=05",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TRANSFER;
    while qemu.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = qemu.kill();
            panic!(
                "the server booted from the media did not finish within {TRANSFER:?}:\n{}",
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 30)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    println!(
        "from the media to powered off: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let task = console
        .lines()
        .find_map(|l| l.split("CORRAL-P2V-SENT task=").nth(1))
        .unwrap_or_else(|| panic!("the media did not send the disk:\n{}", tail(&console, 30)))
        .trim()
        .to_string();
    assert!(
        console.contains("one pass, the disk not in use"),
        "{}",
        tail(&console, 10)
    );
    assert_eq!(sha256(&disk), before, "the server's disk was written");

    let done = json_within(&a, &["task", "show", &task, "--wait"], CONVERT);
    assert_eq!(done["state"], "succeeded", "{done}");
    let vm = a.vm("coldweb");
    assert_eq!(vm["description"], "copied cold");
    let t = Instant::now();
    a.ok(&["vm", "start", "coldweb"]);
    a.wait_console("coldweb", "CORRAL-SOURCE-READY", 1, SERVER_BOOT);
    println!("boot to ready: {:.0} s", t.elapsed().as_secs_f64());
    let ready = ready_fields(&a.console_log("coldweb"));
    assert_eq!(ready["root"], "/dev/vda1", "{ready:?}");
    assert!(
        ready["ip"].starts_with("10.0.2."),
        "no DHCP address: {ready:?}"
    );
    a.ok(&["vm", "poweroff", "coldweb"]);
}
