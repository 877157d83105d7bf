//! The interactive serial console: raw terminal, bytes both ways, Ctrl-] detaches.

use anyhow::Context;
use corral_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DETACH: u8 = 0x1d; // Ctrl-]

/// Puts the terminal in raw mode and restores it on drop.
struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    fn enter() -> Self {
        // SAFETY: termios calls on fd 0 with a properly sized struct; failures leave the
        // terminal untouched (stdin is not a terminal).
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) != 1 || libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal { saved: Some(saved) }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

pub async fn attach(c: &Client, name: &str) -> anyhow::Result<()> {
    let stream = c.console(name).await?;
    let interactive = unsafe { libc::isatty(0) } == 1;
    if interactive {
        eprintln!("Connected to the console of {name}. Press Ctrl-] to detach.\r");
    }
    let _raw = RawTerminal::enter();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let to_guest = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = stdin
                .read(&mut buf)
                .await
                .context("cannot read the terminal")?;
            if n == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            let chunk = &buf[..n];
            if interactive {
                if let Some(pos) = chunk.iter().position(|b| *b == DETACH) {
                    wr.write_all(&chunk[..pos]).await?;
                    return Ok(());
                }
            }
            wr.write_all(chunk).await.context("the console closed")?;
        }
    };
    let from_guest = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            let n = rd.read(&mut buf).await.context("the console closed")?;
            if n == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            stdout.write_all(&buf[..n]).await?;
            stdout.flush().await?;
        }
    };
    tokio::select! {
        r = to_guest => r?,
        r = from_guest => r?,
    }
    if interactive {
        eprintln!("\r\nDetached from {name}.\r");
    }
    Ok(())
}

/// `vm vnc NAME --listen ADDR`: a local TCP port whose every connection is the VM's VNC
/// server, reached through the agent (and the pool's forwarding to the member that runs the
/// VM, wherever a migration took it). Runs until interrupted.
pub async fn serve_vnc(
    c: &Client,
    name: &str,
    listen: std::net::SocketAddr,
    json: bool,
) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {listen}: the console would be open to anyone who reaches that address (VNC has no password here); use a loopback address such as 127.0.0.1:5901, and an SSH tunnel from elsewhere"
        );
    }
    let vm = c.show_vm(name).await?;
    if vm.vnc.is_none() {
        anyhow::bail!(
            "VM {name:?} is {}; the graphical console exists while it runs",
            vm.power_state
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if json {
        // One line: a script reads it and goes on while this keeps serving.
        println!(
            "{}",
            serde_json::json!({ "vm": name, "listen": addr.to_string() })
        );
    } else {
        println!("The graphical console of {name} is at {addr}; Ctrl-C to stop.");
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    loop {
        let (mut viewer, peer) = listener.accept().await?;
        let c = c.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            match c.vnc(&name).await {
                Ok(mut vnc) => {
                    let _ = viewer.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut viewer, &mut vnc).await;
                }
                Err(e) => eprintln!("cannot open the graphical console of {name} for {peer}: {e}"),
            }
        });
    }
}
