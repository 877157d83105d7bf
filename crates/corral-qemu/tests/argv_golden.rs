//! Golden tests for the QEMU command line (after libvirt's `qemuxmlconfdata`).
//!
//! Each `tests/data/argv/NAME.json` is a launch: a VM spec plus the host facts `build_argv`
//! takes. The expected result sits next to it: `NAME.argv` (one argument per line; the builder
//! refuses control characters, so no argument contains a newline) or `NAME.err` (the error
//! message). `CORRAL_BLESS=1 cargo test -p corral-qemu --test argv_golden` rewrites them;
//! review the diff.

use std::path::{Path, PathBuf};

use corral_model::host::Accelerator;
use corral_model::VmSpec;
use corral_qemu::argv::{build_argv, Launch, ListenFds, NicBackend, OvmfPaths, RuntimePaths};
use corral_qemu::confine::Identity;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case shows; documentation only.
    #[allow(dead_code)]
    about: String,
    vm_id: String,
    accel: Accelerator,
    daemonize: bool,
    #[serde(default)]
    incoming: bool,
    #[serde(default)]
    paths: Option<RuntimePaths>,
    nics: Vec<NicBackend>,
    #[serde(default)]
    ovmf: Option<OvmfPaths>,
    #[serde(default)]
    tpm_socket: Option<PathBuf>,
    #[serde(default)]
    sandbox: bool,
    #[serde(default)]
    identity: Option<Identity>,
    #[serde(default)]
    listen_fds: Option<ListenFds>,
    spec: VmSpec,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/argv")
}

fn render(case: &Case) -> (String, &'static str) {
    let paths = case
        .paths
        .clone()
        .unwrap_or_else(|| RuntimePaths::in_dir(&Path::new("/run/corral/vms").join(&case.vm_id)));
    let launch = Launch {
        spec: &case.spec,
        vm_id: &case.vm_id,
        accel: case.accel,
        paths,
        nics: case.nics.clone(),
        ovmf: case.ovmf.clone(),
        tpm_socket: case.tpm_socket.clone(),
        daemonize: case.daemonize,
        incoming: case.incoming,
        sandbox: case.sandbox,
        identity: case.identity,
        listen_fds: case.listen_fds,
    };
    match build_argv(&launch) {
        Ok(argv) => {
            for a in &argv {
                assert!(!a.contains('\n'), "argument with a newline: {a:?}");
            }
            (argv.join("\n") + "\n", "argv")
        }
        Err(e) => (format!("{e}\n"), "err"),
    }
}

#[test]
fn golden_argv() {
    let bless = std::env::var_os("CORRAL_BLESS").is_some_and(|v| v != "0");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("read tests/data/argv")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    inputs.sort();
    let (mut ok, mut errors, mut failures) = (0, 0, Vec::new());
    for input in &inputs {
        let text = std::fs::read_to_string(input).expect("read case");
        let case: Case =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let (actual, ext) = render(&case);
        if ext == "argv" {
            ok += 1;
        } else {
            errors += 1;
        }
        let expected_path = input.with_extension(ext);
        let other = input.with_extension(if ext == "argv" { "err" } else { "argv" });
        if bless {
            std::fs::write(&expected_path, &actual).expect("write golden file");
            let _ = std::fs::remove_file(&other);
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{}: output differs\n--- expected\n{expected}--- actual\n{actual}",
                expected_path.display()
            )),
            Err(_) => failures.push(format!(
                "{}: missing (is {} expected instead?); actual:\n{actual}",
                expected_path.display(),
                other.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches (CORRAL_BLESS=1 regenerates):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        ok >= 12,
        "only {ok} successful golden cases; want at least 12"
    );
    assert!(errors >= 5, "only {errors} error cases; want at least 5");
}
