//! The service contract with systemd (Type=notify): READY=1 once serving, STOPPING=1 on SIGTERM,
//! then a clean exit. Uses a real notify socket, as systemd provides one.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn ready_then_stopping_then_clean_exit_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();

    let camera = format!(
        "[[cameras]]\nid = \"loop\"\nuri = \"{}\"\nloop_file = true\n",
        common::sample_clip().display()
    );
    let config = dir.path().join("node.toml");
    std::fs::write(&config, common::config_toml(&camera, "")).unwrap();
    let mut node = common::KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_retina-edge"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 60 s");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    let killed = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));

    for _ in 0..300 {
        if let Some(status) = node.try_wait().unwrap() {
            assert!(status.success(), "graceful stop exits 0, got {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("node did not stop within 30 s of SIGTERM");
}
