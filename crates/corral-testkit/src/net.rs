//! Ports for tests: a free one to listen on, and one nothing listens on.

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free TCP port on 127.0.0.1: {e}"),
    }
}

/// A port where connections are refused (it was bound and released).
pub fn closed_port() -> u16 {
    free_port()
}
