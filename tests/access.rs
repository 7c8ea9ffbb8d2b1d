//! A node on a street network: TLS with client certificates, tokens with scopes, safe defaults.
//! Real TLS clients (tonic, grpcurl, a rustls HTTPS client), real certificates from a CA made
//! per test, a real node; traffic on loopback only.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use retina_edge::access::{self, Scope};
use retina_edge::pb::{self, admin_client::AdminClient, retina_client::RetinaClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA and what it signed, as PEM.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

struct Leaf {
    cert: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A node certificate valid until 2031-05-06T00:00:00Z.
    fn server(&self) -> Leaf {
        self.server_until((2031, 5, 6))
    }

    fn server_until(&self, not_after: (i32, u8, u8)) -> Leaf {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        self.leaf(params, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Leaf {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        self.leaf(params, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, mut params: rcgen::CertificateParams, usage: rcgen::ExtendedKeyUsagePurpose) -> Leaf {
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes `text` to `path` with `mode`, replacing the file by a rename as certificate tools do.
fn put(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_leaf(&self, name: &str, leaf: &Leaf) {
        put(&self.path(&format!("{name}.pem")), &leaf.cert, 0o644);
        put(&self.path(&format!("{name}.key")), &leaf.key, 0o600);
    }
}

fn secured_config(files: &Files, extra_node: &str) -> retina_edge::config::Config {
    let dir = files.dir.path().display();
    // One pass of the sample clip: descriptors for the command-line subscriber to read.
    let clip = common::sample_clip();
    let clip = clip.display();
    let text = common::config_toml(
        &format!(
            r#"
[[cameras]]
id = "clip"
uri = "{clip}"
analysis_fps = 2.0
realtime = false

[tls]
cert = "{dir}/node.pem"
key = "{dir}/node.key"
client_ca = "{dir}/clients-ca.pem"

[auth]
tokens_file = "{dir}/tokens.toml"
"#
        ),
        &format!("metrics_listen = \"127.0.0.1:0\"\ncamera_state_file = \"{dir}/cameras.toml\"\n{extra_node}"),
    );
    common::parse_config(&text)
}

async fn tls_channel(addr: std::net::SocketAddr, server_ca: &str, client: Option<&Leaf>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.cert, &client.key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(channel)
}

type Authorised = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

fn retina(channel: &Channel, token: Option<&str>) -> RetinaClient<Authorised> {
    RetinaClient::with_interceptor(channel.clone(), Bearer(token.map(String::from)))
}

fn admin(channel: &Channel, token: Option<&str>) -> AdminClient<Authorised> {
    AdminClient::with_interceptor(channel.clone(), Bearer(token.map(String::from)))
}

fn code<T>(result: Result<T, tonic::Status>) -> tonic::Code {
    result.map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code())
}

async fn node_info_code(channel: &Channel, token: Option<&str>) -> tonic::Code {
    match retina(channel, token).get_node_info(pb::GetNodeInfoRequest {}).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// An HTTPS GET with a client certificate and a token, as Prometheus scrapes: status and body.
async fn https_get(addr: std::net::SocketAddr, server_ca: &str, client: &Leaf, token: Option<&str>) -> (u16, String) {
    https_request(addr, server_ca, client, token, "GET /metrics", "").await
}

/// One HTTP/1.0 request (`"METHOD /path"`, with `body`) over TLS with a client certificate.
async fn https_request(
    addr: std::net::SocketAddr,
    server_ca: &str,
    client: &Leaf,
    token: Option<&str>,
    request: &str,
    body: &str,
) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
        )
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A handshake refused (a certificate not yet or no longer served) is status 0.
    let mut stream = match connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await {
        Ok(stream) => stream,
        Err(err) => return (0, err.to_string()),
    };
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!(
                "{request} HTTP/1.0\r\nHost: localhost\r\n{authorization}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    // A TLS peer may close without close_notify after HTTP/1.0: what arrived is the response.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

/// Polls `check` until it holds: reloads happen on the node's own schedule (a look every 2 s).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn grpcurl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::repo().join(".deps/bin/grpcurl"))
        .args(args)
        .output()
        .expect("grpcurl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_and_scoped_tokens_guard_every_call_and_change_without_a_restart() {
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    let servers = Pki::new("retina test server CA");
    let clients = Pki::new("retina test client CA");
    let strangers = Pki::new("some other CA");
    files.write_leaf("node", &servers.server());
    put(&files.path("clients-ca.pem"), &clients.ca_pem(), 0o644);
    let centre_cert = clients.client("centre");
    let stranger_cert = strangers.client("centre");
    let tokens_file = files.path("tokens.toml");
    let centre = access::add_token(&tokens_file, "centre", &[Scope::Subscribe]).unwrap();
    let ops = access::add_token(&tokens_file, "ops", &[Scope::Admin]).unwrap();
    let prometheus = access::add_token(&tokens_file, "prometheus", &[Scope::Metrics]).unwrap();

    let node = retina_edge::node::Node::start(secured_config(&files, ""))
        .await
        .expect("node starts");
    let addr = node.grpc_addr;
    let server_ca = servers.ca_pem();

    // Mutual TLS: the right client certificate gets a connection; none, or one from another CA,
    // does not (the handshake fails, so no call is ever read).
    let channel = tls_channel(addr, &server_ca, Some(&centre_cert))
        .await
        .expect("mTLS connects");
    for (who, cert) in [
        ("no client certificate", None),
        ("another CA's certificate", Some(&stranger_cert)),
    ] {
        let refused = match tls_channel(addr, &server_ca, cert).await {
            Err(_) => true,
            // TLS 1.3 checks the client's certificate after the client thinks it is connected.
            Ok(channel) => node_info_code(&channel, Some(&centre)).await != tonic::Code::Ok,
        };
        assert!(refused, "{who} was let in");
    }

    // Tokens and scopes, on each service.
    assert_eq!(node_info_code(&channel, None).await, tonic::Code::Unauthenticated);
    assert_eq!(
        node_info_code(&channel, Some("rtk_not-a-token")).await,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        node_info_code(&channel, Some(&ops)).await,
        tonic::Code::PermissionDenied
    );
    assert_eq!(node_info_code(&channel, Some(&centre)).await, tonic::Code::Ok);
    let query = pb::QueryRequest::default();
    assert_eq!(
        code(retina(&channel, Some(&prometheus)).query(query.clone()).await),
        tonic::Code::PermissionDenied
    );
    assert_ne!(
        code(retina(&channel, Some(&centre)).query(query).await),
        tonic::Code::PermissionDenied
    );
    let camera = |uri: &str| pb::AddCameraRequest {
        camera: Some(pb::CameraSpec {
            camera_id: "street".into(),
            uri: uri.into(),
            enabled: Some(false),
            ..Default::default()
        }),
    };
    let add = |token: &str, uri: &str| {
        let (mut client, request) = (admin(&channel, Some(token)), camera(uri));
        async move { client.add_camera(request).await }
    };
    assert_eq!(
        code(add(&centre, "rtsp://127.0.0.1:9/x").await),
        tonic::Code::PermissionDenied
    );
    // Admin may add network cameras, but not point one at the box's own files.
    let refused = add(&ops, "file:///etc/passwd").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("admin.allowed_file_dirs"),
        "{}",
        refused.message()
    );
    add(&ops, "rtsp://viewer:secret@127.0.0.1:9/stream")
        .await
        .expect("admin adds an rtsp camera");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(files.path("cameras.toml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the state file holds the camera's password");
    }
    // Health stays open for load balancers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");

    // A reader is labelled by its token's name, whatever name it declares.
    let stream = retina(&channel, Some(&centre))
        .subscribe(pb::SubscribeRequest {
            subscriber_name: "made-up-name".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let metrics_addr = node.metrics_addr.expect("metrics endpoint");
    let (status, _) = https_get(metrics_addr, &server_ca, &centre_cert, None).await;
    assert_eq!(status, 401);
    let (status, _) = https_get(metrics_addr, &server_ca, &centre_cert, Some(&centre)).await;
    assert_eq!(status, 403);
    eventually("the subscriber's metric series", || async {
        let (status, body) = https_get(metrics_addr, &server_ca, &centre_cert, Some(&prometheus)).await;
        assert_eq!(status, 200, "{body:.300}");
        body.contains("subscriber=\"centre\"")
    })
    .await;
    let (_, body) = https_get(metrics_addr, &server_ca, &centre_cert, Some(&prometheus)).await;
    assert!(!body.contains("made-up-name"));
    // The status page: the page itself holds no data; what it shows needs the subscribe scope,
    // and a change of zones or lines the admin scope.
    let page = |token, request, body| https_request(metrics_addr, &server_ca, &centre_cert, token, request, body);
    let (status, html) = page(None, "GET /", "").await;
    assert!(
        status == 200 && html.contains("<title>retina-edge</title>"),
        "{html:.300}"
    );
    assert_eq!(page(None, "GET /api/status", "").await.0, 401);
    assert_eq!(page(Some(&prometheus), "GET /api/status", "").await.0, 403);
    let (status, json) = page(Some(&centre), "GET /api/status", "").await;
    assert!(status == 200 && json.contains("\"node_id\""), "{json:.300}");
    let places = r#"{"lines": [{"id": "l", "from": [0, 0.5], "to": [1, 0.5]}]}"#;
    assert_eq!(page(Some(&centre), "PUT /api/cameras/x/counting", places).await.0, 403);
    // A camera's picture needs the pixels scope.
    let picture = "GET /api/cameras/x/frame.jpg?time=2026-12-05T01:00:00.000Z";
    let (status, json) = page(Some(&centre), picture, "").await;
    assert!(status == 403 && json.contains("pixels"), "{status} {json:.300}");
    // When each listener's certificate expires, for an alert well before it does.
    for listener in ["grpc", "metrics"] {
        let series =
            format!("retina_tls_certificate_not_after_timestamp_seconds{{listener=\"{listener}\"}} 1935792000");
        assert!(body.contains(&series), "{series} in {body:.3000}");
    }
    drop(stream);

    // grpcurl, as an operator would call the node.
    let dir = files.dir.path();
    put(&files.path("centre.pem"), &centre_cert.cert, 0o644);
    put(&files.path("centre.key"), &centre_cert.key, 0o600);
    put(&files.path("server-ca.pem"), &server_ca, 0o644);
    let tls_args = |dir: &Path| {
        vec![
            "-cacert".to_string(),
            dir.join("server-ca.pem").display().to_string(),
            "-cert".into(),
            dir.join("centre.pem").display().to_string(),
            "-key".into(),
            dir.join("centre.key").display().to_string(),
            "-authority".into(),
            "localhost".into(),
        ]
    };
    let target = addr.to_string();
    let header = format!("authorization: Bearer {centre}");
    let mut args = tls_args(dir);
    args.extend([
        "-H".into(),
        header.clone(),
        target.clone(),
        "retina.v1.Retina/GetNodeInfo".into(),
    ]);
    let out = grpcurl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"nodeId\": \"test-node\""));
    let mut args = tls_args(dir);
    args.extend([target.clone(), "retina.v1.Retina/GetNodeInfo".into()]);
    let out = grpcurl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `retina-edge subscribe` with the CA, its certificate and a token file reads descriptors;
    // without the token it is told why.
    put(&files.path("centre.token"), &centre, 0o600);
    let subscribe = |token: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"));
        command
            .args(["subscribe", "--addr", &format!("https://localhost:{}", addr.port())])
            .args(["--ca-cert", &dir.join("server-ca.pem").display().to_string()])
            .args(["--cert", &dir.join("centre.pem").display().to_string()])
            .args(["--key", &dir.join("centre.key").display().to_string()])
            .args(["--from-earliest", "--include-empty", "--max-frames", "3", "--json"])
            .args(["--connect-timeout-seconds", "5"])
            .env_remove("RETINA_TOKEN");
        if token {
            command.args(["--token-file", &dir.join("centre.token").display().to_string()]);
        }
        command.output().expect("retina-edge subscribe runs")
    };
    let out = subscribe(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let out = subscribe(false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The Python client (grpcio) the same way.
    let python = |token: bool| {
        let mut command = std::process::Command::new(common::repo().join(".deps/python/bin/python"));
        command
            .arg(common::repo().join("scripts/central/retina_client.py"))
            .args(["info", "--addr", &addr.to_string(), "--server-name", "localhost"])
            .args(["--ca-cert", &dir.join("server-ca.pem").display().to_string()])
            .args(["--cert", &dir.join("centre.pem").display().to_string()])
            .args(["--key", &dir.join("centre.key").display().to_string()])
            .env_remove("RETINA_TOKEN");
        if token {
            command.args(["--token-file", &dir.join("centre.token").display().to_string()]);
        }
        command.output().expect("the Python client runs")
    };
    let out = python(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node_id: \"test-node\""));
    let out = python(false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A revoked token is refused, and a new one accepted, without a restart.
    access::revoke_token(&tokens_file, "centre").unwrap();
    let later = access::add_token(&tokens_file, "later", &[Scope::Subscribe]).unwrap();
    eventually("the revocation", || async {
        node_info_code(&channel, Some(&centre)).await == tonic::Code::Unauthenticated
    })
    .await;
    assert_eq!(node_info_code(&channel, Some(&later)).await, tonic::Code::Ok);

    // A new certificate (from a new CA) on disk is what the next connection gets.
    let renewed = Pki::new("renewed server CA");
    assert!(tls_channel(addr, &renewed.ca_pem(), Some(&centre_cert)).await.is_err());
    files.write_leaf("node", &renewed.server_until((2032, 7, 8)));
    eventually("the new certificate", || async {
        match tls_channel(addr, &renewed.ca_pem(), Some(&centre_cert)).await {
            Ok(channel) => node_info_code(&channel, Some(&later)).await == tonic::Code::Ok,
            Err(_) => false,
        }
    })
    .await;
    eventually("the new certificate's expiry in the metrics", || async {
        let (_, body) = https_get(metrics_addr, &renewed.ca_pem(), &centre_cert, Some(&prometheus)).await;
        body.contains("retina_tls_certificate_not_after_timestamp_seconds{listener=\"grpc\"} 1972857600")
    })
    .await;
    // A broken certificate file keeps the last good one in service.
    put(
        &files.path("node.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
        0o644,
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let channel = tls_channel(addr, &renewed.ca_pem(), Some(&centre_cert))
        .await
        .expect("still served");
    assert_eq!(node_info_code(&channel, Some(&later)).await, tonic::Code::Ok);

    common::stop_node(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn street_facing_listeners_need_tls_and_tokens_and_secrets_must_be_private() {
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    let pki = Pki::new("ca");
    files.write_leaf("node", &pki.server());
    put(&files.path("clients-ca.pem"), &pki.ca_pem(), 0o644);
    access::add_token(&files.path("tokens.toml"), "centre", &[Scope::Subscribe]).unwrap();
    // No traffic leaves loopback: each of these is refused before the node binds anything.
    let open = |extra: &str| {
        let text = common::config_toml("", extra).replace(
            "grpc_listen = \"127.0.0.1:0\"",
            &format!("grpc_listen = \"0.0.0.0:{}\"", common::free_port()),
        );
        common::parse_config(&text)
    };
    let err = retina_edge::node::Node::start(open(""))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("no [tls] and [auth]") && err.contains("node.insecure"),
        "{err}"
    );
    let mut with_tls_only = open("");
    with_tls_only.tls = secured_config(&files, "").tls;
    let err = access::check_exposure(&with_tls_only).unwrap_err().to_string();
    assert!(err.contains("no [auth]"), "{err}");
    access::check_exposure(&open("insecure = true")).expect("insecure is the operator's explicit choice");

    // A key or token file that other users can read is refused with the fix in the message.
    put(&files.path("node.key"), &pki.server().key, 0o644);
    let err = retina_edge::node::Node::start(secured_config(&files, ""))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("node.key") && err.contains("mode 644") && err.contains("chmod 600"),
        "{err}"
    );
}

/// Secrets from systemd credentials, as `LoadCredential=` hands them to the service (files in
/// `$CREDENTIALS_DIRECTORY`): the TLS key, the token file and a camera's password, each named
/// `credential:NAME` in the config. `retina-edge check` reads them all, reports how long the
/// certificate has left, and refuses an expired one or a password file others can read.
#[test]
fn secrets_come_from_systemd_credentials_and_check_tells_when_the_certificate_expires() {
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    let credentials = tempfile::tempdir().unwrap();
    let credential = |name: &str| credentials.path().join(name);
    let pki = Pki::new("ca");
    let node = pki.server();
    put(&files.path("node.pem"), &node.cert, 0o644);
    put(&credential("tls.key"), &node.key, 0o400);
    access::add_token(&credential("tokens.toml"), "centre", &[Scope::Subscribe]).unwrap();
    put(&credential("cam-password"), "s3cret-pw\n", 0o400);
    let dir = files.dir.path().display();
    let config = common::config_toml(
        &format!(
            r#"
[[cameras]]
id = "gate"
uri = "rtsp://127.0.0.1:9/stream"
username = "viewer"
password_file = "credential:cam-password"

[tls]
cert = "{dir}/node.pem"
key = "credential:tls.key"

[auth]
tokens_file = "credential:tokens.toml"
"#
        ),
        "",
    );
    // World-readable, as /etc/retina-edge/retina-edge.toml is: it holds no secret.
    put(&files.path("node.toml"), &config, 0o644);
    let check = |with_credentials: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"));
        command.args(["check", "--config", &files.path("node.toml").display().to_string()]);
        command.env_remove("CREDENTIALS_DIRECTORY");
        if with_credentials {
            command.env("CREDENTIALS_DIRECTORY", credentials.path());
        }
        let out = command.output().expect("retina-edge check runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let (ok, said) = check(true);
    assert!(ok, "{said}");
    assert!(
        said.contains("node.pem valid until 2031-05-06T00:00:00Z") && said.contains("TLS on, tokens required"),
        "{said}"
    );
    let (ok, said) = check(false);
    assert!(!ok && said.contains("CREDENTIALS_DIRECTORY is not set"), "{said}");

    put(&credential("cam-password"), "s3cret-pw\n", 0o644);
    let (ok, said) = check(true);
    assert!(
        !ok && said.contains("cam-password is open to other users (mode 644)"),
        "{said}"
    );
    put(&credential("cam-password"), "s3cret-pw\n", 0o400);

    let expired = pki.server_until((2021, 3, 4));
    put(&files.path("node.pem"), &expired.cert, 0o644);
    put(&credential("tls.key"), &expired.key, 0o400);
    let (ok, said) = check(true);
    assert!(
        !ok && said.contains("node.pem expired at 2021-03-04T00:00:00Z"),
        "{said}"
    );
    assert!(!said.contains("s3cret-pw"), "{said}");
}

/// The README's openssl recipe, run as written, makes a CA and a node certificate the node loads.
#[test]
fn the_readme_certificate_recipe_makes_files_the_node_accepts() {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let after = readme
        .split("**Certificates.**")
        .nth(1)
        .expect("the README's Certificates paragraph");
    let script = after
        .split("```sh\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("its sh block");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = retina_edge::config::TlsConfig {
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
        client_ca: Some(dir.path().join("nodes-ca.pem")),
    };
    access::Tls::load(files, &[access::ALPN_GRPC]).expect("the node takes the recipe's files");
}

/// Each request limit answers a client that exceeds it, and the node goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_answer_clients_that_exceed_them() {
    let config = common::parse_config(&common::config_toml(
        "[deliver]\nkeepalive_seconds = 0.5\nkeepalive_timeout_seconds = 0.5\nmax_streams_per_connection = 2\n",
        "",
    ));
    let (node, mut client) = common::start_node(config).await;
    let addr = node.grpc_addr;

    // A request larger than 64 KiB is refused before it is decoded.
    let mut admin = common::admin(&node).await;
    let huge = pb::AddCameraRequest {
        camera: Some(pb::CameraSpec {
            camera_id: "x".repeat(100 * 1024),
            uri: "rtsp://127.0.0.1:9/x".into(),
            ..Default::default()
        }),
    };
    let refused = admin.add_camera(huge).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

    // Metadata beyond 16 KiB: the HTTP/2 layer refuses the call.
    let mut request = tonic::Request::new(pb::GetNodeInfoRequest {});
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(32 * 1024).parse().unwrap());
    let refused = client.get_node_info(request).await.unwrap_err();
    assert_ne!(refused.code(), tonic::Code::Ok);
    common::node_info(&mut client).await;

    // Two calls at once per connection: a third waits until one of them ends.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let stream = RetinaClient::new(channel.clone())
            .subscribe(pb::SubscribeRequest::default())
            .await
            .expect("subscribe")
            .into_inner();
        streams.push(stream);
    }
    let mut third = RetinaClient::new(channel.clone());
    let third = tokio::spawn(async move { third.get_node_info(pb::GetNodeInfoRequest {}).await });
    // Another connection is not held up meanwhile.
    common::node_info(&mut client).await;
    assert!(!third.is_finished(), "a third call ran beside two open streams");
    drop(streams.pop());
    tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third call runs once a stream ends")
        .unwrap()
        .expect("and answers");

    // A peer that stops answering HTTP/2 pings (a cut uplink) is disconnected.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    silent.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    silent.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // an empty SETTINGS frame
    let opened = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a peer that never answers pings is still connected after 20 s"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before a ping could time out",
        opened.elapsed()
    );

    common::stop_node(node).await;
}

/// Arbitrary requests (any strings, numbers, times and enum values in every field) get an
/// answer or a clear status, never an internal error or a crash, and the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_requests_get_a_clear_answer_and_the_node_goes_on() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    // Its model store in a directory of its own: activations install the config's models there.
    let dir = tempfile::tempdir().unwrap();
    // A video ring too, empty: pixel requests reach their checks and the ring.
    let video = format!(
        "[video]\ndir = \"{}\"\nface_model = \"{}/models/blazeface-back-256.toml\"\n",
        dir.path().join("video").display(),
        common::repo().display()
    );
    let mut config = common::parse_config(&common::config_toml(&video, ""));
    config.base_dir = dir.path().to_path_buf();
    config.origin = dir.path().join("node.toml");
    let (node, mut client) = common::start_node(config).await;
    let mut admin = common::admin(&node).await;
    let mut pixels = pb::pixels_client::PixelsClient::connect(format!("http://{}", node.grpc_addr))
        .await
        .unwrap();
    let text = || {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9_.-]{1,12}",
            ".{0,40}",
            "[a-z]{2,8}://[ -~]{0,60}",
            "x{5000}",
        ]
    };
    let time = || {
        proptest::option::of(
            (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        )
    };
    let strategy = (
        (
            text(),
            text(),
            proptest::collection::vec(text(), 0..3),
            any::<f32>(),
            any::<i32>(),
            any::<u64>(),
            time(),
        ),
        (time(), any::<u32>(), text(), any::<bool>(), any::<u64>()),
        (
            text(),
            text(),
            proptest::option::of(any::<f64>()),
            any::<f64>(),
            any::<f64>(),
        ),
    );
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let allowed = [
        tonic::Code::InvalidArgument,
        tonic::Code::NotFound,
        tonic::Code::OutOfRange,
        tonic::Code::PermissionDenied,
        tonic::Code::AlreadyExists,
        tonic::Code::FailedPrecondition,
    ];
    let check = |what: &str, result: Result<(), tonic::Status>| {
        if let Err(status) = result {
            assert!(allowed.contains(&status.code()), "{what}: {status:?}");
            // Short prefixes of bad values; the longest message lists the detector's 80 classes.
            assert!(
                status.message().len() < 1200,
                "{what}: a {}-byte message: {:.300}",
                status.message().len(),
                status.message()
            );
        }
    };
    for _ in 0..150 {
        let (subscribe, query, camera) = strategy.new_tree(&mut runner).unwrap().current();
        let (name, camera_id, classes, min_score, start, after_offset, from_time) = subscribe;
        let request = pb::SubscribeRequest {
            camera_ids: vec![camera_id.clone()],
            class_names: classes.clone(),
            min_score,
            start,
            subscriber_name: name,
            after_offset,
            from_time,
            ..Default::default()
        };
        check("Subscribe", client.subscribe(request).await.map(drop));
        let (to_time, page_size, page_token, newest_first, track_id) = query;
        let request = pb::QueryRequest {
            camera_id: camera_id.clone(),
            class_names: classes,
            track_id,
            from_time,
            to_time,
            newest_first,
            page_size,
            page_token,
        };
        check("Query", client.query(request).await.map(drop));
        let (id, uri, fps, latitude, longitude) = camera;
        let position = Some(pb::CameraPosition {
            latitude,
            longitude,
            ..Default::default()
        });
        let request = pb::UpdateCameraRequest {
            camera_id: id.clone(),
            uri: Some(uri.clone()),
            analysis_fps: fps,
            position: position.clone(),
            ..Default::default()
        };
        check("UpdateCamera", admin.update_camera(request).await.map(drop));
        // Model hashes and uploads: any names, sizes, digests, signatures and chunks. (Two empty
        // hashes ask for the running set again: not a malformed request, and seconds of loading.)
        let request = pb::ActivateModelsRequest {
            detector: camera_id.clone(),
            embedder: if fps.is_some() { uri.clone() } else { String::new() },
        };
        if !(request.detector.is_empty() && request.embedder.is_empty()) {
            check("ActivateModels", admin.activate_models(request).await.map(drop));
        }
        let header = pb::ModelUploadHeader {
            manifest: camera_id.clone(),
            files: vec![pb::ModelUploadFile {
                name: id.clone(),
                size: after_offset,
                sha256: uri.clone(),
            }],
            signature: camera_id.clone().into_bytes(),
        };
        let chunk = pb::ModelFileChunk {
            name: id.clone(),
            data: uri.clone().into_bytes(),
        };
        let parts = [
            pb::upload_model_request::Part::Header(header),
            pb::upload_model_request::Part::Chunk(chunk),
        ];
        let upload = parts
            .into_iter()
            .map(|part| pb::UploadModelRequest { part: Some(part) });
        check(
            "UploadModel",
            admin.upload_model(tokio_stream::iter(upload)).await.map(drop),
        );
        // Pixels: any camera, times, boxes, margins and qualities.
        let options = pb::SnapshotOptions {
            crop_margin: min_score,
            draw_box: newest_first,
            raw: newest_first,
            quality: page_size,
        };
        let request = pb::SnapshotRequest {
            camera_id: camera_id.clone(),
            time: from_time,
            options: Some(options),
            r#box: Some(pb::BoundingBox {
                x_min: min_score,
                y_min: 0.0,
                x_max: latitude as f32,
                y_max: longitude as f32,
            }),
        };
        check("GetSnapshot", pixels.get_snapshot(request).await.map(drop));
        let request = pb::TrackSnapshotRequest {
            track_id,
            options: Some(options),
            camera_id: camera_id.clone(),
        };
        check("GetTrackSnapshot", pixels.get_track_snapshot(request).await.map(drop));
        let request = pb::ClipRequest {
            camera_id: camera_id.clone(),
            from_time,
            to_time,
            raw: newest_first,
        };
        check("GetClip", pixels.get_clip(request).await.map(drop));
        let request = pb::TrackClipRequest {
            track_id,
            margin_seconds: min_score,
            raw: newest_first,
            camera_id: id.clone(),
        };
        check("GetTrackClip", pixels.get_track_clip(request).await.map(drop));
        // Half the cameras get an allowed source, so that their other fields are checked too.
        let uri = if fps.is_some() {
            "rtsp://127.0.0.1:9/x".to_string()
        } else {
            uri
        };
        let request = pb::AddCameraRequest {
            camera: Some(pb::CameraSpec {
                camera_id: id.clone(),
                uri,
                analysis_fps: fps,
                enabled: Some(false),
                position,
                loop_file: false,
                ..Default::default()
            }),
        };
        match admin.add_camera(request).await {
            Ok(_) => check(
                "RemoveCamera",
                admin
                    .remove_camera(pb::RemoveCameraRequest { camera_id: id })
                    .await
                    .map(drop),
            ),
            Err(status) => check("AddCamera", Err(status)),
        }
    }
    check(
        "RollbackModels",
        admin.rollback_models(pb::RollbackModelsRequest {}).await.map(drop),
    );
    common::node_info(&mut client).await;
    common::stop_node(node).await;
}
