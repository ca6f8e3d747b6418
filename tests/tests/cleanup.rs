//! The orphan cleanup against exai-sim (Moonshot + Supabase Storage), a real Postgres, real
//! Redis and a real staging directory: what must go goes, what a row or a pending job still
//! holds and what is younger than the grace period stays; a dry run reports exactly what the
//! real run then removes; quota eviction is least recently used first; a sweep that fails
//! half-way is finished by the next run; three worker processes on a one-second schedule run
//! each tick once; the CLI prints a table or JSON.
//!
//! Old items are seeded by back-dating: the sim's `backdate` control, SQL on the rows, file
//! modification times in the staging store.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use exai_shared::cleanup_report::{self, CleanupReport, CleanupSweepReport};
use exai_shared::db::{self, FileUpload, NewUpload, UploadStatus};
use exai_shared::jobs::{CleanupJob, UploadJob};
use exai_shared::providers::supabase::kimi_object_path;
use exai_shared::providers::{FileObject, Providers, SupabaseStorage};
use exai_shared::queue::{self, JobState, NewJob};
use exai_shared::staging::Staging;
use exai_tests::uploads::sha256;
use exai_tests::{ChildGuard, TestStack, send_signal, wait_until};
use exai_worker::cleanup::{self, Cleanup};
use serde_json::{Value, json};

/// The grace period of these tests.
const GRACE: Duration = Duration::from_secs(3600);
/// Old enough to be removed.
const OLD: Duration = Duration::from_secs(2 * 3600);
/// Past the default retention (30 days).
const EXPIRED: Duration = Duration::from_secs(40 * 86_400);
/// Storage bucket the stack's workers use.
const BUCKET: &str = "user-files";

/// The stack plus direct handles to seed items with.
struct Seeder {
    stack: TestStack,
    providers: Providers,
    staging: Staging,
    seq: u32,
}

impl Seeder {
    async fn new(test: &str, extra: &[(&str, &str)]) -> Self {
        let grace = GRACE.as_secs().to_string();
        let mut env = vec![("EXAI_ORPHAN_GRACE_SECS", grace.as_str())];
        env.extend_from_slice(extra);
        let stack = TestStack::uploads(test, &env).await;
        let config = stack.config();
        let providers = Providers::from_config(&config).unwrap();
        providers
            .supabase
            .as_ref()
            .unwrap()
            .ensure_bucket()
            .await
            .unwrap();
        Self {
            staging: Staging::from_config(&config.uploads),
            stack,
            providers,
            seq: 0,
        }
    }

    fn storage(&self) -> &SupabaseStorage {
        self.providers.supabase.as_ref().unwrap()
    }

    /// Distinct content for `name`, `len` bytes long (at least the name).
    fn content(&mut self, name: &str, len: usize) -> Vec<u8> {
        self.seq += 1;
        let mut data = format!("{name}-{}-", self.seq).into_bytes();
        data.resize(len.max(data.len()), b'x');
        data
    }

    fn disk_file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.stack.dir().join(format!("seed-{name}"));
        std::fs::write(&path, data).unwrap();
        path
    }

    /// A file on the sim's Moonshot, `age` old.
    async fn moonshot_file(&self, name: &str, data: &[u8], age: Option<Duration>) -> FileObject {
        let path = self.disk_file(name, data);
        let file = self
            .providers
            .moonshot
            .upload_file(&path, name, data.len() as u64, "file-extract", None)
            .await
            .unwrap();
        if let Some(age) = age {
            self.stack.sim().backdate(age, &[&file.id], &[]).unwrap();
        }
        file
    }

    /// An object in the bucket, `age` old.
    async fn object(&self, path: &str, data: &[u8], age: Option<Duration>) {
        let disk = self.disk_file(&path.replace('/', "_"), data);
        self.storage()
            .upload_file(path, &disk, data.len() as u64, "text/plain")
            .await
            .unwrap();
        if let Some(age) = age {
            self.stack
                .sim()
                .backdate(age, &[], &[&format!("{BUCKET}/{path}")])
                .unwrap();
        }
    }

    /// A staged blob, `age` old; returns its sha256.
    async fn blob(&self, data: &[u8], age: Option<Duration>) -> String {
        let blob = self
            .staging
            .stage_bytes("seed", data.to_vec().into())
            .await
            .unwrap();
        if let Some(age) = age {
            set_mtime(&blob.path, age);
        }
        blob.sha256
    }

    fn blob_exists(&self, sha256: &str) -> bool {
        self.staging.blob_path(sha256).unwrap().exists()
    }

    /// A row for `file_id` holding `data`, in `status` (`completed` ones linked to their
    /// object), created `age` ago and last used `used` ago.
    async fn row(
        &self,
        file_id: &str,
        data: &[u8],
        status: UploadStatus,
        age: Duration,
        used: Duration,
    ) -> FileUpload {
        let pool = self.stack.pool();
        let new = NewUpload {
            provider: "kimi".to_owned(),
            provider_file_id: file_id.to_owned(),
            sha256: sha256(data),
            filename: format!("{file_id}.txt"),
            file_size_bytes: data.len() as i64,
            mime_type: Some("text/plain".to_owned()),
            purpose: "file-extract".to_owned(),
            status: if status == UploadStatus::Completed {
                UploadStatus::Completed
            } else {
                UploadStatus::StoragePending
            },
            reference: format!("seed-{file_id}"),
        };
        let row = db::insert_or_get(pool, &new).await.unwrap().row;
        match status {
            UploadStatus::Completed => {
                let path = kimi_object_path(file_id);
                db::mark_completed(pool, row.id, &path, &path)
                    .await
                    .unwrap();
            }
            UploadStatus::StorageFailed => {
                db::mark_storage_failed(pool, row.id, "seeded")
                    .await
                    .unwrap();
            }
            UploadStatus::Deleted => {
                db::mark_deleted(pool, row.id, "seeded").await.unwrap();
            }
            _ => {}
        }
        self.age_row(row.id, age, used).await;
        db::find_by_id(pool, row.id).await.unwrap().unwrap()
    }

    /// A row as the original daemon wrote it after its storage fix (the seed's insert: no
    /// `storage_path`, `supabase_file_id` naming its Supabase `files` row), created and last
    /// used `age` ago.
    async fn original_row(&self, file_id: &str, data: &[u8], age: Duration) -> FileUpload {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO provider_file_uploads (provider, provider_file_id, supabase_file_id, \
             sha256, filename, file_size_bytes, upload_status) \
             VALUES ('kimi', $1, $2, $3, $4, $5, 'completed') RETURNING id",
        )
        .bind(file_id)
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(sha256(data))
        .bind(format!("{file_id}.txt"))
        .bind(data.len() as i64)
        .fetch_one(self.stack.pool())
        .await
        .unwrap();
        self.age_row(id, age, age).await;
        let row = db::find_by_id(self.stack.pool(), id)
            .await
            .unwrap()
            .unwrap();
        assert!(row.storage_path.is_none() && row.supabase_file_id.is_some());
        row
    }

    async fn age_row(&self, id: uuid::Uuid, age: Duration, used: Duration) {
        sqlx::query(
            "UPDATE provider_file_uploads SET created_at = now() - make_interval(secs => $2), \
             last_used = now() - make_interval(secs => $3) WHERE id = $1",
        )
        .bind(id)
        .bind(age.as_secs_f64())
        .bind(used.as_secs_f64())
        .execute(self.stack.pool())
        .await
        .unwrap();
    }

    async fn status(&self, id: uuid::Uuid) -> UploadStatus {
        db::find_by_id(self.stack.pool(), id)
            .await
            .unwrap()
            .unwrap()
            .status
    }

    fn moonshot_ids(&self) -> HashSet<String> {
        self.stack
            .moonshot_files()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn has_object(&self, path: &str) -> bool {
        self.stack.object(path).is_some()
    }

    async fn cleanup_ctx(&self) -> Cleanup {
        Cleanup::connect(&self.stack.config()).await.unwrap()
    }
}

fn set_mtime(path: &std::path::Path, age: Duration) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

fn sweep(found: u64, bytes: u64) -> CleanupSweepReport {
    CleanupSweepReport {
        found,
        removed: found,
        bytes,
        ..CleanupSweepReport::default()
    }
}

fn assert_nothing_found(report: &CleanupReport) {
    for (name, s) in report.sweeps.iter() {
        assert_eq!(s, &CleanupSweepReport::default(), "{name}: {report:#?}");
    }
}

#[tokio::test]
async fn orphans_go_what_is_held_or_young_stays_and_a_dry_run_reports_the_real_run() {
    let mut s = Seeder::new("cleanup-survival", &[]).await;

    // A completed row, used an hour and a half ago: its file and object stay; its blob is no
    // longer needed (the row is finished) and goes.
    let kept = s.content("kept", 100);
    let kept_file = s.moonshot_file("kept", &kept, Some(OLD)).await;
    s.object(&kimi_object_path(&kept_file.id), &kept, Some(OLD))
        .await;
    let kept_blob = s.blob(&kept, Some(OLD)).await;
    let kept_row = s
        .row(&kept_file.id, &kept, UploadStatus::Completed, OLD, OLD)
        .await;

    // An unfinished row (storage_pending): file and blob stay.
    let pending = s.content("pending", 110);
    let pending_file = s.moonshot_file("pending", &pending, Some(OLD)).await;
    let pending_blob = s.blob(&pending, Some(OLD)).await;
    let pending_row = s
        .row(
            &pending_file.id,
            &pending,
            UploadStatus::StoragePending,
            OLD,
            OLD,
        )
        .await;

    // A row whose push gave up (storage_failed): a re-drive pushes from staging, so file and
    // blob stay.
    let failed = s.content("failed-push", 115);
    let failed_file = s.moonshot_file("failed-push", &failed, Some(OLD)).await;
    let failed_blob = s.blob(&failed, Some(OLD)).await;
    let failed_row = s
        .row(
            &failed_file.id,
            &failed,
            UploadStatus::StorageFailed,
            OLD,
            OLD,
        )
        .await;

    // A row of the original system (no sha256): its file stays.
    let legacy = s.content("legacy", 120);
    let legacy_file = s.moonshot_file("legacy", &legacy, Some(OLD)).await;
    let legacy_row = s
        .row(&legacy_file.id, &legacy, UploadStatus::Completed, OLD, OLD)
        .await;
    sqlx::query("UPDATE provider_file_uploads SET sha256 = NULL WHERE id = $1")
        .bind(legacy_row.id)
        .execute(s.stack.pool())
        .await
        .unwrap();

    // An old blob a queued uploads job refers to: stays.
    let queued = s.content("queued", 130);
    let queued_blob = s.blob(&queued, Some(OLD)).await;
    let job = UploadJob {
        sha256: queued_blob.clone(),
        filename: "queued.txt".to_owned(),
        size_bytes: queued.len() as u64,
        purpose: "file-extract".to_owned(),
        provider: "kimi".to_owned(),
        mime_type: None,
    };
    s.stack
        .queue(queue::UPLOADS)
        .enqueue(&NewJob::json(&job).unwrap())
        .await
        .unwrap();

    // Orphans, old: go.
    let orphan = s.content("orphan", 140);
    let orphan_file = s.moonshot_file("orphan", &orphan, Some(OLD)).await;
    let orphan_object = "kimi-uploads/no-such-file";
    s.object(orphan_object, &orphan, Some(OLD)).await;
    let orphan_blob = s.blob(&orphan, Some(OLD)).await;
    let part = s.staging.dir().join("tmp").join("crashed.part");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, b"half a blob").unwrap();
    set_mtime(&part, OLD);

    // A deleted row's file: an orphan, goes.
    let dead = s.content("dead", 150);
    let dead_file = s.moonshot_file("dead", &dead, Some(OLD)).await;
    s.row(&dead_file.id, &dead, UploadStatus::Deleted, OLD, OLD)
        .await;

    // Orphans, young: stay.
    let young = s.content("young", 160);
    let young_file = s.moonshot_file("young", &young, None).await;
    let young_object = "kimi-uploads/young-object";
    s.object(young_object, &young, None).await;
    let young_blob = s.blob(&young, None).await;

    // Outside kimi-uploads/: never touched.
    let other_object = "avatars/someone.png";
    s.object(other_object, &young, Some(OLD)).await;

    // A row whose Moonshot file is gone: marked deleted. A young one: kept.
    let missing = s.content("missing", 170);
    let missing_row = s
        .row("gone-file-1", &missing, UploadStatus::Completed, OLD, OLD)
        .await;
    let missing_young = s.content("missing-young", 180);
    let missing_young_row = s
        .row(
            "gone-file-2",
            &missing_young,
            UploadStatus::Completed,
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await;

    // A row unused for 40 days: its file and object go, the row is marked deleted.
    let expired = s.content("expired", 190);
    let expired_file = s.moonshot_file("expired", &expired, Some(EXPIRED)).await;
    let expired_path = kimi_object_path(&expired_file.id);
    s.object(&expired_path, &expired, Some(EXPIRED)).await;
    let expired_row = s
        .row(
            &expired_file.id,
            &expired,
            UploadStatus::Completed,
            EXPIRED,
            EXPIRED,
        )
        .await;

    let ctx = s.cleanup_ctx().await;
    let files_before = s.moonshot_ids();
    let state_before = s.stack.sim().state()["supabase"].clone();

    let dry = cleanup::run(&ctx, true).await;
    assert!(dry.dry_run);
    assert!(dry.is_ok(), "{dry:#?}");
    let sw = &dry.sweeps;
    assert_eq!(sw.rows_missing_file, sweep(1, 170), "{dry:#?}");
    assert_eq!(sw.rows_expired, sweep(1, 190), "{dry:#?}");
    assert_eq!(sw.quota, CleanupSweepReport::default());
    assert_eq!(sw.moonshot_orphans, sweep(2, 140 + 150), "{dry:#?}");
    assert_eq!(sw.supabase_orphans, sweep(1, 140), "{dry:#?}");
    // The completed row's blob, the orphan blob, the partial write.
    assert_eq!(
        sw.staging_orphans,
        sweep(3, 100 + 140 + "half a blob".len() as u64),
        "{dry:#?}"
    );
    // A dry run changes nothing.
    assert_eq!(s.moonshot_ids(), files_before);
    assert_eq!(s.stack.sim().state()["supabase"], state_before);
    assert!(s.blob_exists(&orphan_blob) && part.exists());
    assert_eq!(s.status(missing_row.id).await, UploadStatus::Completed);
    assert_eq!(s.status(expired_row.id).await, UploadStatus::Completed);

    let real = cleanup::run(&ctx, false).await;
    assert!(!real.dry_run);
    assert_eq!(real.sweeps, dry.sweeps, "the dry run reported the real run");

    let files = s.moonshot_ids();
    for kept in [
        &kept_file.id,
        &pending_file.id,
        &legacy_file.id,
        &young_file.id,
    ] {
        assert!(files.contains(kept), "{kept} was kept");
    }
    for gone in [&orphan_file.id, &dead_file.id, &expired_file.id] {
        assert!(!files.contains(gone), "{gone} was removed");
    }
    assert!(s.has_object(&kimi_object_path(&kept_file.id)));
    assert!(s.has_object(young_object));
    assert!(s.has_object(other_object));
    assert!(!s.has_object(orphan_object));
    assert!(!s.has_object(&expired_path));
    assert!(s.blob_exists(&pending_blob));
    assert!(s.blob_exists(&failed_blob));
    assert!(files.contains(&failed_file.id));
    assert_eq!(s.status(failed_row.id).await, UploadStatus::StorageFailed);
    assert!(s.blob_exists(&queued_blob));
    assert!(s.blob_exists(&young_blob));
    assert!(!s.blob_exists(&kept_blob));
    assert!(!s.blob_exists(&orphan_blob));
    assert!(!part.exists());
    assert_eq!(s.status(kept_row.id).await, UploadStatus::Completed);
    assert_eq!(s.status(pending_row.id).await, UploadStatus::StoragePending);
    assert_eq!(s.status(legacy_row.id).await, UploadStatus::Completed);
    assert_eq!(
        s.status(missing_young_row.id).await,
        UploadStatus::Completed
    );
    let missing_after = db::find_by_id(s.stack.pool(), missing_row.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(missing_after.status, UploadStatus::Deleted);
    assert!(missing_after.deleted_at.is_some());
    let expired_after = db::find_by_id(s.stack.pool(), expired_row.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expired_after.status, UploadStatus::Deleted);
    assert!(expired_after.deleted_at.is_some());

    // Nothing is left to do.
    let again = cleanup::run(&ctx, false).await;
    assert_nothing_found(&again);
    s.stack.cleanup().await;
}

#[tokio::test]
async fn quota_evicts_least_recently_used_completed_files_until_under() {
    let mut s = Seeder::new("cleanup-quota", &[("EXAI_STORAGE_QUOTA_BYTES", "250")]).await;
    let mut rows = Vec::new();
    // Last used 2, 5, 3, 4 hours ago, plus one used a minute ago (inside the grace period).
    for (name, hours) in [("a", 2u64), ("b", 5), ("c", 3), ("d", 4)] {
        let data = s.content(name, 100);
        let file = s.moonshot_file(name, &data, Some(OLD * 3)).await;
        s.object(&kimi_object_path(&file.id), &data, Some(OLD * 3))
            .await;
        let row = s
            .row(
                &file.id,
                &data,
                UploadStatus::Completed,
                OLD * 3,
                Duration::from_secs(hours * 3600),
            )
            .await;
        rows.push((name, row));
    }
    let recent = s.content("recent", 100);
    let recent_file = s.moonshot_file("recent", &recent, Some(OLD * 3)).await;
    let recent_row = s
        .row(
            &recent_file.id,
            &recent,
            UploadStatus::Completed,
            OLD * 3,
            Duration::from_secs(60),
        )
        .await;
    let ctx = s.cleanup_ctx().await;

    let dry = cleanup::run(&ctx, true).await;
    // 500 bytes held, 250 allowed: b (5 h), d (4 h) and c (3 h) go, leaving 200.
    assert_eq!(dry.sweeps.quota, sweep(3, 300), "{dry:#?}");
    let since = s.stack.sim().requests().len();
    let real = cleanup::run(&ctx, false).await;
    assert_eq!(real.sweeps, dry.sweeps);

    let deleted: Vec<String> = s.stack.sim().requests()[since..]
        .iter()
        .filter(|r| r.route == "moonshot.files.delete")
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    let by_name = |n: &str| rows.iter().find(|(name, _)| *name == n).unwrap().1.clone();
    let order: Vec<String> = ["b", "d", "c"]
        .iter()
        .map(|n| by_name(n).provider_file_id)
        .collect();
    assert_eq!(deleted, order, "evicted least recently used first");
    for (name, row) in &rows {
        let want = if *name == "a" {
            UploadStatus::Completed
        } else {
            UploadStatus::Deleted
        };
        assert_eq!(s.status(row.id).await, want, "row {name}");
        assert_eq!(
            s.has_object(&kimi_object_path(&row.provider_file_id)),
            *name == "a",
            "object of {name}"
        );
    }
    assert_eq!(s.status(recent_row.id).await, UploadStatus::Completed);
    assert!(s.moonshot_ids().contains(&recent_file.id));

    let again = cleanup::run(&ctx, false).await;
    assert_nothing_found(&again);
    s.stack.cleanup().await;
}

#[tokio::test]
async fn a_sweep_failing_half_way_is_finished_by_the_next_run_and_spares_the_others() {
    let mut s = Seeder::new("cleanup-halfway", &[]).await;
    let mut orphans = Vec::new();
    for name in ["o1", "o2", "o3"] {
        let data = s.content(name, 50);
        orphans.push(s.moonshot_file(name, &data, Some(OLD)).await);
    }
    let orphan_object = "kimi-uploads/orphan-object";
    let data = s.content("object", 60);
    s.object(orphan_object, &data, Some(OLD)).await;
    let expired = s.content("expired", 70);
    let expired_file = s.moonshot_file("expired", &expired, Some(EXPIRED)).await;
    let expired_path = kimi_object_path(&expired_file.id);
    s.object(&expired_path, &expired, Some(EXPIRED)).await;
    let expired_row = s
        .row(
            &expired_file.id,
            &expired,
            UploadStatus::Completed,
            EXPIRED,
            EXPIRED,
        )
        .await;

    // The second orphan's delete fails once; so does the expired row's object delete; the
    // bucket cannot be listed once.
    let sim = &s.stack.sim();
    sim.add_fault(json!({"route": "moonshot.files.delete", "method": "DELETE",
        "path": format!("/v1/files/{}", orphans[1].id), "count": 1,
        "action": "fail", "status": 500}))
        .unwrap();
    sim.add_fault(
        json!({"route": "supabase.object.delete", "method": "DELETE",
        "path": format!("/storage/v1/object/{BUCKET}/{expired_path}"), "count": 1,
        "action": "fail", "status": 500}),
    )
    .unwrap();
    sim.add_fault(json!({"route": "supabase.object.list", "count": 1,
        "action": "fail", "status": 500}))
        .unwrap();

    let ctx = s.cleanup_ctx().await;
    let first = cleanup::run(&ctx, false).await;
    assert!(!first.is_ok());
    let m = &first.sweeps.moonshot_orphans;
    assert_eq!((m.found, m.removed, m.bytes), (3, 2, 100), "{first:#?}");
    assert_eq!(m.errors.len(), 1, "{first:#?}");
    assert!(m.errors[0].contains(&orphans[1].id), "{first:#?}");
    let sb = &first.sweeps.supabase_orphans;
    assert_eq!(
        (sb.found, sb.removed, sb.errors.len()),
        (0, 0, 1),
        "{first:#?}"
    );
    let ex = &first.sweeps.rows_expired;
    assert_eq!(
        (ex.found, ex.removed, ex.errors.len()),
        (1, 0, 1),
        "{first:#?}"
    );
    // The row went first; what is left of it is an orphan now.
    assert_eq!(s.status(expired_row.id).await, UploadStatus::Deleted);
    assert!(!s.moonshot_ids().contains(&expired_file.id));
    assert!(s.has_object(&expired_path));
    assert!(s.moonshot_ids().contains(&orphans[1].id));

    let second = cleanup::run(&ctx, false).await;
    assert!(second.is_ok(), "{second:#?}");
    assert_eq!(second.sweeps.moonshot_orphans, sweep(1, 50), "{second:#?}");
    assert_eq!(
        second.sweeps.supabase_orphans,
        sweep(2, 60 + 70),
        "{second:#?}"
    );
    assert_eq!(second.sweeps.rows_expired, CleanupSweepReport::default());
    assert!(s.moonshot_ids().is_empty());
    assert!(!s.has_object(&expired_path) && !s.has_object(orphan_object));

    assert_nothing_found(&cleanup::run(&ctx, false).await);
    s.stack.cleanup().await;
}

#[tokio::test]
async fn three_workers_on_a_one_second_schedule_run_each_tick_once() {
    let s = Seeder::new("cleanup-cron", &[("EXAI_CLEANUP_CRON", "* * * * * *")]).await;
    let workers: Vec<ChildGuard> = (0..3)
        .map(|_| s.stack.spawn_worker(&["--queues", "cleanup"]))
        .collect();
    let redis = s.stack.conn.clone();
    let keys = s.stack.keys.clone();
    let ran = wait_until(Duration::from_secs(60), || async {
        cleanup_report::history(&redis, &keys, 100)
            .await
            .unwrap()
            .len()
            >= 5
    })
    .await;
    assert!(ran, "five ticks ran");
    for w in &workers {
        send_signal(w.pid(), "TERM");
    }
    for mut w in workers {
        assert!(w.wait_exit(Duration::from_secs(30)).await.is_some());
    }

    let history = cleanup_report::history(&redis, &keys, 100).await.unwrap();
    let mut ticks = HashSet::new();
    for stored in &history {
        assert!(stored.tick > 0, "a cron run: {stored:?}");
        assert!(ticks.insert(stored.tick), "tick {} ran twice", stored.tick);
        assert!(!stored.report.dry_run);
        assert!(stored.report.is_ok(), "{stored:#?}");
    }
    let last = cleanup_report::last_report(&redis, &keys)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&last, &history[0], "the last report heads the history");

    // Each stored run is the one job of its tick, run once.
    let q = s.stack.queue(queue::CLEANUP);
    let jobs = q.list(JobState::Completed, 0, 1000).await.unwrap();
    let mut job_ticks = HashSet::new();
    for job in &jobs {
        assert_eq!(job.attempts, 1, "{job:?}");
        let payload: CleanupJob = serde_json::from_slice(&job.payload).unwrap();
        assert_eq!(job.id, format!("cron:cleanup:{}", payload.tick));
        assert!(job_ticks.insert(payload.tick));
    }
    assert_eq!(job_ticks, ticks, "one stored report per completed tick job");
    s.stack.cleanup().await;
}

#[tokio::test]
async fn the_cli_prints_json_or_a_table_and_stores_its_report() {
    let mut s = Seeder::new("cleanup-cli", &[]).await;
    let data = s.content("orphan", 321);
    let orphan = s.moonshot_file("orphan", &data, Some(OLD)).await;

    let (ok, out, err) = s
        .stack
        .worker_output(&["cleanup", "--dry-run", "--json"])
        .await;
    assert!(ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(report["dry_run"], true, "{out}");
    let m = &report["sweeps"]["moonshot_orphans"];
    assert_eq!(
        (
            m["found"].as_u64(),
            m["removed"].as_u64(),
            m["bytes"].as_u64()
        ),
        (Some(1), Some(1), Some(321))
    );
    for name in cleanup_report::SWEEPS {
        assert!(report["sweeps"][name]["found"].is_u64(), "{name} in {out}");
    }
    assert!(
        s.moonshot_ids().contains(&orphan.id),
        "a dry run removes nothing"
    );

    let (ok, out, err) = s.stack.worker_output(&["cleanup"]).await;
    assert!(ok, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("moonshot_orphans"))
        .unwrap_or_else(|| panic!("a moonshot_orphans row: {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells, ["moonshot_orphans", "1", "1", "321", "0"], "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("sweep ")),
        "a header: {out}"
    );
    assert!(!s.moonshot_ids().contains(&orphan.id));

    let last = cleanup_report::last_report(&s.stack.conn, &s.stack.keys)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.tick, 0);
    assert!(!last.report.dry_run);
    assert_eq!(last.report.sweeps.moonshot_orphans, sweep(1, 321));

    let (ok, out) = s.stack.worker_command(&["cleanup", "--bogus"]).await;
    assert!(!ok);
    assert!(out.contains("--bogus"), "{out}");
    s.stack.cleanup().await;
}

#[tokio::test]
async fn the_storage_list_pages_through_every_object_of_the_folder() {
    let s = Seeder::new("cleanup-list", &[]).await;
    let data = b"x".to_vec();
    let disk = s.disk_file("one-byte", &data);
    let mut want = Vec::new();
    for i in 0..230 {
        let path = format!("kimi-uploads/f{i:04}");
        s.storage()
            .upload_file(&path, &disk, 1, "text/plain")
            .await
            .unwrap();
        want.push(path);
    }
    // A sub-folder and another folder are not listed.
    for path in ["kimi-uploads/sub/deeper", "other/f0001"] {
        s.storage()
            .upload_file(path, &disk, 1, "text/plain")
            .await
            .unwrap();
    }
    let listed = s.storage().list_objects("kimi-uploads").await.unwrap();
    let paths: Vec<String> = listed.iter().map(|o| o.path.clone()).collect();
    assert_eq!(paths, want);
    assert!(listed.iter().all(|o| o.size == 1 && o.created_at.is_some()));
    let lists = s
        .stack
        .sim()
        .requests()
        .iter()
        .filter(|r| r.route == "supabase.object.list")
        .count();
    assert_eq!(lists, 3, "pages of 100");
    s.stack.cleanup().await;
}

#[tokio::test]
async fn a_row_the_original_wrote_keeps_its_object_and_takes_it_along_when_it_expires() {
    let mut s = Seeder::new("cleanup-original", &[]).await;
    // Used two hours ago: its Moonshot file and the object its storage fix wrote stay.
    let live = s.content("original-live", 200);
    let live_file = s.moonshot_file("original-live", &live, Some(OLD)).await;
    let live_path = kimi_object_path(&live_file.id);
    s.object(&live_path, &live, Some(OLD)).await;
    let live_row = s.original_row(&live_file.id, &live, OLD).await;
    // Unused for 40 days: file, object and row go together.
    let old = s.content("original-expired", 210);
    let old_file = s
        .moonshot_file("original-expired", &old, Some(EXPIRED))
        .await;
    let old_path = kimi_object_path(&old_file.id);
    s.object(&old_path, &old, Some(EXPIRED)).await;
    let old_row = s.original_row(&old_file.id, &old, EXPIRED).await;

    let ctx = s.cleanup_ctx().await;
    let dry = cleanup::run(&ctx, true).await;
    assert!(dry.is_ok(), "{dry:#?}");
    assert_eq!(
        dry.sweeps.supabase_orphans,
        CleanupSweepReport::default(),
        "{dry:#?}"
    );
    assert_eq!(
        dry.sweeps.moonshot_orphans,
        CleanupSweepReport::default(),
        "{dry:#?}"
    );
    assert_eq!(dry.sweeps.rows_expired, sweep(1, 210), "{dry:#?}");
    let real = cleanup::run(&ctx, false).await;
    assert_eq!(real.sweeps, dry.sweeps, "the dry run reported the real run");
    assert!(
        s.has_object(&live_path),
        "a live original row keeps its object"
    );
    assert!(s.moonshot_ids().contains(&live_file.id));
    assert_eq!(s.status(live_row.id).await, UploadStatus::Completed);
    assert!(
        !s.has_object(&old_path),
        "the expired row's object went with it"
    );
    assert!(!s.moonshot_ids().contains(&old_file.id));
    assert_eq!(s.status(old_row.id).await, UploadStatus::Deleted);
    assert_nothing_found(&cleanup::run(&ctx, false).await);

    // Without Supabase Storage, an expiring original row's object cannot be deleted: the sweep
    // says so (it is left for a run that reaches the bucket) rather than counting it removed.
    let other = s.content("original-unreachable", 220);
    let other_file = s
        .moonshot_file("original-unreachable", &other, Some(EXPIRED))
        .await;
    let other_path = kimi_object_path(&other_file.id);
    s.object(&other_path, &other, Some(EXPIRED)).await;
    let other_row = s.original_row(&other_file.id, &other, EXPIRED).await;
    let mut no_storage = s.cleanup_ctx().await;
    no_storage.providers.supabase = None;
    let report = cleanup::run(&no_storage, false).await;
    let ex = &report.sweeps.rows_expired;
    assert_eq!((ex.found, ex.removed), (1, 0), "{report:#?}");
    assert_eq!(ex.errors.len(), 1, "{report:#?}");
    assert!(
        ex.errors[0].contains(&other_path) && ex.errors[0].contains("not configured"),
        "{report:#?}"
    );
    assert_eq!(
        report.sweeps.supabase_orphans.skipped.as_deref(),
        Some(cleanup::SUPABASE_NOT_CONFIGURED)
    );
    assert_eq!(s.status(other_row.id).await, UploadStatus::Deleted);
    assert!(s.has_object(&other_path));
    // A run that reaches the bucket removes what was left.
    let after = cleanup::run(&ctx, false).await;
    assert_eq!(after.sweeps.supabase_orphans, sweep(1, 220), "{after:#?}");
    assert!(!s.has_object(&other_path));
    s.stack.cleanup().await;
}

#[tokio::test]
async fn the_cli_skips_the_sweeps_of_a_provider_that_is_not_configured() {
    let mut s = Seeder::new("cleanup-unconfigured", &[]).await;
    let file_data = s.content("orphan-file", 123);
    let file = s.moonshot_file("orphan-file", &file_data, Some(OLD)).await;
    let object = "kimi-uploads/orphan-object";
    let object_data = s.content("orphan-object", 45);
    s.object(object, &object_data, Some(OLD)).await;
    let full_env = s.stack.env.clone();

    // No Moonshot key: the Moonshot sweeps are skipped, the Supabase sweep runs, exit 0.
    s.stack.env.retain(|(k, _)| k != "KIMI_API_KEY");
    let (ok, out, err) = s
        .stack
        .worker_output(&["cleanup", "--dry-run", "--json"])
        .await;
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect(&out);
    for name in cleanup::MOONSHOT_SWEEPS {
        let sweep = &report["sweeps"][name];
        assert_eq!(sweep["skipped"], cleanup::MOONSHOT_NOT_CONFIGURED, "{out}");
        assert_eq!(sweep["found"], 0, "{out}");
        assert!(sweep.get("errors").is_none(), "{out}");
    }
    let sb = &report["sweeps"]["supabase_orphans"];
    assert_eq!(
        (sb["found"].as_u64(), sb["bytes"].as_u64()),
        (Some(1), Some(45)),
        "{out}"
    );
    assert!(sb.get("skipped").is_none(), "{out}");
    assert!(report["sweeps"]["staging_orphans"].get("skipped").is_none());

    let (ok, out, err) = s.stack.worker_output(&["cleanup", "--dry-run"]).await;
    assert!(ok, "{out}{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("a {name} row: {out}"))
            .to_owned()
    };
    assert!(
        line("moonshot_orphans")
            .ends_with("skipped: Moonshot is not configured (KIMI_API_KEY is not set)"),
        "{out}"
    );
    let cells: Vec<String> = line("supabase_orphans")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(cells, ["supabase_orphans", "1", "1", "45", "0"], "{out}");
    // Its stderr is a pipe: log lines, and no ANSI escape in them.
    assert!(err.contains("cleanup sweep"), "log lines on stderr: {err}");
    assert!(!err.contains('\x1b'), "no colour codes on a pipe: {err:?}");
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(s.moonshot_ids().contains(&file.id) && s.has_object(object));

    // No Supabase Storage: its sweep is skipped, the Moonshot sweeps run; a real run removes
    // the Moonshot orphan and stores a report that says what was skipped.
    s.stack.env = full_env;
    s.stack
        .env
        .retain(|(k, _)| k != "SUPABASE_URL" && k != "SUPABASE_SERVICE_ROLE_KEY");
    let (ok, out, err) = s.stack.worker_output(&["cleanup", "--json"]).await;
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        report["sweeps"]["supabase_orphans"]["skipped"],
        cleanup::SUPABASE_NOT_CONFIGURED,
        "{out}"
    );
    let m = &report["sweeps"]["moonshot_orphans"];
    assert_eq!(
        (m["removed"].as_u64(), m["bytes"].as_u64()),
        (Some(1), Some(123)),
        "{out}"
    );
    assert!(m.get("skipped").is_none(), "{out}");
    assert!(!s.moonshot_ids().contains(&file.id));
    assert!(
        s.has_object(object),
        "the unconfigured sweep touched nothing"
    );
    let last = cleanup_report::last_report(&s.stack.conn, &s.stack.keys)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        last.report.sweeps.supabase_orphans.skipped.as_deref(),
        Some(cleanup::SUPABASE_NOT_CONFIGURED)
    );
    assert!(last.report.is_ok());
    s.stack.cleanup().await;
}
