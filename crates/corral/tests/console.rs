//! The web Administrator Console end to end: a real `corral serve --listen` with the test
//! guest, real headless Chromium (Debian's `/usr/bin/chromium`) driven by `playwright-core`
//! running `web/tests/e2e.mjs`: log in (a wrong token refused; a reload keeps the session), a
//! CSRF-less request refused, create a VM through the wizard (its validation error shown at
//! the field first), console websockets without a valid ticket refused, start, the guest's
//! marker in the text console and an answer to typed input, a non-blank graphical console,
//! reboot (the guest boots again, the console stays), force off + start with the graphical
//! console reconnecting by itself within 3 s, pause/resume, an Overview edit, shut down,
//! export as a browser download and its upload as an import, a long export's progress bar
//! moving and then cancelled from the History tab, a copy, CD media inserted from the ISO
//! library and ejected, the guest-tools ISO, the copy made a template, delete, a linked clone, the install
//! wizard's detection of an install tree (a dry run: a missing disk refused first), logout (an
//! open event stream ends with the session). This test then imports the browser's download
//! back with the CLI.
//!
//! Needs `web/node_modules` (`scripts/build-web.sh` runs `npm ci`) and `chromium`
//! (`scripts/install-deps.sh --test`). On failure the script leaves `failure.png` and a
//! Playwright `trace.zip` in `target/tmp/console-e2e/`. Screenshots of the main screens go
//! there too, or to `$CORRAL_CONSOLE_SHOTS` (`CORRAL_CONSOLE_SHOTS=docs/console` refreshes
//! the ones in docs/console.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

#[path = "common/browser.rs"]
mod browser;
mod common;
use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A raw image of incompressible bytes: its export at zstd level 19 runs long enough to watch.
fn random_image(path: &Path, bytes: u64) {
    let mut src = std::fs::File::open("/dev/urandom").unwrap().take(bytes);
    let mut dst = std::fs::File::create(path).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
}

#[test]
fn administrator_console_in_a_real_browser() {
    let g = guest();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = TestAgent::start_with(&["--listen", &listen]);
    let image = agent.state_dir().join("big.raw");
    random_image(&image, 256 << 20);
    agent.ok(&[
        "vm",
        "create",
        "--name",
        "big",
        "--memory",
        "128M",
        "--disk",
        &format!(",from={}", image.display()),
    ]);
    // The ISO library: the test installer's ISO as CD media, and a copy under the name the
    // Tools ISO button looks for.
    let isos = agent.state_dir().join("isos");
    std::fs::create_dir_all(&isos).unwrap();
    let installer_iso = g.dir.join("installer/installer.iso");
    std::fs::copy(&installer_iso, isos.join("installer.iso")).unwrap();
    std::fs::copy(&installer_iso, isos.join("virtio-win-test.iso")).unwrap();
    let token = std::fs::read_to_string(agent.state_dir().join("token")).unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-e2e");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let shots = std::env::var("CORRAL_CONSOLE_SHOTS")
        .map(|s| {
            let p = PathBuf::from(s);
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|_| out.join("shots"));

    let (url, tree) = (
        format!("https://{listen}"),
        g.dir.join("installer/tree").display().to_string(),
    );
    // The whole browser run takes about a minute here; a hung one is killed.
    let figures = browser::run_script(
        "e2e.mjs",
        &[
            ("CORRAL_URL", url.as_str()),
            ("CORRAL_TOKEN", token.trim()),
            ("GUEST_KERNEL", &g.kernel.display().to_string()),
            ("GUEST_INITRD", &g.initrd.display().to_string()),
            ("BIG_VM", "big"),
            ("INSTALL_TREE", tree.as_str()),
            ("SHOTS_DIR", &shots.display().to_string()),
        ],
        &out,
        Duration::from_secs(420),
        |_| {},
        || format!("agent log tail:\n{}", tail(&agent.log(), 40)),
    );
    assert!(figures["reconnect_after_restart_ms"].as_u64().unwrap() <= 3000);

    // The browser's export download imports back with the CLI and boots the same way.
    let download = out.join("web1.corral");
    agent.ok(&[
        "vm",
        "import",
        download.to_str().unwrap(),
        "--name",
        "web1-back",
    ]);
    let vm = agent.vm("web1-back");
    assert_eq!(vm["description"], "made in the browser", "{vm}");
    assert!(vm["kernel_boot"].is_object(), "{vm}");
    agent.ok(&["vm", "start", "web1-back"]);
    agent.wait_console("web1-back", MARKER, 1, Duration::from_secs(120));
    agent.ok(&["vm", "poweroff", "web1-back"]);
    // What the browser deleted is gone; the copy it made exists.
    assert!(!agent.ok(&["vm", "list"]).contains("web1 "));
    assert_eq!(agent.vm("big-copy")["is_template"], true);
    let cd = agent.vm("web1-up")["cdroms"][0]["media"].to_string();
    assert!(cd.contains("virtio-win-test.iso"), "{cd}");
    assert_eq!(agent.vm("web1-up")["description"], "made in the browser");
    agent.vm("big-clone");
}
