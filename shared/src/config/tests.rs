//! Unit tests of the configuration reader.

use std::collections::{BTreeSet, HashMap};

use secrecy::ExposeSecret;

use super::read::Vars;
use super::*;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(pairs.iter().map(|(k, v)| (*k, *v)))
}

#[test]
fn defaults_match_the_original_daemon() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.ws.port, 8079);
    assert_eq!(c.semaphores.global_limit, 24);
    assert_eq!(c.semaphores.kimi_limit, 6);
    assert_eq!(c.semaphores.glm_limit, 4);
    assert_eq!(c.semaphores.aimd, AimdConfig::default());
    assert_eq!(c.usage.retention, Duration::from_secs(604_800));
    assert_eq!(c.usage.session_token_budget, 0, "no budget by default");
    assert!(c.semaphores.aimd.enabled);
    assert_eq!(c.semaphores.aimd.decrease_factor, 0.5);
    assert_eq!(
        c.semaphores.aimd.decrease_cooldown,
        Duration::from_millis(2000)
    );
    assert_eq!(
        (
            c.semaphores.aimd.increase_step,
            c.semaphores.aimd.increase_every
        ),
        (1, 10)
    );
    assert_eq!(c.redis.prefix, "exai");
    assert_eq!(c.jobs.lease, Duration::from_secs(30));
    assert_eq!(c.supabase.bucket, "user-files");
    assert_eq!(c.supabase.timeout, Duration::from_secs(30));
    assert!(c.supabase.upload_enabled);
    assert!(c.jobs.auto_migrate);
    assert!(c.ws.token.is_none());
    assert_eq!(c.uploads.max_bytes, 100 * 1024 * 1024);
    assert_eq!(c.supabase.retry_base, Duration::from_secs(1));
    assert_eq!(c.cleanup.file_retention, Duration::from_secs(30 * 86_400));
    assert_eq!(c.cleanup.storage_quota_bytes, None);
    let c = cfg(&[("EXAI_STORAGE_QUOTA_BYTES", "1000")]).unwrap();
    assert_eq!(c.cleanup.storage_quota_bytes, Some(1000));
    assert!(c.worker.metrics_addr.is_none());
    let on = cfg(&[("EXAI_WORKER_METRICS_ADDR", "127.0.0.1:9464")]).unwrap();
    assert_eq!(
        on.worker.metrics_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
}

#[test]
fn a_bad_value_names_its_variable() {
    for (var, value) in [
        ("EXAI_WS_PORT", "eighty"),
        ("EXAI_WS_KIMI_MAX_INFLIGHT", "0"),
        ("EXAI_SEMAPHORE_LEASE_MS", "-5"),
        ("KIMI_SEMAPHORE_TIMEOUT", "soon"),
        ("KIMI_UPLOAD_TO_SUPABASE", "maybe"),
        ("EXAI_WS_HOST", "not-an-ip"),
        ("KIMI_API_URL", "ftp://x"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_CLUSTER_NODES", "redis://a:1,b:2"),
        ("EXAI_REDIS_PREFIX", "a{b}"),
        ("EXAI_LOG_FORMAT", "xml"),
        ("EXAI_CLEANUP_CRON", "every hour"),
        ("EXAI_MAX_UPLOAD_BYTES", "0"),
        ("EXAI_DOWNLOAD_MAX_BYTES", "lots"),
        ("EXAI_STORAGE_RETRY_BASE_MS", "0"),
        ("EXAI_FILE_RETENTION_DAYS", "0"),
        ("EXAI_FILE_RETENTION_DAYS", "99999999999999"),
        ("EXAI_STORAGE_QUOTA_BYTES", "0"),
        ("EXAI_STORAGE_QUOTA_BYTES", "10GB"),
        ("EXAI_WORKER_METRICS_ADDR", "localhost"),
        ("EXAI_AIMD_ENABLED", "sometimes"),
        ("EXAI_AIMD_DECREASE_FACTOR", "1"),
        ("EXAI_AIMD_DECREASE_FACTOR", "0"),
        ("EXAI_AIMD_DECREASE_FACTOR", "NaN"),
        ("EXAI_AIMD_DECREASE_COOLDOWN_MS", "-1"),
        ("EXAI_AIMD_INCREASE_STEP", "0"),
        ("EXAI_AIMD_INCREASE_EVERY", "0"),
        ("EXAI_USAGE_RETENTION_SECS", "0"),
        ("EXAI_USAGE_RETENTION_SECS", "a week"),
        ("EXAI_SESSION_TOKEN_BUDGET", "-1"),
        ("EXAI_SESSION_TOKEN_BUDGET", "1e6"),
    ] {
        let err = cfg(&[(var, value)]).unwrap_err();
        assert_eq!(err.var, var);
        assert!(err.to_string().contains(var), "{err}");
    }
}

#[test]
fn the_usage_settings_are_read() {
    let c = cfg(&[
        ("EXAI_USAGE_RETENTION_SECS", "3600"),
        ("EXAI_SESSION_TOKEN_BUDGET", "250000"),
    ])
    .unwrap();
    assert_eq!(c.usage.retention, Duration::from_secs(3600));
    assert_eq!(c.usage.session_token_budget, 250_000);
}

#[test]
fn a_short_token_is_an_error_not_auth_off() {
    let err = cfg(&[("EXAI_WS_TOKEN", "short")]).unwrap_err();
    assert_eq!(err.var, "EXAI_WS_TOKEN");
    assert!(
        !err.to_string().contains("short"),
        "the token must not be echoed"
    );
    let ok = cfg(&[("EXAI_WS_TOKEN", "0123456789abcdef")]).unwrap();
    assert_eq!(ok.ws.token.unwrap().expose_secret(), "0123456789abcdef");
}

#[test]
fn allowed_origins_are_normalised_web_origins() {
    assert!(cfg(&[]).unwrap().ws.allowed_origins.is_empty());
    let c = cfg(&[(
        "EXAI_WS_ALLOWED_ORIGINS",
        " HTTP://App.Example:80/ , https://127.0.0.1:3000,http://[::1]:8080",
    )])
    .unwrap();
    assert_eq!(
        c.ws.allowed_origins,
        [
            "http://app.example",
            "https://127.0.0.1:3000",
            "http://[::1]:8080"
        ]
    );
    for bad in [
        "app.example",
        "http://app.example/path",
        "http://app.example?x=1",
        "ftp://app.example",
        "null",
        "*",
        "http://user@app.example",
    ] {
        let err = cfg(&[("EXAI_WS_ALLOWED_ORIGINS", bad)]).unwrap_err();
        assert_eq!(err.var, "EXAI_WS_ALLOWED_ORIGINS", "{bad}");
    }
}

#[test]
fn a_token_of_only_whitespace_is_an_error_and_an_empty_one_is_unset() {
    for var in ["EXAI_WS_TOKEN", "EXAI_ADMIN_TOKEN"] {
        let err = cfg(&[(var, "   ")]).unwrap_err();
        assert_eq!(err.var, var);
        assert!(err.to_string().contains("whitespace"), "{err}");
        assert!(cfg(&[(var, "")]).is_ok(), "{var} empty");
    }
    let c = cfg(&[]).unwrap();
    assert!(c.ws.token.is_none() && c.ws.admin_token.is_none());
}

#[test]
fn the_admin_token_is_long_and_not_the_client_token() {
    let err = cfg(&[("EXAI_ADMIN_TOKEN", "short")]).unwrap_err();
    assert_eq!(err.var, "EXAI_ADMIN_TOKEN");
    let err = cfg(&[
        ("EXAI_WS_TOKEN", "0123456789abcdef"),
        ("EXAI_ADMIN_TOKEN", "0123456789abcdef"),
    ])
    .unwrap_err();
    assert_eq!(err.var, "EXAI_ADMIN_TOKEN");
    assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
    let c = cfg(&[
        ("EXAI_WS_TOKEN", "0123456789abcdef"),
        ("EXAI_ADMIN_TOKEN", "fedcba9876543210"),
    ])
    .unwrap();
    assert_eq!(
        c.ws.admin_token.unwrap().expose_secret(),
        "fedcba9876543210"
    );
}

#[test]
fn a_non_loopback_address_needs_a_token() {
    let err = cfg(&[("EXAI_WS_HOST", "0.0.0.0")]).unwrap_err();
    assert_eq!(err.var, "EXAI_WS_TOKEN");
    assert_eq!(
        err.to_string(),
        "invalid configuration: EXAI_WS_TOKEN: required when EXAI_WS_HOST (0.0.0.0) is not a loopback address"
    );
    cfg(&[
        ("EXAI_WS_HOST", "0.0.0.0"),
        ("EXAI_WS_TOKEN", "0123456789abcdef"),
    ])
    .unwrap();
    cfg(&[("EXAI_WS_HOST", "::1")]).unwrap();
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let c = cfg(&[
        ("EXAI_WS_TOKEN", "super-secret-token-123"),
        ("KIMI_API_KEY", "sk-kimi-secret"),
        ("SUPABASE_SERVICE_ROLE_KEY", "service-role-secret"),
        ("DATABASE_URL", "postgres://u:pg-password@h/db"),
    ])
    .unwrap();
    let shown = format!("{c:?}");
    for secret in [
        "super-secret-token-123",
        "sk-kimi-secret",
        "service-role-secret",
        "pg-password",
    ] {
        assert!(!shown.contains(secret), "{secret} leaked into {shown}");
    }
}

#[test]
fn lists_and_durations_parse() {
    let c = cfg(&[
        ("EXAI_UPLOAD_ROOTS", "/a:/b,/c"),
        ("KIMI_SEMAPHORE_TIMEOUT", "0.25"),
        (
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
        ),
        ("KIMI_UPLOAD_TO_SUPABASE", "false"),
    ])
    .unwrap();
    assert_eq!(c.uploads.roots.len(), 3);
    assert_eq!(c.semaphores.kimi_wait, Duration::from_millis(250));
    assert_eq!(c.redis.cluster_nodes.len(), 2);
    assert!(!c.supabase.upload_enabled);
    assert_eq!(
        c.semaphores.wait_for(Some("kimi")),
        Duration::from_millis(250)
    );
}

#[test]
fn daemon_limits_have_defaults_and_bad_values_name_their_variable() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.ws.limits, WsLimits::default());
    assert!(!c.ws.database_url_set);
    assert!(
        cfg(&[("DATABASE_URL", "postgres://h/db")])
            .unwrap()
            .ws
            .database_url_set
    );
    for (var, value) in [
        ("EXAI_WS_MAX_CONNECTIONS", "lots"),
        ("EXAI_WS_MAX_CONNECTIONS_PER_IP", "0"),
        ("EXAI_WS_SESSION_MAX_INFLIGHT", "-1"),
        ("EXAI_WS_HELLO_TIMEOUT", "soon"),
        ("EXAI_WS_IDLE_TIMEOUT_SECS", "0"),
        ("EXAI_WS_PING_TIMEOUT", "inf"),
        ("EXAI_WS_CALL_TIMEOUT_SECS", "-3"),
        ("EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS", "NaN"),
        ("EXAI_WS_SHUTDOWN_GRACE_SECS", "x"),
        ("EXAI_PROVIDER_CONNECT_TIMEOUT_SECS", "0"),
        ("EXAI_PROVIDER_READ_TIMEOUT_SECS", "slow"),
        ("EXAI_PROVIDER_REQUEST_TIMEOUT_SECS", "-1"),
        ("KIMI_FILES_FETCH_TIMEOUT_SECS", "0"),
        ("KIMI_FILES_UPLOAD_TIMEOUT_SECS", "never"),
        ("KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC", "0"),
        ("KIMI_TIMEOUT_SECS", "0"),
        ("GLM_TIMEOUT_SECS", "1e99"),
        ("EXAI_REQUIRE_REAL_PROVIDERS", "perhaps"),
        ("RUST_LOG", "info,[unclosed"),
    ] {
        let err = cfg(&[(var, value)]).unwrap_err();
        assert_eq!(err.var, var, "{var}={value}: {err}");
        assert!(err.to_string().contains(var), "{err}");
    }
    let c = cfg(&[("EXAI_WS_HELLO_TIMEOUT", "0.25")]).unwrap();
    assert_eq!(c.ws.limits.hello_timeout, Duration::from_millis(250));
}

#[test]
fn provider_timeouts_default_to_the_former_constants_and_are_settings() {
    let t = cfg(&[]).unwrap().provider_timeouts;
    assert_eq!(t, ProviderTimeouts::default());
    assert_eq!(t.connect, Duration::from_secs(10));
    assert_eq!(t.read, Duration::from_secs(300));
    assert_eq!(t.request, Duration::from_secs(60));
    assert_eq!(t.file_content, Duration::from_secs(120));
    assert_eq!(t.kimi_chat, Duration::from_secs(600));
    assert_eq!(t.glm_chat, Duration::from_secs(600));
    // Two minutes plus one second per 256 KiB.
    assert_eq!(t.upload(0), Duration::from_secs(120));
    assert_eq!(t.upload(100 * 1024 * 1024), Duration::from_secs(520));
    let t = cfg(&[
        ("KIMI_TIMEOUT_SECS", "40"),
        ("GLM_TIMEOUT_SECS", "30"),
        ("KIMI_FILES_UPLOAD_TIMEOUT_SECS", "90"),
        ("KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC", "1048576"),
        ("EXAI_PROVIDER_CONNECT_TIMEOUT_SECS", "2.5"),
    ])
    .unwrap()
    .provider_timeouts;
    assert_eq!(t.kimi_chat, Duration::from_secs(40));
    assert_eq!(t.glm_chat, Duration::from_secs(30));
    assert_eq!(t.upload(10 * 1024 * 1024), Duration::from_secs(100));
    assert_eq!(t.connect, Duration::from_millis(2500));
}

#[test]
fn original_names_take_effect_and_the_new_names_win() {
    let c = cfg(&[
        ("MAX_CONNECTIONS", "50"),
        ("MAX_CONNECTIONS_PER_IP", "3"),
        ("EXAI_WS_MAX_CONNECTIONS_PER_IP", "4"),
        ("RESULT_TTL_SECS", "600"),
        ("WORKFLOW_TOOL_TIMEOUT_SECS", "180"),
        ("SESSION_TIMEOUT_SECS", "1800"),
        ("FILE_RETENTION_DAYS", "7"),
        ("CLEANUP_INTERVAL_HOURS", "24"),
        ("KIMI_FILES_MAX_SIZE_MB", "20"),
        ("LOG_LEVEL", "WARNING"),
        ("REDIS_PASSWORD", "s3cret"),
    ])
    .unwrap();
    assert_eq!(c.ws.limits.max_connections, 50);
    assert_eq!(c.ws.limits.max_connections_per_ip, 4);
    assert_eq!(c.jobs.result_ttl, Duration::from_secs(600));
    assert_eq!(c.ws.limits.call_timeout, Duration::from_secs(180));
    assert_eq!(c.ws.limits.idle_timeout, Duration::from_secs(1800));
    assert_eq!(c.cleanup.file_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.cleanup.cron, "0 0 0 * * *");
    assert_eq!(c.uploads.max_bytes, 20 * 1024 * 1024);
    assert_eq!(c.log_filter, "warn");
    assert_eq!(
        c.redis.url.expose_secret(),
        "redis://:s3cret@127.0.0.1:6379"
    );
    assert_eq!(c.legacy.len(), 10);
    assert!(!format!("{:?}", c.legacy).contains("s3cret"));
    let c = cfg(&[("LOG_LEVEL", "DEBUG"), ("RUST_LOG", "exai=trace")]).unwrap();
    assert_eq!(c.log_filter, "exai=trace");
    assert_eq!(cfg(&[]).unwrap().log_filter, "info");
    assert!(cfg(&[]).unwrap().legacy.is_empty());
}

#[test]
fn a_bad_original_value_names_the_original_variable() {
    for (var, value) in [
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS_PER_IP", "many"),
        ("WORKFLOW_TOOL_TIMEOUT_SECS", "-1"),
        ("FILE_RETENTION_DAYS", "0"),
        ("REDIS_PASSWORD", "x"),
    ] {
        let mut pairs = vec![(var, value)];
        if var == "REDIS_PASSWORD" {
            // A password put into a valid URL stays valid: break the URL another way.
            pairs.push(("REDIS_CLUSTER_NODES", "redis://a:1,b:2"));
        }
        let err = cfg(&pairs).unwrap_err();
        assert_eq!(err.var, var, "{err}");
        assert!(err.to_string().contains("read as"), "{err}");
    }
}

#[test]
fn real_providers_are_required_only_when_asked_and_every_problem_is_named() {
    let sim = [
        ("KIMI_API_URL", "http://exai-sim:9000/v1"),
        ("KIMI_API_KEY", "sim-key"),
        ("SUPABASE_URL", "http://exai-sim:9000"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sim-key"),
    ];
    assert!(cfg(&sim).is_ok());
    assert!(cfg(&[]).is_ok());
    let mut on = sim.to_vec();
    on.push(("EXAI_REQUIRE_REAL_PROVIDERS", "true"));
    let err = cfg(&on).unwrap_err();
    assert_eq!(err.var, "EXAI_REQUIRE_REAL_PROVIDERS");
    for var in [
        "KIMI_API_URL",
        "KIMI_API_KEY",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
    ] {
        assert!(err.message.contains(var), "{var}: {err}");
    }
    let err = cfg(&[("EXAI_REQUIRE_REAL_PROVIDERS", "true")]).unwrap_err();
    for var in ["KIMI_API_KEY", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"] {
        assert!(err.message.contains(&format!("{var} is not set")), "{err}");
    }
    // Without the Supabase push, Supabase is not required.
    let err = cfg(&[
        ("EXAI_REQUIRE_REAL_PROVIDERS", "true"),
        ("KIMI_UPLOAD_TO_SUPABASE", "false"),
    ])
    .unwrap_err();
    assert!(!err.message.contains("SUPABASE"), "{err}");
    let real = [
        ("EXAI_REQUIRE_REAL_PROVIDERS", "true"),
        ("KIMI_API_KEY", "sk-real-key"),
        ("SUPABASE_URL", "https://project.supabase.co"),
        ("SUPABASE_SERVICE_ROLE_KEY", "service-role"),
    ];
    assert!(cfg(&real).unwrap().require_real_providers);
}

#[test]
fn settings_list_every_variable_read_once_with_secrets_redacted() {
    let raw = HashMap::new();
    let vars = Vars::new(&raw);
    let c = Config::read(&vars).unwrap();
    let read = vars.read.borrow().clone();
    let settings = c.settings();
    let listed: BTreeSet<&str> = settings.iter().map(|s| s.var).collect();
    assert_eq!(listed.len(), settings.len(), "a variable is listed twice");
    assert_eq!(
        read, listed,
        "Config::settings must list exactly the variables read"
    );

    let c = cfg(&[
        ("EXAI_WS_TOKEN", "super-secret-token-123"),
        ("KIMI_API_KEY", "sk-kimi-secret"),
        ("DATABASE_URL", "postgres://u:pg-password@h/db"),
        ("REDIS_URL", "redis://:redis-password@h:1"),
    ])
    .unwrap();
    let shown = format!("{:?}", c.settings());
    for secret in [
        "super-secret-token-123",
        "sk-kimi-secret",
        "pg-password",
        "redis-password",
    ] {
        assert!(!shown.contains(secret), "{secret} leaked into {shown}");
    }
}

#[test]
fn settings_read_back_give_the_same_configuration() {
    let c = cfg(&[
        ("EXAI_WS_PING_INTERVAL", "0.25"),
        ("EXAI_UPLOAD_ROOTS", "/a:/b"),
        ("EXAI_STORAGE_QUOTA_BYTES", "1000"),
        (
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        ),
        ("SUPABASE_URL", "https://x.supabase.co"),
        ("EXAI_WORKER_METRICS_ADDR", "127.0.0.1:9464"),
        ("EXAI_LOG_FORMAT", "json"),
        ("CLEANUP_INTERVAL_HOURS", "6"),
    ])
    .unwrap();
    let pairs: Vec<(&str, String)> = c
        .settings()
        .into_iter()
        .filter_map(|s| s.value.map(|v| (s.var, v)))
        .collect();
    let again = Config::from_vars(pairs).unwrap();
    assert_eq!(again.settings(), c.settings());
    assert!(again.legacy.is_empty());
}

#[test]
fn tls_needs_both_its_cert_and_its_key() {
    assert_eq!(cfg(&[]).unwrap().ws.tls, None);
    let c = cfg(&[
        ("EXAI_WS_TLS_CERT", "/etc/exai/cert.pem"),
        ("EXAI_WS_TLS_KEY", "/etc/exai/key.pem"),
    ])
    .unwrap();
    assert_eq!(
        c.ws.tls,
        Some(TlsFiles {
            cert: "/etc/exai/cert.pem".into(),
            key: "/etc/exai/key.pem".into(),
        })
    );
    let err = cfg(&[("EXAI_WS_TLS_CERT", "/etc/exai/cert.pem")]).unwrap_err();
    assert_eq!(err.var, "EXAI_WS_TLS_KEY");
    assert!(err.message.contains("EXAI_WS_TLS_CERT"), "{err}");
    let err = cfg(&[("EXAI_WS_TLS_KEY", "/etc/exai/key.pem")]).unwrap_err();
    assert_eq!(err.var, "EXAI_WS_TLS_CERT");
}
