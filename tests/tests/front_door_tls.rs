//! `wss://` served natively, against a real `exai-daemon` on real Redis over real sockets: a
//! self-signed certificate (made with `openssl req`) and its key in `EXAI_WS_TLS_CERT` and
//! `EXAI_WS_TLS_KEY`; a tokio-tungstenite client that trusts only that certificate says hello and
//! calls `test_echo` over `wss://`, `/health` answers over `https://`, and a plain `ws://` or
//! `http://` request to the same port gets nothing. One of the two settings alone, or a file
//! that holds no certificate, is a start-up error naming the variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use exai_tests::daemon::{Client, Io, TOKEN, echoed};
use exai_tests::{
    ChildGuard, PrefixGuard, bin_path, free_port, redis_url, spawn_bin, unique_prefix, wait_until,
};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A directory of its own with a self-signed certificate for `127.0.0.1` and `localhost`.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_prefix(test).replace(':', "-"));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth",
                "-keyout",
            ])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdin(Stdio::null())
            .output()
            .expect("run openssl (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// A client configuration that trusts only this certificate.
    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.cert()).expect("read cert") {
            roots.add(cert.expect("pem")).expect("add root");
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// The environment of a daemon on `port` with its own prefix, plus `extra`.
fn daemon_env(prefix: &str, port: u16, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("REDIS_URL", redis_url()),
        ("EXAI_REDIS_PREFIX", prefix.to_owned()),
        ("EXAI_WS_HOST", "127.0.0.1".to_owned()),
        ("EXAI_WS_PORT", port.to_string()),
        ("EXAI_WS_TOKEN", TOKEN.to_owned()),
    ];
    for (k, v) in extra {
        let k: &'static str = match *k {
            "EXAI_WS_TLS_CERT" => "EXAI_WS_TLS_CERT",
            "EXAI_WS_TLS_KEY" => "EXAI_WS_TLS_KEY",
            other => panic!("unexpected variable {other}"),
        };
        env.push((k, v.clone()));
    }
    env
}

/// A TLS connection to `addr` that trusts only `certs`.
async fn tls_connect(certs: &Certs, addr: SocketAddr) -> Box<dyn Io> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let tls = TlsConnector::from(certs.client_config())
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    Box::new(tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_is_served_with_the_configured_certificate_and_plain_ws_is_refused() {
    let certs = Certs::new("tls_wss");
    let prefix = unique_prefix("tls_wss");
    let _keys = PrefixGuard::new(prefix.clone(), redis_url());
    let port = free_port();
    let env = daemon_env(
        &prefix,
        port,
        &[
            ("EXAI_WS_TLS_CERT", path_str(&certs.cert())),
            ("EXAI_WS_TLS_KEY", path_str(&certs.key())),
        ],
    );
    let _daemon: ChildGuard = spawn_bin("exai-daemon", &[], &env);
    // A worker to run the call (it does not speak to the daemon, only to Redis).
    let _worker: ChildGuard = spawn_bin(
        "exai-worker",
        &["run", "--queues", "tool_calls", "--concurrency", "4"],
        &[
            ("REDIS_URL", redis_url()),
            ("EXAI_REDIS_PREFIX", prefix.clone()),
            ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        ],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // `/health` over https, trusting only the test's certificate.
    let cert_pem = std::fs::read(certs.cert()).expect("cert");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert_pem).expect("cert"))
        .build()
        .expect("https client");
    let up = wait_until(Duration::from_secs(30), || {
        let https = https.clone();
        async move {
            https
                .get(format!("https://{addr}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    assert!(up, "the daemon never answered /health over https");

    // wss: hello and a call.
    let io = tls_connect(&certs, addr).await;
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/"), io)
        .await
        .expect("wss upgrade");
    let (mut client, _) = Client { ws }.say_hello(None).await;
    let (res, _) = client
        .call("r-1", "test_echo", json!({"message": "over tls"}))
        .await;
    assert_eq!(echoed(&res)["message"], "over tls", "{res}");

    // Plain ws:// and http:// to the TLS port get no answer.
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let plain = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp),
    )
    .await
    .expect("the plain handshake was neither answered nor closed");
    assert!(plain.is_err(), "a plain ws:// upgrade was accepted");
    let plain_http = reqwest::get(format!("http://{addr}/health")).await;
    assert!(
        plain_http.is_err(),
        "plain http answered: {:?}",
        plain_http.map(|r| r.status())
    );
}

/// Runs the daemon with `extra` and returns its standard error once it has exited (it must).
async fn refused_start(test: &str, extra: &[(&str, String)]) -> String {
    let prefix = unique_prefix(test);
    let _keys = PrefixGuard::new(prefix.clone(), redis_url());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin_path("exai-daemon"))
            .env_clear()
            .envs(daemon_env(&prefix, free_port(), extra))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the daemon started instead of refusing")
    .expect("run exai-daemon");
    assert!(!out.status.success(), "the daemon started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn tls_with_one_file_or_a_bad_file_is_a_start_up_error_naming_the_variable() {
    let certs = Certs::new("tls_refused");
    let stderr = refused_start(
        "tls_refused",
        &[("EXAI_WS_TLS_CERT", path_str(&certs.cert()))],
    )
    .await;
    assert!(stderr.contains("EXAI_WS_TLS_KEY"), "{stderr}");
    let stderr = refused_start(
        "tls_refused",
        &[("EXAI_WS_TLS_KEY", path_str(&certs.key()))],
    )
    .await;
    assert!(stderr.contains("EXAI_WS_TLS_CERT"), "{stderr}");
    // The key where the certificate should be: no certificate in the file.
    let stderr = refused_start(
        "tls_refused",
        &[
            ("EXAI_WS_TLS_CERT", path_str(&certs.key())),
            ("EXAI_WS_TLS_KEY", path_str(&certs.key())),
        ],
    )
    .await;
    assert!(stderr.contains("EXAI_WS_TLS_CERT"), "{stderr}");
}
