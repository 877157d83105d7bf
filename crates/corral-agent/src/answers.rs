//! Answer files served over HTTP to an installer (`vm install --unattended`): cloud-init
//! autoinstall (Ubuntu) reads its NoCloud `user-data`/`meta-data` from a URL, and templates
//! whose `installer_args` use `{unattended_url}` point their installer at one.
//!
//! Each install gets its own listener on the host's loopback (`127.0.0.1`, a free port), which
//! a guest on the default user-mode network reaches as `10.0.2.2`. Files live under a random
//! token (`/<token>/<file>`), so nothing else on the host can guess them; anything else is 404.
//! The files and the port are kept in the install's scratch directory (`answers/`), so a retry
//! (`vm start` after a failed install) serves them again at the same URL. The listener stops
//! when the install task ends (dropping [`AnswerServer`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Request heads are small; a client sending more is not an installer.
const MAX_HEAD: usize = 8192;
const DIR: &str = "answers";
const PORT_FILE: &str = "port";
const TOKEN_FILE: &str = "token";

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("cannot keep the answer files in {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A running answer-file listener; stops when dropped.
pub struct AnswerServer {
    pub port: u16,
    pub token: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AnswerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AnswerServer {
    /// The directory URL as a guest on the default network sees it (ends in `/`).
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}/{}/", self.port, self.token)
    }

    /// Keep `files` in `scratch/answers/` and serve them on a free port.
    pub async fn start(scratch: &Path, files: &[(&str, &[u8])]) -> Result<Self, AnswerError> {
        let dir = scratch.join(DIR);
        let write = |p: &Path, data: &[u8]| {
            std::fs::write(p, data).map_err(|source| AnswerError::Write {
                path: p.display().to_string(),
                source,
            })
        };
        std::fs::create_dir_all(dir.join("files")).map_err(|source| AnswerError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        for (name, data) in files {
            write(&dir.join("files").join(name), data)?;
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let server = Self::serve(&dir, 0, token).await?;
        write(&dir.join(PORT_FILE), server.port.to_string().as_bytes())?;
        write(&dir.join(TOKEN_FILE), server.token.as_bytes())?;
        Ok(server)
    }

    /// Serve the files an earlier [`AnswerServer::start`] kept in `scratch`, at the same URL.
    /// `Ok(None)` when the install has no answer files.
    pub async fn resume(scratch: &Path) -> Result<Option<Self>, AnswerError> {
        let dir = scratch.join(DIR);
        let port = std::fs::read_to_string(dir.join(PORT_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok());
        let token = std::fs::read_to_string(dir.join(TOKEN_FILE)).ok();
        match (port, token) {
            (Some(port), Some(token)) => Self::serve(&dir, port, token.trim().to_string())
                .await
                .map(Some),
            _ => Ok(None),
        }
    }

    async fn serve(dir: &Path, port: u16, token: String) -> Result<Self, AnswerError> {
        let mut files = HashMap::new();
        if let Ok(rd) = std::fs::read_dir(dir.join("files")) {
            for e in rd.flatten() {
                if let Ok(data) = std::fs::read(e.path()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    files.insert(format!("/{token}/{name}"), data);
                }
            }
        }
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| AnswerError::Listen { port, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| AnswerError::Listen { port, source })?
            .port();
        let files = Arc::new(files);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn, files.clone()));
            }
        });
        Ok(AnswerServer { port, token, task })
    }
}

/// One request, one answer, then close (HTTP/1.0 style, which every installer's client speaks).
async fn answer(mut conn: tokio::net::TcpStream, files: Arc<HashMap<String, Vec<u8>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let found = files
        .get(path)
        .filter(|_| method == "GET" || method == "HEAD");
    let (status, body): (&str, &[u8]) = match found {
        Some(data) => ("200 OK", data),
        None => ("404 Not Found", b"not found\n"),
    };
    let reply = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    if method != "HEAD" {
        let _ = conn.write_all(body).await;
    }
    let _ = conn.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn get(port: u16, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_only_its_files_under_the_token_and_again_after_a_restart() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = AnswerServer::start(d.path(), &[("user-data", b"#cloud-config\n")])
            .await
            .expect("start");
        let ok = get(s.port, &format!("/{}/user-data", s.token)).await;
        assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
        assert!(ok.ends_with("#cloud-config\n"), "{ok}");
        assert!(get(s.port, "/user-data").await.starts_with("HTTP/1.0 404"));
        assert!(s.guest_url().starts_with("http://10.0.2.2:"));
        let (port, token) = (s.port, s.token.clone());
        drop(s);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let again = AnswerServer::resume(d.path())
            .await
            .expect("resume")
            .expect("answer files kept");
        assert_eq!((again.port, again.token.as_str()), (port, token.as_str()));
        let ok = get(port, &format!("/{token}/user-data")).await;
        assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
        let none = tempfile::tempdir().expect("tempdir");
        assert!(AnswerServer::resume(none.path())
            .await
            .expect("resume")
            .is_none());
    }
}
