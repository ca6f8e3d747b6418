//! The upload-path race, against real processes: a racer swaps `race.txt` inside the upload root
//! between a regular file and a symlink to a file outside the roots, while a client makes many
//! `kimi_upload_files` calls through a real `exai-daemon` and a real `exai-worker` against
//! exai-sim (Moonshot and Supabase Storage) with a real Redis and Postgres. The outside bytes
//! must never reach exai-sim nor the staging store; each call uploads the inside bytes or fails
//! cleanly. The staging store the processes created is private (directories 0700, blobs 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use exai_tests::sim::{Sim, SimConfig};
use exai_tests::{
    ChildGuard, PrefixGuard, TestDb, free_port, spawn_bin, unique_prefix, wait_until,
};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The sim's bearer key (Moonshot key and Supabase service-role key).
const KEY: &str = "sk-test-upload-race";
/// The daemon's client token.
const TOKEN: &str = "race-token-0123456789";
/// How long any one frame or start-up may take.
const WAIT: Duration = Duration::from_secs(30);
/// Upload calls made while the racer runs.
const CALLS: usize = 300;
/// Clients making them at once.
const CLIENTS: usize = 6;
/// The racer's bound: swaps at most this many times.
const MAX_SWAPS: u64 = 1_000_000;

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// A running daemon, worker and sim, with the directories they share.
struct Stack {
    sim: Sim,
    _db: TestDb,
    dir: PathBuf,
    root: PathBuf,
    staging: PathBuf,
    port: u16,
    _daemon: ChildGuard,
    _worker: ChildGuard,
    _keys: PrefixGuard,
}

impl Stack {
    async fn start(test: &str) -> Self {
        let sim = Sim::start(SimConfig::new(KEY)).await.expect("start sim");
        let db = TestDb::new().await;
        exai_shared::db::migrate(&db.pool().await)
            .await
            .expect("migrate");
        let prefix = unique_prefix(test);
        let keys = PrefixGuard::new(prefix.clone(), exai_tests::redis_url());
        let dir = std::env::temp_dir().join(format!("exai-{test}-{}", uuid::Uuid::new_v4()));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let staging = dir.join("staging");
        let port = free_port();
        let env: Vec<(&str, String)> = vec![
            ("REDIS_URL", exai_tests::redis_url()),
            ("EXAI_REDIS_PREFIX", prefix),
            ("EXAI_WS_HOST", "127.0.0.1".to_owned()),
            ("EXAI_WS_PORT", port.to_string()),
            ("EXAI_WS_TOKEN", TOKEN.to_owned()),
            ("KIMI_API_URL", sim.moonshot_url()),
            ("KIMI_API_KEY", KEY.to_owned()),
            ("GLM_API_URL", sim.moonshot_url()),
            ("GLM_API_KEY", KEY.to_owned()),
            ("SUPABASE_URL", sim.url()),
            ("SUPABASE_SERVICE_ROLE_KEY", KEY.to_owned()),
            ("DATABASE_URL", db.url.clone()),
            ("EXAI_UPLOAD_ROOTS", root.display().to_string()),
            ("EXAI_STAGING_DIR", staging.display().to_string()),
            ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        ];
        let daemon = spawn_bin("exai-daemon", &[], &env);
        let worker = spawn_bin("exai-worker", &["run", "--concurrency", "16"], &env);
        let up = wait_until(WAIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "the daemon listens on {port}");
        Self {
            sim,
            _db: db,
            dir,
            root,
            staging,
            port,
            _daemon: daemon,
            _worker: worker,
            _keys: keys,
        }
    }

    /// The sha256 of every file Moonshot (exai-sim) received.
    fn moonshot_sha256s(&self) -> Vec<String> {
        self.sim.state()["moonshot"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["sha256"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The sha256 of every object in Supabase Storage (exai-sim), any bucket.
    fn storage_sha256s(&self) -> Vec<String> {
        let state = self.sim.state();
        let mut out = Vec::new();
        if let Some(buckets) = state["supabase"]["buckets"].as_object() {
            for bucket in buckets.values() {
                if let Some(objects) = bucket["objects"].as_object() {
                    out.extend(
                        objects
                            .values()
                            .map(|o| o["sha256"].as_str().unwrap_or_default().to_owned()),
                    );
                }
            }
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client that said hello.
async fn client(
    port: u16,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .expect("connect to the daemon");
    ws.send(Message::Text(
        json!({"op": "hello", "token": TOKEN}).to_string().into(),
    ))
    .await
    .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["ok"], true, "{ack}");
    ws
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Close(f))) => panic!("the daemon closed the socket: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("the socket ended: {other:?}"),
            }
        }
    })
    .await;
    frame.expect("a frame within the wait")
}

/// How one call ended.
#[derive(Debug)]
enum Outcome {
    /// Uploaded: the sha256 the answer names.
    Uploaded(String),
    /// Refused or failed, with the error.
    Failed(Value),
}

/// One `kimi_upload_files` call of `path`, to its `call_tool_res`.
async fn upload<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, id: &str, path: &Path) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let call = json!({"op": "call_tool", "request_id": id, "name": "kimi_upload_files",
        "arguments": {"files": [path.display().to_string()]}});
    ws.send(Message::Text(call.to_string().into()))
        .await
        .unwrap();
    loop {
        let v = next_json(ws).await;
        if v["op"] != "call_tool_res" || v["request_id"] != id {
            continue;
        }
        if let Some(error) = v.get("error") {
            return Outcome::Failed(error.clone());
        }
        let text = v["outputs"][0]["text"].as_str().expect("a text output");
        let items: Value = serde_json::from_str(text).expect("the answer is JSON");
        assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
        return Outcome::Uploaded(items[0]["sha256"].as_str().unwrap().to_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_swapped_for_a_symlink_never_uploads_the_outside_file() {
    let stack = Stack::start("upload-race").await;
    let inside = b"inside the upload root: the only bytes that may leave\n".repeat(64);
    let outside = b"OUTSIDE THE ROOTS: secret bytes that must never leave\n".repeat(64);
    let (inside_sha, outside_sha) = (sha256(&inside), sha256(&outside));
    let secret = stack.dir.join("secret.txt");
    std::fs::write(&secret, &outside).unwrap();
    let race = stack.root.join("race.txt");
    std::fs::write(&race, &inside).unwrap();

    // The racer: swaps race.txt (atomically, by rename) between the regular file and a symlink
    // to the outside file, until told to stop or MAX_SWAPS.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let racer = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (root, race, secret, inside) = (
            stack.root.clone(),
            race.clone(),
            secret.clone(),
            inside.clone(),
        );
        std::thread::spawn(move || {
            let file_tmp = root.join(".race-file.tmp");
            let link_tmp = root.join(".race-link.tmp");
            while !stop.load(Ordering::Relaxed) && swaps.load(Ordering::Relaxed) < MAX_SWAPS {
                let _ = std::fs::remove_file(&link_tmp);
                std::os::unix::fs::symlink(&secret, &link_tmp).unwrap();
                std::fs::rename(&link_tmp, &race).unwrap();
                std::fs::write(&file_tmp, &inside).unwrap();
                std::fs::rename(&file_tmp, &race).unwrap();
                swaps.fetch_add(2, Ordering::Relaxed);
            }
        })
    };

    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (next, race, port) = (next.clone(), race.clone(), stack.port);
        tasks.push(tokio::spawn(async move {
            let mut ws = client(port).await;
            let mut outcomes = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= CALLS as u64 {
                    return outcomes;
                }
                outcomes.push(upload(&mut ws, &format!("race-{n}"), &race).await);
            }
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.expect("client task"));
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().expect("racer");
    assert!(swaps.load(Ordering::Relaxed) > 0, "the racer swapped");

    let uploaded: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Uploaded(sha) => Some(sha),
            Outcome::Failed(_) => None,
        })
        .collect();
    let failed: Vec<&Value> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed(e) => Some(e),
            Outcome::Uploaded(_) => None,
        })
        .collect();
    assert_eq!(outcomes.len(), CALLS);
    // Each call uploaded the inside bytes, or failed cleanly (the symlink was refused).
    for sha in &uploaded {
        assert_eq!(
            **sha,
            inside_sha,
            "a call uploaded other bytes than the inside file's (outside: {})",
            **sha == outside_sha
        );
    }
    for e in &failed {
        let message = e.to_string();
        assert!(
            message.contains("symbolic link"),
            "a call failed for another reason than the symlink: {message}"
        );
    }
    assert!(!uploaded.is_empty(), "some calls uploaded the inside file");

    // The outside bytes reached neither Moonshot nor Supabase Storage nor the staging store.
    let moonshot = stack.moonshot_sha256s();
    assert!(
        !moonshot.contains(&outside_sha),
        "Moonshot (exai-sim) received the outside file"
    );
    assert!(moonshot.contains(&inside_sha));
    assert!(
        !stack.storage_sha256s().contains(&outside_sha),
        "Supabase Storage (exai-sim) received the outside file"
    );
    let blobs = stack.staging.join("blobs");
    let outside_blob = blobs.join(&outside_sha[..2]).join(&outside_sha);
    assert!(
        !outside_blob.exists(),
        "the outside file was staged: {}",
        outside_blob.display()
    );

    // The staging store the processes created is private to their user.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let inside_blob = blobs.join(&inside_sha[..2]).join(&inside_sha);
    for d in [
        stack.staging.clone(),
        stack.staging.join("tmp"),
        blobs.clone(),
        blobs.join(&inside_sha[..2]),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(mode(&inside_blob), 0o600, "{}", inside_blob.display());
    eprintln!(
        "{} uploads of the inside file, {} refused, {} swaps",
        uploaded.len(),
        failed.len(),
        swaps.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outside_the_roots_existing_and_missing_files_get_the_same_error() {
    let stack = Stack::start("upload-probe").await;
    let existing = stack.dir.join("exists.txt");
    std::fs::write(&existing, b"a file outside the roots").unwrap();
    let probes = [
        existing.clone(),
        stack.dir.join("missing.txt"),
        stack.dir.join("nowhere/missing.txt"),
        stack.root.join("../exists.txt"),
        stack.root.join("../missing.txt"),
    ];
    let mut ws = client(stack.port).await;
    let mut errors = Vec::new();
    for (n, path) in probes.iter().enumerate() {
        match upload(&mut ws, &format!("probe-{n}"), path).await {
            Outcome::Failed(e) => {
                let text = e.to_string().replace(&path.display().to_string(), "<path>");
                errors.push(text);
            }
            Outcome::Uploaded(sha) => panic!("{} was uploaded ({sha})", path.display()),
        }
    }
    for (path, error) in probes.iter().zip(&errors) {
        assert_eq!(
            *error,
            errors[0],
            "{} is told apart from {}",
            path.display(),
            probes[0].display()
        );
    }
    assert!(
        errors[0].contains("outside the allowed upload roots"),
        "{}",
        errors[0]
    );
    // Beneath the root, a missing file may say so.
    match upload(&mut ws, "probe-inside", &stack.root.join("missing.txt")).await {
        Outcome::Failed(e) => assert!(e.to_string().contains("cannot be resolved"), "{e}"),
        Outcome::Uploaded(sha) => panic!("a missing file was uploaded ({sha})"),
    }
    assert!(stack.moonshot_sha256s().is_empty());
}
