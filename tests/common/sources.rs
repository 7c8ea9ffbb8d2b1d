//! Bad sources for the tests that make sure one camera cannot take the node down: the corpus of
//! bad media files (scripts/make-bad-media.sh), a tiny HTTP server that answers as cameras and
//! misconfigured web servers do, and an "RTSP server" that answers with garbage.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The bad-media corpus, built once per test process (tests run in parallel threads) and once
/// per machine (the script skips the work when its stamp is current).
pub fn bad_media() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = super::repo().join(".deps/bad-media");
            super::sample_clip();
            let status = Command::new("bash")
                .arg(super::repo().join("scripts/make-bad-media.sh"))
                .arg(&dir)
                .status()
                .expect("make-bad-media.sh runs");
            assert!(status.success(), "scripts/make-bad-media.sh failed");
            dir
        })
        .clone()
}

/// One answer of the HTTP server.
pub struct Route {
    pub path: &'static str,
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Serves fixed answers on a loopback port, one thread per connection, until the process ends.
pub struct HttpServer {
    port: u16,
}

impl HttpServer {
    pub fn start(routes: Vec<Route>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("HTTP test server binds");
        let port = listener.local_addr().expect("its address").port();
        let routes = std::sync::Arc::new(routes);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let routes = routes.clone();
                std::thread::spawn(move || answer(stream, &routes));
            }
        });
        HttpServer { port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn answer(mut stream: TcpStream, routes: &[Route]) {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match routes.iter().find(|r| r.path == path) {
        Some(route) => (route.status, route.content_type, route.body.as_slice()),
        None => (404, "text/html", b"<html><body>Not Found</body></html>".as_slice()),
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    };
    let challenge = if status == 401 {
        "WWW-Authenticate: Basic realm=\"camera\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{challenge}\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
}

/// A TCP server that answers every request with bytes that are not RTSP (a device on the
/// camera's port that speaks something else).
pub fn garbage_rtsp_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("garbage server binds");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request);
                let garbage: Vec<u8> = (0..4000u32).map(|i| (i * 37 + 11) as u8).collect();
                let _ = stream.write_all(&garbage);
            });
        }
    });
    port
}

/// A TCP server that accepts connections and never answers: a camera that hangs while the
/// node is starting it.
pub fn silent_server() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("silent server binds");
    let port = listener.local_addr().expect("its address").port();
    (listener, port)
}
