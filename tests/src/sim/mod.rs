//! `exai-sim`: a local emulator of the Moonshot (Kimi) API and the Supabase Storage API, with
//! fault injection, for tests and demos that must not reach the real services.
//!
//! One HTTP/1.1 server serves both: Moonshot at `http://HOST:PORT/v1` (`KIMI_API_URL`) and
//! Supabase at `http://HOST:PORT` (`SUPABASE_URL`; Storage under `/storage/v1`). Every provider
//! request must carry `Authorization: Bearer <key>` (the `--key`; it is both `KIMI_API_KEY` and
//! `SUPABASE_SERVICE_ROLE_KEY`; `--moonshot-key` adds further Moonshot-only keys). Paths, JSON
//! shapes, error envelopes, status codes and limits follow `shared/reference/provider-apis.md`
//! and `provider-limits.md`; where those files mark a fact as inferred, so does
//! the emulator. State lives in memory; uploaded bytes are kept once (as `Bytes`) and never
//! copied again. Run it in process with [`Sim::start`] (or [`serve`] on a listener of your own),
//! or as the `exai-sim` binary (its first stdout line is `exai-sim listening on http://…`;
//! [`SimProcess::spawn`] reads it).
//!
//! # Moonshot routes (`/v1`)
//!
//! | route name | request | answer |
//! |---|---|---|
//! | `moonshot.files.upload` | `POST /v1/files`, multipart `file` (with a filename) + `purpose` | 200 FileObject `{id, object:"file", bytes, created_at, filename, purpose, status:"ok", status_details:""}` |
//! | `moonshot.files.list` | `GET /v1/files` (query ignored) | `{"object":"list","data":[FileObject…]}` in upload order |
//! | `moonshot.files.get` | `GET /v1/files/{id}` | FileObject, or 404 `resource_not_found_error` |
//! | `moonshot.files.content` | `GET /v1/files/{id}/content` | `{"content", "file_type", "filename", "title":"", "type":"file"}`; `content` is the bytes as (lossy) UTF-8; 400 for `image`/`video` files |
//! | `moonshot.files.delete` | `DELETE /v1/files/{id}` | `{"id", "object":"file", "deleted":true}`, or 404 |
//! | `moonshot.chat` | `POST /v1/chat/completions` | see below |
//! | `moonshot.models` | `GET /v1/models` | `{"object":"list","data":[{id, object:"model", created, owned_by}]}` |
//! | `moonshot.estimate` | `POST /v1/tokenizers/estimate-token-count` `{model, messages}` | `{"data":{"total_tokens":N}}`, the emulator's prompt estimate; counted against no limit (unconfirmed for the real one) |
//!
//! Errors are `{"error":{"type","message"}}`: missing or wrong bearer → 401
//! `invalid_authentication_error` "Invalid Authentication"; upload of 0 bytes → 400 "File size
//! is zero…"; over `max_file_bytes` (100 MiB) → 400 "File size is too large, max file size is
//! 100MB…"; with `max_files` (1,000) files already → 400 "…exceeded the max file count 1000…";
//! past `max_total_bytes` (10 GiB) → 400 "The total size of files … exceeded the max total
//! size 10GB…" (wording inferred); bad `purpose` (not `file-extract`, `image`, `video`,
//! `batch`) → 400 "Invalid purpose: …"; unknown model → 404 `resource_not_found_error` "Not
//! found the model {m} or Permission denied"; unknown file → 404 `resource_not_found_error`.
//!
//! Chat completions answer deterministically: `echo: <text of the last user message>`, then one
//! line `[file <id> <filename>: <first 200 chars>]` per uploaded file whose id or whole
//! extracted text appears in any message (so a test sees file contents reached the model).
//! The call is counted in flight from the handler's start until the answer is complete; it
//! waits `chat_latency_ms` before answering (so concurrency can build up), and streams with
//! `stream_chunk_delay_ms` between chunks. `stream: true` sends SSE `data: {chunk}` events: a
//! first chunk with `delta:{role:"assistant",content:""}`, one per word, a last one with
//! `delta:{}`, `finish_reason` and Moonshot's `usage` inside the choice, with
//! `stream_options.include_usage` one more chunk with `choices:[]` and top-level `usage`, and
//! `data: [DONE]`. `max_completion_tokens`/`max_tokens` (in words) truncate with
//! `finish_reason:"length"`. `temperature` outside `[0, 1]` or `n` > 5 → 400. With
//! `chat_max_concurrency` set (a global cap across keys), a call beyond it gets 429
//! `rate_limit_reached_error` "…request reached max organization concurrency: N, please try
//! again after 1 seconds". Usage follows Moonshot (reference §1.8): non-stream top-level
//! `usage {prompt_tokens, completion_tokens, total_tokens}`; streaming without
//! `stream_options`, inside the last chunk's `choices[0].usage` only; with
//! `stream_options.include_usage: true`, also an extra chunk with `choices: []` and top-level
//! `usage` before `[DONE]`, every other chunk carrying `usage: null` (whether the real service
//! then still puts usage in the last choice is unconfirmed; the emulator does). `cached_tokens`
//! is never sent: the emulator has no prompt cache. Prompt tokens are an **estimate** (UTF-8
//! bytes of the messages' text / 4, rounded up, at least 1); completion tokens are the answer's
//! words. Every chat answer carries `Msh-Request-Id`, `Msh-Org-Id`, `Msh-Project-Id`,
//! `Msh-Uid`, `X-Msh-Trace-Id` and, when the key has a tier, `Msh-Gid` (the tier group: the
//! preset name or `custom`; the header's meaning is inferred).
//!
//! # Account tiers (Moonshot, per key)
//!
//! Each accepted Moonshot key (`--key` and every `--moonshot-key`) is an account of its own
//! (real limits are per user/organisation and shared by its keys (documented); ids `org-<32 hex>`,
//! `proj-<32 hex>` (shape inferred), `ak-<20>` are derived from the key). Its tier is
//! `tiers[key]`, else `tier`, else none (unlimited — the default, which every existing test
//! relies on). A tier is a preset of the published table or explicit numbers (which override
//! the preset; 0 = unlimited): `"tier2"` or `{"preset"?, "concurrency"?, "rpm"?, "tpm"?, "tpd"?}`.
//!
//! | preset | concurrency | RPM | TPM | TPD |
//! |---|---|---|---|---|
//! | `tier0` | 1 | 3 | 500,000 | 1,500,000 |
//! | `tier1` | 50 | 200 | 2,000,000 | unlimited |
//! | `tier2` | 100 | 500 | 3,000,000 | unlimited |
//! | `tier3` | 200 | 5,000 | 3,000,000 | unlimited |
//! | `tier4` | 400 | 5,000 | 4,000,000 | unlimited |
//! | `tier5` | 1,000 | 10,000 | 5,000,000 | unlimited |
//! | `unlimited` | — | — | — | — |
//!
//! Admission, after the request is validated: the global `chat_max_concurrency`, then the
//! tier's concurrency (requests in flight, a stream until its end — inferred), RPM (requests
//! this minute window), TPM and TPD (tokens this window) in that order (order inferred). A
//! request costs `prompt tokens + max_completion_tokens` (or `max_tokens`, or
//! `default_max_completion_tokens` = 1024 when absent) against TPM and TPD **whatever it
//! generates**, with no refund afterwards (documented; no refund inferred). A refused request is
//! charged nothing (undocumented for Moonshot, inferred). The real windows are not documented
//! (fixed or sliding, alignment, the day's time zone): the emulator uses fixed windows that open
//! with the first request after the previous one closed, `rate_window_minute_ms` (60,000) and
//! `rate_window_day_ms` (86,400,000) long. Over a limit: HTTP 429, compact body
//! `{"error":{"message","type":"rate_limit_reached_error"}}`, no `Retry-After` and no
//! `X-RateLimit-*` (as captured), messages as captured (reference §1.5):
//!
//! - concurrency: `Your account {org}<{ak}> request reached max organization concurrency: {N}, please try again after 1 seconds`
//! - RPM: `Your account {org}<{ak}> request reached organization max RPM: {N}, please try again after 1 seconds`
//! - TPM: `Your account {org} / {proj} <{ak}> request reached organization TPM rate limit, current: {x}, limit: {y}`
//! - TPD: `Your account {org} / {proj} <{ak}> request reached organization TPD rate limit, current: {x}, limit: {y}`
//!
//! `current` includes the refused request's own cost (inferred from captures). The one captured
//! TPM message is the *project* variant with `, see https://platform.moonshot.cn/docs/pricing/limits`;
//! the organisation form is inferred from the TPD capture. `engine_overloaded_error` is not a
//! tier limit: inject it as a fault (`rate_limit` kind `overloaded`, or `fail` 429).
//!
//! The bill, `GET /_sim/usage` → `{"keys":{KEY:{tier:{group, concurrency, rpm, tpm, tpd}|null,
//! in_flight, admitted, refused:{concurrency, rpm, tpm, tpd}, reserved_tokens, billed:{requests,
//! prompt_tokens, completion_tokens, total_tokens}, by_model:{MODEL:{requests, prompt_tokens,
//! completion_tokens, total_tokens}}, minute:{requests, tokens, remaining_ms}, day:{…}}}}`:
//! billed = prompt + completion tokens actually sent (a stream the client leaves early is billed
//! for the chunks sent — inferred), what a client's own accounting should equal;
//! `reserved_tokens` is what admission counted. `POST /_sim/reset` clears it.
//!
//! # Supabase Storage routes (`/storage/v1`)
//!
//! | route name | request | answer |
//! |---|---|---|
//! | `supabase.object.upload` | `POST /storage/v1/object/{bucket}/{path…}` | `{"Id", "Key":"bucket/path"}`; existing key without `x-upsert: true` → Duplicate |
//! | `supabase.object.update` | `PUT` the same path | the same; always upserts (current server) |
//! | `supabase.object.download` | `GET`/`HEAD /storage/v1/object/{bucket}/{path}` or `/object/authenticated/{bucket}/{path}` | the bytes with `Content-Type`, `Content-Length`, `Cache-Control`, `ETag`, `Last-Modified`, `Accept-Ranges`; `?download[=name]` adds `Content-Disposition` |
//! | `supabase.object.public` | `GET /storage/v1/object/public/{bucket}/{path}` | the same without a JWT, public buckets only |
//! | `supabase.object.info` | `GET /storage/v1/object/info[/authenticated]/{bucket}/{path}` | `{id, name, version, bucket_id, size, content_type, cache_control, etag, metadata, last_modified, created_at}` |
//! | `supabase.object.delete` | `DELETE /storage/v1/object/{bucket}/{path}` | `{"message":"Successfully deleted"}` |
//! | `supabase.object.delete_many` | `DELETE /storage/v1/object/{bucket}` `{"prefixes":[names]}` | array of the deleted object rows; missing names (or bucket) skipped |
//! | `supabase.object.list` | `POST /storage/v1/object/list/{bucket}` `{prefix, limit, offset, sortBy:{column, order}, search}` | one directory level under `prefix/`, names relative, folders as null-filled rows |
//! | `supabase.bucket.create` | `POST /storage/v1/bucket` `{name, id?, public?, file_size_limit?, allowed_mime_types?}` | `{"name"}` |
//! | `supabase.bucket.list` | `GET /storage/v1/bucket` | array of buckets |
//! | `supabase.bucket.get` | `GET /storage/v1/bucket/{id}` | `{id, name, owner, public, type, file_size_limit, allowed_mime_types, created_at, updated_at}` |
//! | `supabase.bucket.update` | `PUT /storage/v1/bucket/{id}` | `{"message":"Successfully updated"}` |
//! | `supabase.bucket.delete` | `DELETE /storage/v1/bucket/{id}` | `{"message":"Successfully deleted"}`; non-empty → 409 ResourceNotEmpty |
//! | `supabase.bucket.empty` | `POST /storage/v1/bucket/{id}/empty` | the "queued" message (emptied at once) |
//!
//! Upload bodies are raw (the file is the body; content type from `Content-Type`, cache from
//! `Cache-Control`, user metadata from base64 `x-metadata`) or multipart (the first part with a
//! filename is the file, its part content type is stored unless a `contentType` field is sent;
//! `cacheControl` field `N` is stored as `max-age=N`; `metadata` field is the user metadata).
//! The size limit is the smaller of the bucket's `file_size_limit` and `storage_max_bytes`
//! (500 MiB); a raw body's `Content-Length` over it is refused before reading.
//!
//! Handled errors use the Storage envelope `{"statusCode":"<code>","error","code","message"}`
//! with **HTTP 400** (HTTP 500 only for 500): missing object "404" `not_found`/`NoSuchKey`;
//! missing bucket "404" `Bucket not found`/`NoSuchBucket`; duplicate "409"
//! `Duplicate`/`KeyAlreadyExists` (`BucketAlreadyExists` for buckets); too large "413"
//! `Payload too large`/`EntityTooLarge`; mime type not allowed "415"; bad key "400"
//! `InvalidKey`; bad bucket name "400" `InvalidBucketName`; bad body "400" `InvalidRequest`;
//! missing or wrong bearer "403" `Unauthorized`/`AccessDenied` with jose's message ("Invalid
//! Compact JWS", or "signature verification failed" for a JWT-shaped token). With
//! `--require-apikey`, a missing or wrong `apikey` header gets the gateway's HTTP 401
//! `{"message":"No API key found in request"}` (or "Invalid API key").
//!
//! # Control API (`/_sim/`, no credentials, never recorded, delayed or failed)
//!
//! | request | effect |
//! |---|---|
//! | `GET /_sim/health` | `{"ok":true}` |
//! | `POST /_sim/reset` | back to the start: no files, the `--bucket`s empty, no records, no rules, up, tunables as started, chat peaks = current in-flight, bills and windows forgotten |
//! | `GET /_sim/requests[?route=glob&since=seq]` | records, oldest first (last 10,000): `{seq, time_ms, method, path, query, route, status, outcome, fault, delay_ms, request_bytes, duration_ms, detail}`; `status` is null when dropped; `outcome` is `ok`, `auth`, `fault`, `dropped` or `down`; `detail` holds the upload's file id / object key, or the chat request body |
//! | `DELETE /_sim/requests` | forgets the records |
//! | `GET /_sim/state` | `{moonshot:{files:[{id, filename, purpose, bytes, sha256, created_at}], file_count, total_bytes}, supabase:{buckets:{id:{public, file_size_limit, objects:{name:{size, sha256, content_type, cache_control}}}}}, chat:{in_flight, peak, in_flight_by_model, peak_by_model, completed, rejected}, down, faults}` |
//! | `GET`/`POST /_sim/config` | reads / patches the tunables: `max_files`, `max_file_bytes`, `max_total_bytes`, `storage_max_bytes`, `chat_latency_ms`, `stream_chunk_delay_ms`, `chat_max_concurrency` (0 = none), `models`, `tier` (the default tier; `"unlimited"` lifts it), `tiers` (`{KEY: tier}` merged per key, `null` removes a key's own), `default_max_completion_tokens`, `rate_window_minute_ms`, `rate_window_day_ms`; takes effect on the next request; an unknown preset → 400 |
//! | `GET /_sim/usage` | the per-key bill (see Account tiers) |
//! | `POST /_sim/faults` | adds a rule (or an array of rules): `{"route"?, "method"?, "path"?, "count"?, "action", …}` → `{"id"}` |
//! | `GET`/`DELETE /_sim/faults`, `DELETE /_sim/faults/{id}` | lists / removes rules |
//! | `POST /_sim/down` `{"mode"?, "status"?, "for_ms"?}` | goes down (see below) |
//! | `POST /_sim/up` | comes back |
//! | `POST /_sim/backdate` `{"age_secs", "files"?: [ids], "objects"?: ["bucket/name"]}` | sets those files' `created_at` (and those objects' `created_at`/`updated_at`) to now − `age_secs`, so tests can seed old items; an unknown one → 404, nothing changed |
//!
//! # Fault semantics
//!
//! A provider request passes, in order: the down switch, the fault rules, the bearer check, the
//! handler. A rule matches on `route` (a route name above, a glob such as `supabase.*`, or
//! absent for all), `method` and `path` (a glob, `*` matching anything, on the raw path); it
//! applies to the next `count` matching requests, or to all while it exists. All matching
//! `delay` rules add up; then the first matching terminal rule applies. Actions:
//!
//! - `{"action":"fail","status":S}` — the request body is read and discarded, then the
//!   provider's error for S. Moonshot: HTTP S with the type of its table (400
//!   `invalid_request_error`, 401 `invalid_authentication_error`, 403
//!   `permission_denied_error`, 404 `resource_not_found_error`, 429 `engine_overloaded_error`,
//!   503 `server_unavailable`, else `server_error`). Supabase: 502/503/504 are the gateway's
//!   (HTTP S, `{"message"}`), 429 is HTTP 429 `too_many_connections`, 500 is HTTP 500
//!   `InternalError`, every other S is HTTP 400 with `statusCode` S (403 `AccessDenied`, 404
//!   `NoSuchKey`, 409 `Duplicate`, 413 `EntityTooLarge`, …). Optional `error_type`,
//!   `message`, `http_status` (force the HTTP status) and `retry_after_secs` (a header).
//! - `{"action":"delay","delay_ms":N}` — latency before anything else (use no `count` and
//!   `route` absent for a global latency).
//! - `{"action":"drop"}` — the connection is closed without a response, before the body is read.
//! - `{"action":"rate_limit","kind"?,"retry_after_secs"?,"retry_after_header"?}` — Moonshot 429
//!   `rate_limit_reached_error` "Your account … request reached organization max RPM: 3, please
//!   try again after {retry_after_secs} seconds" with fixed numbers, not counted by any tier
//!   (`kind`: `rpm`, `concurrency`, `tpm`, `tpd`,
//!   `overloaded` → `engine_overloaded_error`, `quota` → `exceeded_current_quota_error`); no
//!   `Retry-After` header unless asked, as on the real service. Supabase: HTTP 429.
//!
//! Down modes: `close` (default) closes every open connection (except the control request's
//! own) and then closes each provider request's connection without a response; `status` answers
//! every provider request with the `fail` error for `status` (503 by default); `refuse` closes
//! the listening socket too, so connections are refused — the control API goes with it, so pass
//! `for_ms` (it comes back by itself) or use [`Sim::up`] in process. `for_ms` works for every mode.

mod body;
pub mod config;
mod control;
mod errors;
pub mod faults;
mod moonshot;
mod server;
pub mod state;
mod supabase;
pub mod tiers;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponseParts, ResponseParts};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{SimConfig, Tunables};
pub use server::classify;

use state::{Shared, lock};

/// Route-specific facts a handler attaches to its response for the request record.
#[derive(Debug, Clone)]
pub(crate) struct Detail(pub serde_json::Value);

impl IntoResponseParts for Detail {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

/// Serves the emulator on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    server::run(listener, Arc::new(Shared::new(config)), shutdown).await
}

/// An emulator running in this process on a loopback port; stopped when dropped.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl Sim {
    /// Starts an emulator on `127.0.0.1:0`.
    pub async fn start(config: SimConfig) -> io::Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, config)
    }

    /// Starts an emulator on `listener`.
    pub fn start_on(listener: TcpListener, config: SimConfig) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server::run(
            listener,
            shared.clone(),
            stop.clone().cancelled_owned(),
        ));
        Ok(Self {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the `SUPABASE_URL`, and the base of the control API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: the `KIMI_API_URL`.
    pub fn moonshot_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// The bearer key it requires.
    pub fn key(&self) -> &str {
        &self.shared.config.key
    }

    /// The state `GET /_sim/state` returns.
    pub fn state(&self) -> serde_json::Value {
        control::snapshot(&self.shared)
    }

    /// The bill `GET /_sim/usage` returns.
    pub fn usage(&self) -> serde_json::Value {
        control::usage_view(&self.shared)
    }

    /// The request records, oldest first.
    pub fn requests(&self) -> Vec<state::Record> {
        lock(&self.shared.records).iter().cloned().collect()
    }

    /// Installs a fault rule, given as `POST /_sim/faults` takes it; returns its id.
    pub fn add_fault(&self, rule: serde_json::Value) -> Result<u64, serde_json::Error> {
        let spec: faults::RuleSpec = serde_json::from_value(rule)?;
        Ok(lock(&self.shared.faults).add(spec))
    }

    /// Makes Moonshot files (by id) and Supabase objects (`bucket/name`) `age` old, as
    /// `POST /_sim/backdate` does; returns how many changed, or names the first that is missing
    /// (then nothing changed).
    pub fn backdate(
        &self,
        age: Duration,
        files: &[&str],
        objects: &[&str],
    ) -> Result<usize, String> {
        let request = control::BackdateRequest {
            age_secs: age.as_secs(),
            files: files.iter().map(|s| (*s).to_owned()).collect(),
            objects: objects.iter().map(|s| (*s).to_owned()).collect(),
        };
        control::apply_backdate(&self.shared, &request)
    }

    /// Patches the tunables, as `POST /_sim/config` does.
    pub fn configure(&self, patch: serde_json::Value) -> Result<(), serde_json::Error> {
        let patch: config::TunablesPatch = serde_json::from_value(patch)?;
        patch.apply(
            &mut self
                .shared
                .tunables
                .write()
                .unwrap_or_else(|e| e.into_inner()),
        );
        Ok(())
    }

    /// Starts an outage, as `POST /_sim/down` does (every open connection is closed unless
    /// `mode` is `Status`).
    pub fn down(&self, mode: faults::DownMode, status: u16, duration: Option<Duration>) {
        lock(&self.shared.faults).set_down(faults::Down {
            mode,
            status,
            until: duration.map(|d| std::time::Instant::now() + d),
        });
        if mode != faults::DownMode::Status {
            lock(&self.shared.conns).kill_all_but(0);
        }
        self.shared.down_changed.send_modify(|v| *v += 1);
    }

    /// Ends an outage (the way back from `refuse` mode without `for_ms`).
    pub fn up(&self) {
        lock(&self.shared.faults).set_up();
        self.shared.down_changed.send_modify(|v| *v += 1);
    }

    /// Stops the server and waits for its accept loop to end.
    pub async fn stop(mut self) -> io::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The `exai-sim` binary running as a child process; killed when dropped.
pub struct SimProcess {
    /// The child (SIGKILLed on drop).
    pub child: crate::ChildGuard,
    /// `http://127.0.0.1:PORT`, read from its first stdout line.
    pub url: String,
}

impl SimProcess {
    /// Spawns `exai-sim --port 0 --key <key> <extra…>` with a clean environment and waits
    /// (up to 10 s) for the line announcing its address.
    pub async fn spawn(key: &str, extra: &[&str]) -> io::Result<Self> {
        let mut cmd = tokio::process::Command::new(crate::bin_path("exai-sim"));
        cmd.args(["--port", "0", "--key", key])
            .args(extra)
            .env_clear()
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        for var in ["PATH", "HOME", "RUST_LOG"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        if std::env::var_os("TEST_LOG").is_some() {
            cmd.stderr(std::process::Stdio::inherit());
        } else {
            cmd.stderr(std::process::Stdio::null());
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let child = crate::ChildGuard(child);
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "exai-sim did not start"))??
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "exai-sim exited"))?;
        let url = line
            .strip_prefix("exai-sim listening on ")
            .ok_or_else(|| io::Error::other(format!("unexpected first line: {line}")))?
            .trim()
            .to_owned();
        Ok(Self { child, url })
    }

    /// `{url}/v1`.
    pub fn moonshot_url(&self) -> String {
        format!("{}/v1", self.url)
    }
}
