//! Compiles the bin crate's `corral plan` and `corral measure` glue (the very files in
//! `crates/corral/src/cmd/`) and runs it the way `main.rs` will: through clap subcommands.

#[path = "../../corral/src/cmd/measure.rs"]
mod measure;
#[path = "../../corral/src/cmd/plan.rs"]
mod plan;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "corral")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Plan(plan::PlanArgs),
    Measure(measure::MeasureArgs),
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("corral").chain(args.iter().copied()))?;
    match cli.command {
        Command::Plan(a) => plan::run(a),
        Command::Measure(a) => measure::run(a),
    }
}

#[test]
fn long_help_teaches_with_examples() {
    let mut cmd = Cli::command();
    let plan_help = cmd
        .find_subcommand_mut("plan")
        .expect("plan")
        .render_long_help()
        .to_string();
    assert!(
        plan_help.contains("corral plan --hosts hosts.csv --workloads workloads.csv"),
        "{plan_help}"
    );
    assert!(plan_help.contains("--max-utilisation") && plan_help.contains("[default: 85%]"));
    let measure_help = cmd
        .find_subcommand_mut("measure")
        .expect("measure")
        .render_long_help()
        .to_string();
    assert!(
        measure_help.contains("corral measure -o srv-db01.json"),
        "{measure_help}"
    );
}

#[test]
fn plan_reads_csv_and_writes_json_and_html() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = dir.path().join("hosts.csv");
    let workloads = dir.path().join("workloads.csv");
    std::fs::write(&hosts, "name,cores,ghz,memory_gib,net_mbps,disk_mbps\nhv1,16,2.5,64,10000,1000\nhv2,16,2.5,64,10000,1000\n").expect("write");
    std::fs::write(&workloads, "name,cpu_ghz,memory_gib,net_mbps,disk_mbps,group_apart\ndb1,1.6,12,100,50,sql\ndb2,1.6,12,100,50,sql\n").expect("write");
    let html = dir.path().join("plan.html");
    run(&[
        "plan",
        "--hosts",
        hosts.to_str().expect("utf-8"),
        "--workloads",
        workloads.to_str().expect("utf-8"),
        "--html",
        html.to_str().expect("utf-8"),
    ])
    .expect("plan runs");
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.contains("<svg") && page.contains("db1") && page.contains("hv2"));
    run(&[
        "plan",
        "--hosts",
        hosts.to_str().expect("utf-8"),
        "--workloads",
        workloads.to_str().expect("utf-8"),
        "--json",
        "--max-utilisation",
        "100%",
        "--reserve-memory",
        "0",
    ])
    .expect("plan --json runs");
}

#[test]
fn plan_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = dir.path().join("hosts.csv");
    std::fs::write(
        &hosts,
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps\nhv1,16,2.5,sixty,10000,1000\n",
    )
    .expect("write");
    let e = run(&[
        "plan",
        "--hosts",
        hosts.to_str().expect("utf-8"),
        "--workloads",
        hosts.to_str().expect("utf-8"),
    ])
    .unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        format!(
            "{}:2: memory_gib \"sixty\" is not a number",
            hosts.display()
        )
    );
    let e = Cli::try_parse_from([
        "corral",
        "plan",
        "--hosts",
        "h",
        "--workloads",
        "w",
        "--max-utilisation",
        "0.85",
    ])
    .err()
    .expect("rejected");
    assert!(e.to_string().contains("write it as a percentage"), "{e}");
    let e = Cli::try_parse_from([
        "corral",
        "plan",
        "--hosts",
        "h",
        "--workloads",
        "w",
        "--reserve-memory",
        "2",
    ])
    .err()
    .expect("rejected");
    assert!(e.to_string().contains("needs a unit"), "{e}");
}

#[test]
fn measure_writes_a_profile_that_plan_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("profiles").join("srv1.json");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    run(&[
        "measure",
        "--interval",
        "200ms",
        "--duration",
        "1s",
        "--quiet",
        "-o",
        out.to_str().expect("utf-8"),
    ])
    .expect("measure runs");
    let text = std::fs::read_to_string(&out).expect("profile written");
    let profile: corral_measure::Profile = serde_json::from_str(&text).expect("profile json");
    assert!(
        profile.samples.len() >= 4,
        "{} samples",
        profile.samples.len()
    );
    // Read and write IOPS apart, and each disk and NIC on its own.
    for (name, _) in profile.samples[0].disks.iter() {
        for m in ["read_mbps", "write_mbps", "read_iops", "write_iops"] {
            assert!(
                profile.summary.contains_key(&format!("disk.{name}.{m}")),
                "disk.{name}.{m} in {:?}",
                profile.summary.keys()
            );
        }
        assert!(profile.summary.contains_key("read_iops"));
        assert!(profile.summary.contains_key("write_iops"));
    }
    for (name, _) in profile.samples[0].nics.iter() {
        assert!(profile.summary.contains_key(&format!("nic.{name}.rx_mbps")));
        assert!(profile.summary.contains_key(&format!("nic.{name}.tx_mbps")));
    }
    assert!(profile.physical_cores >= 1 && profile.physical_cores <= profile.cores);
    let hosts = dir.path().join("hosts.csv");
    std::fs::write(
        &hosts,
        "name,cores,ghz,memory_gib,net_mbps,disk_mbps\nhv1,64,3.0,512,100000,10000\n",
    )
    .expect("write");
    run(&[
        "plan",
        "--hosts",
        hosts.to_str().expect("utf-8"),
        "--workloads",
        out.parent().expect("dir").to_str().expect("utf-8"),
    ])
    .expect("plan reads profiles");
}

#[test]
fn measure_fails_at_once_on_an_unwritable_output_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("no-such-dir").join("srv1.json");
    let started = std::time::Instant::now();
    let err = run(&[
        "measure",
        "--duration",
        "1h",
        "--quiet",
        "-o",
        out.to_str().expect("utf-8"),
    ])
    .expect_err("an output directory that does not exist");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("cannot write the profile to") && msg.contains("no-such-dir"),
        "{msg}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "failed before measuring"
    );
}

#[test]
fn measure_stops_when_a_save_fails_midway_and_says_what_it_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sub = dir.path().join("profiles");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let out = sub.join("srv1.json");
    let arg = out.to_str().expect("utf-8").to_string();
    let started = std::time::Instant::now();
    let runner = std::thread::spawn(move || {
        run(&[
            "measure",
            "--interval",
            "100ms",
            "--duration",
            "1h",
            "--quiet",
            "-o",
            &arg,
        ])
    });
    // The first save (10 samples, 1 s) succeeds; then the directory turns into a file, so
    // the next save cannot be written (as root, permissions would not stop it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let n = std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| serde_json::from_str::<corral_measure::Profile>(&t).ok())
            .map_or(0, |p| p.samples.len());
        if n >= 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no save with samples");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&sub).expect("remove dir");
    std::fs::write(&sub, "not a directory").expect("file in its place");
    let err = runner
        .join()
        .expect("no panic")
        .expect_err("a save that fails midway stops the run");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "stopped at the failed save, not after an hour"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("measuring stopped after") && msg.contains("the last good save to"),
        "{msg}"
    );
    // The samples are kept in the temporary directory, and the message names the file.
    let rescue = msg
        .split("saved in ")
        .nth(1)
        .expect("names where the samples are kept")
        .trim();
    let text = std::fs::read_to_string(rescue).expect("rescued profile");
    let profile: corral_measure::Profile = serde_json::from_str(&text).expect("profile json");
    assert!(profile.samples.len() >= 20, "{}", profile.samples.len());
    let _ = std::fs::remove_file(rescue);
}
