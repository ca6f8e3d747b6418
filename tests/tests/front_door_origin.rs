//! The daemon's front door against web pages and misconfigured tokens, each case against a real
//! `exai-daemon` process on real Redis over real sockets:
//!
//! - a page from another origin (127.0.0.1 on another port), opened in headless Chromium, cannot
//!   open a WebSocket to a daemon without a token, and can once its origin is in
//!   `EXAI_WS_ALLOWED_ORIGINS`; raw upgrades and admin API requests with and without `Origin`;
//! - DNS rebinding: a `Host` that is not a loopback name is refused while the daemon listens on
//!   loopback, WebSocket and HTTP alike;
//! - a token of only whitespace is a start-up error naming the variable;
//! - the admin API takes only `EXAI_ADMIN_TOKEN`, never the client token.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use exai_tests::{
    ChildGuard, PrefixGuard, bin_path, free_port, redis_url, spawn_bin, unique_prefix, wait_until,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// The client token of the daemons that have one.
const CLIENT_TOKEN: &str = "client-token-0123456789";
/// The admin token of the daemons that have one.
const ADMIN_TOKEN: &str = "admin-token-9876543210";

/// A real daemon on a free loopback port and its own key prefix.
struct Daemon {
    addr: SocketAddr,
    _child: ChildGuard,
    _keys: PrefixGuard,
}

/// Starts `exai-daemon` on 127.0.0.1 with `extra` settings; returns once `/health` answers.
async fn start_daemon(test: &str, extra: &[(&str, &str)]) -> Daemon {
    let prefix = unique_prefix(test);
    let keys = PrefixGuard::new(prefix.clone(), redis_url());
    let port = free_port();
    let mut env = vec![
        ("REDIS_URL", redis_url()),
        ("EXAI_REDIS_PREFIX", prefix),
        ("EXAI_WS_HOST", "127.0.0.1".to_owned()),
        ("EXAI_WS_PORT", port.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let child = spawn_bin("exai-daemon", &[], &env);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let http = reqwest::Client::new();
    let up = wait_until(Duration::from_secs(30), || {
        let http = http.clone();
        async move {
            http.get(format!("http://{addr}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    assert!(up, "the daemon never answered /health on {addr}");
    Daemon {
        addr,
        _child: child,
        _keys: keys,
    }
}

/// Sends `request` (a whole HTTP/1.1 request head) on a fresh connection and returns the
/// status code of the answer.
async fn raw_status(addr: SocketAddr, request: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("read status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

/// A WebSocket opening handshake with `Host: host` and the extra header lines `extra`.
fn upgrade_request(host: &str, extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A plain `METHOD path` request with `Host: host` and the extra header lines `extra`.
fn http_request(method: &str, path: &str, host: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\
         {extra}\r\n"
    )
}

/// A native client (no `Origin`) connects and says hello; returns the `hello_ack`.
async fn native_hello(addr: SocketAddr, token: Option<&str>) -> serde_json::Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .expect("a client without Origin connects");
    let hello = serde_json::json!({"op": "hello", "token": token});
    ws.send(Message::text(hello.to_string()))
        .await
        .expect("send hello");
    loop {
        match ws.next().await.expect("an answer").expect("a frame") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

// ----- a page from another origin in a real browser ---------------------------------------

/// Serves the attacker's page on a free 127.0.0.1 port (another origin than the daemon's);
/// returns its address. Besides the page, `/report` is where the page says it has written its
/// outcome, and `/wait` (a script the page loads last) is answered only after that report (or
/// after 30 s), so the page's load, and the browser's `--dump-dom`, wait for the outcome.
/// Stops with the test's runtime.
async fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let reported = Arc::new(Notify::new());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let reported = reported.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let (kind, body) = if path.starts_with("/report") {
                    reported.notify_one();
                    ("text/plain", "")
                } else if path.starts_with("/wait") {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), reported.notified()).await;
                    ("text/javascript", "// reported")
                } else {
                    ("text/html; charset=utf-8", ATTACK_PAGE)
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nCache-Control: no-store\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// The attacker's page: opens a WebSocket to the daemon named in its query string
/// (`?daemon=host:port`), says hello, and writes the outcome into `<p id="outcome">`:
/// `connected <hello_ack>` or `refused`; then tells its server, which answers `/wait`.
const ATTACK_PAGE: &str = r#"<!doctype html><html><body><p id="outcome">pending</p><script>
const out = document.getElementById("outcome");
const daemon = new URLSearchParams(location.search).get("daemon");
let opened = false;
let done = false;
const settle = (text) => {
  if (done) return;
  done = true;
  out.textContent = text;
  fetch("/report", {cache: "no-store"});
};
const ws = new WebSocket("ws://" + daemon + "/");
ws.onopen = () => { opened = true; ws.send(JSON.stringify({op: "hello"})); };
ws.onmessage = (e) => settle("connected " + e.data);
ws.onerror = () => { if (!opened) settle("refused"); };
ws.onclose = () => { if (!opened) settle("refused"); };
</script><script src="/wait"></script></body></html>"#;

/// Opens `url` in headless Chromium and returns the DOM it dumps (the page's last script holds
/// the load until it has reported its outcome, within the virtual time budget).
async fn dump_dom(url: &str) -> String {
    exai_tests::chromium::run(
        url,
        &[
            "--virtual-time-budget=8000".to_owned(),
            "--dump-dom".to_owned(),
        ],
    )
    .await
}

/// The text of `<p id="outcome">` in a dumped DOM.
fn outcome(dom: &str) -> &str {
    let start = dom
        .find(r#"<p id="outcome">"#)
        .unwrap_or_else(|| panic!("no outcome in the page:\n{dom}"))
        + r#"<p id="outcome">"#.len();
    let end = dom[start..].find("</p>").expect("closing tag") + start;
    &dom[start..end]
}

#[tokio::test]
async fn a_page_from_another_origin_cannot_open_a_socket_unless_its_origin_is_allowed() {
    // The attacker's page, on 127.0.0.1 but another port than the daemons'.
    let page = serve_page().await;
    let page_origin = format!("http://{page}");

    // A daemon without a token (allowed on loopback), and nothing allow-listed: refused.
    let daemon = start_daemon("origin_browser_refused", &[]).await;
    let dom = dump_dom(&format!("{page_origin}/?daemon={}", daemon.addr)).await;
    assert_eq!(outcome(&dom), "refused", "{dom}");

    // A daemon with the page's origin allow-listed: the socket opens and the hello is answered.
    let allowed = start_daemon(
        "origin_browser_allowed",
        &[("EXAI_WS_ALLOWED_ORIGINS", &page_origin)],
    )
    .await;
    let dom = dump_dom(&format!("{page_origin}/?daemon={}", allowed.addr)).await;
    let text = outcome(&dom);
    assert!(
        text.starts_with("connected ") && text.contains(r#""ok":true"#),
        "{dom}"
    );
}

#[tokio::test]
async fn an_upgrade_or_admin_request_with_an_origin_not_allowed_gets_403_and_one_without_passes() {
    // No token, nothing allow-listed.
    let open = start_daemon("origin_raw_open", &[]).await;
    let host = open.addr.to_string();
    assert_eq!(
        raw_status(open.addr, &upgrade_request(&host, "")).await,
        101
    );
    for origin in ["http://127.0.0.1:1", "null", &format!("http://{host}")] {
        let status = raw_status(
            open.addr,
            &upgrade_request(&host, &format!("Origin: {origin}\r\n")),
        )
        .await;
        assert_eq!(status, 403, "upgrade with Origin {origin}");
    }
    let ack = native_hello(open.addr, None).await;
    assert_eq!(ack["ok"], true, "{ack}");

    // Tokens and one allowed origin.
    let allowed = "http://127.0.0.1:3000";
    let daemon = start_daemon(
        "origin_raw_allowed",
        &[
            ("EXAI_WS_TOKEN", CLIENT_TOKEN),
            ("EXAI_ADMIN_TOKEN", ADMIN_TOKEN),
            (
                "EXAI_WS_ALLOWED_ORIGINS",
                "https://app.example, http://127.0.0.1:3000/",
            ),
        ],
    )
    .await;
    let addr = daemon.addr;
    let host = addr.to_string();
    let upgrade = |origin: &str| upgrade_request(&host, &format!("Origin: {origin}\r\n"));
    assert_eq!(raw_status(addr, &upgrade(allowed)).await, 101);
    assert_eq!(raw_status(addr, &upgrade("https://app.example")).await, 101);
    assert_eq!(
        raw_status(addr, &upgrade("http://127.0.0.1:3001")).await,
        403
    );
    assert_eq!(raw_status(addr, &upgrade("http://evil.example")).await, 403);
    let ack = native_hello(addr, Some(CLIENT_TOKEN)).await;
    assert_eq!(ack["ok"], true, "{ack}");

    // The admin API: no Origin, an allowed one, and the admin page's own pass; others get 403,
    // even with the admin token.
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    let get = |origin: Option<&str>| {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        http_request(
            "GET",
            "/admin/api/queues",
            &host,
            &format!("{bearer}{origin}"),
        )
    };
    assert_eq!(raw_status(addr, &get(None)).await, 200);
    assert_eq!(raw_status(addr, &get(Some(allowed))).await, 200);
    assert_eq!(
        raw_status(addr, &get(Some(&format!("http://{host}")))).await,
        200
    );
    assert_eq!(
        raw_status(addr, &get(Some("http://evil.example"))).await,
        403
    );
    assert_eq!(raw_status(addr, &get(Some("null"))).await, 403);
    let pause = http_request(
        "POST",
        "/admin/api/queues/tool_calls/pause",
        &host,
        &format!("{bearer}Origin: http://127.0.0.1:1\r\n"),
    );
    assert_eq!(raw_status(addr, &pause).await, 403);
    // The page itself and the health endpoint are not the API: no Origin rule there.
    let page = http_request("GET", "/admin", &host, "Origin: http://evil.example\r\n");
    assert_eq!(raw_status(addr, &page).await, 200);
}

#[tokio::test]
async fn a_host_that_is_not_a_loopback_name_is_refused_while_listening_on_loopback() {
    let daemon = start_daemon("origin_rebinding", &[("EXAI_WS_TOKEN", CLIENT_TOKEN)]).await;
    let addr = daemon.addr;
    let port = addr.port();
    let bearer = format!("Authorization: Bearer {CLIENT_TOKEN}\r\n");
    let refused = |status: u16| status == 403 || status == 421;
    for host in ["evil.example:8079", "evil.example", "192.168.1.1:8079"] {
        let status = raw_status(addr, &upgrade_request(host, "")).await;
        assert!(refused(status), "upgrade with Host {host}: {status}");
        for (method, path) in [
            ("GET", "/health"),
            ("GET", "/metrics"),
            ("GET", "/admin"),
            ("GET", "/admin/api/queues"),
            ("POST", "/admin/api/queues/tool_calls/pause"),
        ] {
            let status = raw_status(addr, &http_request(method, path, host, &bearer)).await;
            assert!(
                refused(status),
                "{method} {path} with Host {host}: {status}"
            );
        }
    }
    // Loopback names and addresses, with any port, pass.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "127.0.0.1".to_owned(),
        "[::1]:1".to_owned(),
    ] {
        assert_eq!(
            raw_status(addr, &upgrade_request(&host, "")).await,
            101,
            "{host}"
        );
        let health = http_request("GET", "/health", &host, "");
        assert_eq!(raw_status(addr, &health).await, 200, "{host}");
    }
}

/// Runs `exai-daemon` with `extra` settings and expects it to refuse to start: it must exit
/// with an error before it prints `listening on`; returns its standard error.
async fn refused_start(extra: &[(&str, &str)]) -> String {
    let prefix = unique_prefix("origin_blank_token");
    let _keys = PrefixGuard::new(prefix.clone(), redis_url());
    let mut cmd = tokio::process::Command::new(bin_path("exai-daemon"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis_url())
        .env("EXAI_REDIS_PREFIX", &prefix)
        .env("EXAI_WS_HOST", "127.0.0.1")
        .env("EXAI_WS_PORT", free_port().to_string())
        .envs(extra.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn exai-daemon");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while let Some(line) = stdout.next_line().await.expect("read stdout") {
        assert!(
            !line.starts_with("listening on"),
            "the daemon started with {extra:?}: {line}"
        );
    }
    let out = child
        .wait_with_output()
        .await
        .expect("wait for exai-daemon");
    assert!(!out.status.success(), "exit status {}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_token_of_only_whitespace_is_a_start_up_error_naming_the_variable() {
    for var in ["EXAI_WS_TOKEN", "EXAI_ADMIN_TOKEN"] {
        for blank in ["   ", " \t "] {
            let stderr = refused_start(&[(var, blank)]).await;
            assert!(stderr.contains(var), "{var}={blank:?}: {stderr}");
            assert!(stderr.contains("whitespace"), "{var}={blank:?}: {stderr}");
        }
    }
}

#[tokio::test]
async fn the_admin_api_takes_only_the_admin_token_and_is_closed_without_one() {
    let http = reqwest::Client::new();
    let queues = |addr: SocketAddr| format!("http://{addr}/admin/api/queues");

    // Both tokens: the client token is refused, reading and acting alike; the admin token works.
    let both = start_daemon(
        "origin_admin_token",
        &[
            ("EXAI_WS_TOKEN", CLIENT_TOKEN),
            ("EXAI_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    let pause = format!("http://{}/admin/api/queues/tool_calls/pause", both.addr);
    for req in [
        http.get(queues(both.addr)).bearer_auth(CLIENT_TOKEN),
        http.post(&pause).bearer_auth(CLIENT_TOKEN),
        http.get(queues(both.addr)),
    ] {
        let res = req.send().await.expect("request");
        assert!(
            matches!(res.status().as_u16(), 401 | 403),
            "{}",
            res.status()
        );
    }
    let res = http
        .get(queues(both.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let body = res.text().await.expect("body");
    assert!(
        !body.contains(r#""paused":true"#),
        "the refused pause did nothing: {body}"
    );
    // Clients keep their own token.
    let ack = native_hello(both.addr, Some(CLIENT_TOKEN)).await;
    assert_eq!(ack["ok"], true, "{ack}");

    // Only the client token: the admin API is closed, to the client token too.
    let client_only = start_daemon("origin_admin_closed", &[("EXAI_WS_TOKEN", CLIENT_TOKEN)]).await;
    let res = http
        .get(queues(client_only.addr))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), reqwest::StatusCode::UNAUTHORIZED);
    let body = res.text().await.expect("body");
    assert!(body.contains("EXAI_ADMIN_TOKEN"), "{body}");
}
