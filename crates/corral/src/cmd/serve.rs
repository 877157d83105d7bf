//! `corral serve`: validate the configuration, start the agent, serve the API on a unix
//! socket (and, with `--listen`, over HTTPS with a token) until SIGINT/SIGTERM. Guests keep
//! running when the agent stops.

use anyhow::{bail, Context};
use corral_agent::config::{AccelMode, AgentConfig, CapacityOverrides, ConfigFile};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(long_about = "Run the host agent.\n\n\
    State (SQLite database, storage repository `default`, templates, runtime files) lives in \
    the state directory. The API listens on STATE_DIR/corral.sock unless --socket says \
    otherwise. Settings may also come from STATE_DIR/corral.toml (keys: iso_dir, \
    tools_iso, qemu_binary, accel, probe_kernel, probe_initrd, and a [capacity] table with \
    cores, ghz, memory_gib, net_mbps, disk_mbps, iops); flags win.\n\n\
    This host's capacity in the planner's model (`corral host info`, `corral vm \
    recommend-host`) is read from /proc and /sys; disk bandwidth and IOPS are typical figures \
    for the device type. State the real figures with --capacity-* or [capacity].\n\n\
    VMs keep running when the agent stops or crashes; on start it re-attaches to them, marks \
    those that died as halted, and starts the VMs marked --autostart.\n\n\
    With --listen ADDR:PORT the same API is also served over HTTPS on TCP. The first start \
    generates a self-signed certificate (STATE_DIR/tls/cert.pem) and a token (STATE_DIR/token); \
    remote clients pass the token and pin the certificate's SHA-256 fingerprint (`corral host \
    info` shows it): corral --connect https://HOST:PORT --token TOKEN --fingerprint FP ...\n\n\
    The same HTTPS address serves the web Administrator Console at https://HOST:PORT/ (log in \
    with the token).\n\n\
    Examples:\n  corral serve\n  corral serve --state-dir /srv/corral --accel tcg\n  \
    corral serve --listen 0.0.0.0:8443")]
pub struct ServeArgs {
    /// State directory [default: /var/lib/corral as root, else ~/.local/state/corral].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Unix socket to listen on [default: STATE_DIR/corral.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Accelerator: auto (probe KVM by booting a guest, else TCG), kvm or tcg.
    #[arg(long)]
    accel: Option<AccelMode>,
    /// Directory of the ISO library [default: STATE_DIR/isos].
    #[arg(long)]
    iso_dir: Option<PathBuf>,
    /// QEMU binary [default: qemu-system-x86_64].
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Kernel for the KVM probe (with --probe-initrd); its init must print
    /// CORRAL-GUEST-READY on ttyS0. Default: the cached test guest, else
    /// /boot/vmlinuz-$(uname -r), else only a boot sector (reported as a weak probe).
    #[arg(long, requires = "probe_initrd")]
    probe_kernel: Option<PathBuf>,
    /// Initrd for --probe-kernel.
    #[arg(long, requires = "probe_kernel")]
    probe_initrd: Option<PathBuf>,
    /// Guest-tools ISO that `vm tools insert` puts in the CD drive [default: the newest
    /// virtio-win*.iso in the ISO library].
    #[arg(long)]
    tools_iso: Option<PathBuf>,
    /// Do not start --autostart VMs.
    #[arg(long)]
    no_autostart: bool,
    /// Also serve the API over HTTPS on this TCP address (repeatable), e.g. 0.0.0.0:8443.
    /// Every request there needs the token in STATE_DIR/token. Default: unix socket only.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<std::net::SocketAddr>,
    /// Join (or found) the pool whose state lives in this etcd cluster: client URLs,
    /// comma-separated (http://10.0.0.5:2379,http://10.0.0.6:2379,...). Without it the
    /// agent is a one-host pool on its embedded SQLite store.
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    etcd: Vec<String>,
    /// This host's name in the pool [default: the system's host name]. Unique in the pool.
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// The pool's join token, to enroll in an existing pool (the founding host writes it to
    /// STATE_DIR/pool/join-token). Only needed for the first start of a joining host.
    #[arg(
        long,
        env = "CORRAL_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    join_token: Option<String>,
    /// Name of a pool this host founds [default: pool].
    #[arg(long, value_name = "NAME")]
    pool_name: Option<String>,
    /// Address other members reach this one at [default: the first --listen address]; needed
    /// when --listen is a wildcard such as 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR:PORT")]
    advertise: Option<std::net::SocketAddr>,
    /// Planner capacity: cores (logical CPUs) instead of those in /proc/cpuinfo.
    #[arg(long, value_name = "N")]
    capacity_cores: Option<u32>,
    /// Planner capacity: clock of each core in GHz instead of the cpufreq maximum.
    #[arg(long, value_name = "GHZ")]
    capacity_ghz: Option<f64>,
    /// Planner capacity: memory in GiB instead of MemTotal.
    #[arg(long, value_name = "GIB")]
    capacity_memory_gib: Option<f64>,
    /// Planner capacity: NIC bandwidth in Mbit/s (each direction) instead of the link speeds.
    #[arg(long, value_name = "MBPS")]
    capacity_net_mbps: Option<f64>,
    /// Planner capacity: disk bandwidth in MB/s instead of a typical figure per device.
    #[arg(long, value_name = "MBPS")]
    capacity_disk_mbps: Option<f64>,
    /// Planner capacity: disk operations per second instead of a typical figure per device.
    #[arg(long, value_name = "IOPS")]
    capacity_iops: Option<f64>,
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Ok(std::env::current_dir()
            .context("cannot read the current directory")?
            .join(p))
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text to grep.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let state_dir = absolute(
        args.state_dir
            .unwrap_or_else(corral_agent::config::default_state_dir),
    )?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let file = ConfigFile::load(&state_dir.join("corral.toml")).map_err(anyhow::Error::msg)?;
    let probe_kernel = match (
        args.probe_kernel.or(file.probe_kernel),
        args.probe_initrd.or(file.probe_initrd),
    ) {
        (Some(k), Some(i)) => Some((absolute(k)?, absolute(i)?)),
        (None, None) => None,
        _ => bail!("probe_kernel and probe_initrd go together"),
    };
    let capacity = CapacityOverrides {
        cores: args.capacity_cores,
        ghz: args.capacity_ghz,
        memory_gib: args.capacity_memory_gib,
        net_mbps: args.capacity_net_mbps,
        disk_mbps: args.capacity_disk_mbps,
        iops: args.capacity_iops,
    }
    .or(file.capacity);
    capacity.validate().map_err(anyhow::Error::msg)?;
    let remote = if args.listen.is_empty() {
        None
    } else {
        let mut names: Vec<String> = args.listen.iter().map(|a| a.ip().to_string()).collect();
        names.extend(hostname());
        let material = corral_api::remote::RemoteMaterial::load_or_create(&state_dir, &names)?;
        Some(material)
    };
    let host_name = match args.host_name {
        Some(n) => n,
        None => hostname().unwrap_or_else(|| "localhost".into()),
    };
    let advertise = match (args.advertise, args.listen.first()) {
        (Some(a), _) => Some(a),
        (None, Some(l)) if !l.ip().is_unspecified() => Some(*l),
        (None, Some(l)) if !args.etcd.is_empty() => bail!(
            "--listen {l} is a wildcard address: say where other pool members reach this host with --advertise ADDR:PORT"
        ),
        _ => None,
    };
    if !args.etcd.is_empty() && args.listen.is_empty() {
        bail!("a pool member needs --listen ADDR:PORT: other members forward requests about its VMs there");
    }
    for url in &args.etcd {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            bail!("--etcd {url:?} is not an etcd client URL such as http://10.0.0.5:2379");
        }
    }
    let pool = corral_agent::pool::PoolOptions {
        etcd: args.etcd.clone(),
        host_name,
        address: advertise.map(|a| format!("https://{a}")),
        join_token: args.join_token,
        pool_name: args.pool_name.unwrap_or_default(),
        timings: Default::default(),
        guard_exe: if args.etcd.is_empty() {
            None
        } else {
            Some(
                std::env::current_exe()
                    .context("cannot find this executable (for the fence guard)")?,
            )
        },
    };
    let config = AgentConfig {
        pool,
        remote: remote.as_ref().map(|m| corral_model::host::RemoteAccess {
            listen: args.listen.iter().map(|a| a.to_string()).collect(),
            cert_sha256: m.fingerprint.clone(),
            cert_path: m.cert_path.clone(),
            token_path: m.token_path.clone(),
        }),
        iso_dir: absolute(
            args.iso_dir
                .or(file.iso_dir)
                .unwrap_or_else(|| state_dir.join("isos")),
        )?,
        accel: args.accel.or(file.accel).unwrap_or_default(),
        qemu_binary: args
            .qemu
            .or(file.qemu_binary)
            .unwrap_or_else(|| "qemu-system-x86_64".into()),
        probe_kernel,
        autostart: !args.no_autostart,
        tools_iso: args
            .tools_iso
            .or(file.tools_iso)
            .map(absolute)
            .transpose()?,
        state_dir: state_dir.clone(),
        capacity,
    };
    let socket = absolute(args.socket.unwrap_or_else(|| state_dir.join("corral.sock")))?;
    // The agent is mostly idle; two workers keep its footprint small.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config, socket, args.listen, remote))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

async fn serve(
    config: AgentConfig,
    socket: PathBuf,
    listen: Vec<std::net::SocketAddr>,
    remote: Option<corral_api::remote::RemoteMaterial>,
) -> anyhow::Result<()> {
    if socket.exists() {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            bail!("another agent is already listening on {}", socket.display());
        }
        std::fs::remove_file(&socket)
            .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
    }
    // Bind the TCP listeners before the agent starts (and autostarts VMs), so a taken port
    // fails the start cleanly; they serve once the agent exists.
    let mut tcp = Vec::new();
    for addr in &listen {
        tcp.push(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        );
    }
    let _ = std::fs::create_dir_all(&config.iso_dir);
    let agent = corral_agent::Agent::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // One router for every listener: its gate tells the unix socket (an admin) from HTTPS
    // callers (a token, a session or a pool member's certificate) by how they came.
    let app = corral_api::router(agent.clone(), remote.as_ref());
    if let Some(m) = &remote {
        // A pool member serves its pool certificate and lets members in by theirs.
        let (tls, fingerprint) = match agent.pool().tls() {
            Some(t) => (
                corral_api::remote::pool_server_config(t)?,
                t.cert_sha256.clone(),
            ),
            None => (m.tls.clone(), m.fingerprint.clone()),
        };
        for (listener, addr) in tcp.into_iter().zip(&listen) {
            tracing::info!(%addr, %fingerprint, "serving HTTPS");
            tokio::spawn(corral_api::remote::serve_tls(
                listener,
                app.clone(),
                tls.clone(),
            ));
        }
    }
    // The unix socket comes last: its appearance tells scripts and tests the agent is ready.
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let access = restrict_socket(&socket)
        .with_context(|| format!("cannot restrict access to {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), %access, "corral agent ready");
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let shutdown = async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
        tracing::info!("stopping the agent; VMs keep running");
        notify.notify_one();
    };
    // Each connection's peer credentials (its uid) go into the audit log.
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<corral_api::auth::Peer>(),
    )
    .with_graceful_shutdown(shutdown);
    // Event streams and consoles never end on their own: give requests in flight a moment,
    // then stop regardless.
    tokio::select! {
        r = server => r.context("API server failed")?,
        _ = async {
            stopping.notified().await;
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        } => {}
    }
    let _ = std::fs::remove_file(&socket);
    // Task updates are written behind the scenes; an orderly stop writes them all.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), agent.flush()).await;
    Ok(())
}

/// The group whose members may use the unix socket (as admins) besides root.
const SOCKET_GROUP: &str = "corral";

/// Whoever reaches the unix socket is an admin: only root and, when the group exists, the
/// members of `corral` (mode 0660, group `corral`); otherwise only the agent's user (0600).
/// Answers which, for the start-up line.
fn restrict_socket(socket: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let gid = group_id(SOCKET_GROUP);
    let mode = match gid {
        Some(gid) => {
            std::os::unix::fs::chown(socket, None, Some(gid))
                .with_context(|| format!("cannot give the socket to group {SOCKET_GROUP}"))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))?;
    Ok(match gid {
        Some(_) => format!("mode 0660, group {SOCKET_GROUP}"),
        None => format!("mode 0600 (no group {SOCKET_GROUP})"),
    })
}

/// The id of group `name`, if it exists.
fn group_id(name: &str) -> Option<libc::gid_t> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: an all-zero `group` is a valid value (null pointers, zero ids).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized memory owned here; getgrnam_r
    // (unlike getgrnam) writes only into them, so concurrent callers cannot interfere.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}
