//! A real `nats-server` with JetStream (Debian's package, installed by `make deps`), on loopback.

use std::path::Path;
use std::time::Duration;

/// A `nats-server` with JetStream on a free loopback port, its store in `store`.
pub struct Nats {
    pub process: super::KillOnDrop,
    pub port: u16,
}

impl Nats {
    pub async fn start(store: &Path) -> Nats {
        let port = super::free_port();
        let process = start_nats_at(store, port);
        wait_for_port(port, "nats-server").await;
        Nats { process, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

pub async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} listens on {port} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn start_nats_at(store: &Path, port: u16) -> super::KillOnDrop {
    super::KillOnDrop::new(
        std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts (Debian package nats-server, installed by make deps)"),
    )
}
