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
