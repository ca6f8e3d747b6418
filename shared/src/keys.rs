//! The Redis key layout: every key and pub/sub channel name of the system is built here, and
//! nowhere else in the workspace.
//!
//! [`Keys`] is the layout of one deployment (prefix `P`, from `EXAI_REDIS_PREFIX`); [`QueueKeys`]
//! the keys of one queue under it. Each family of keys that one Lua script touches shares one
//! hash tag, so every script runs on a single cluster slot. Channels carry no tag: classic
//! pub/sub is not bound to a slot.
//!
//! | key | type | what |
//! |---|---|---|
//! | `{P:sem}:lease:<name>` | zset | live leases of semaphore `name`, score = expiry (ms, Redis clock) |
//! | `{P:sem}:holder` | hash | lease token → JSON holder info (holder id, job id, fence) |
//! | `{P:sem}:limits` | hash | name → limit, set at runtime; absent names take the config default |
//! | `{P:sem}:fence` | string | the monotonic fencing counter of all grants |
//! | `{P:sem}:names` | set | every semaphore name ever acquired, for inspection |
//! | `P:sem:released` | pub/sub channel | the names of a released semaphore lease (and limit changes) |
//! | `P:ev:<job id>` | pub/sub channel | the job's events ([`JobEvent`](crate::events::JobEvent)) |
//! | `{P:cleanup}:last` | string | the last orphan cleanup report (JSON, with its time and tick) |
//! | `{P:cleanup}:history` | list | the recent cleanup reports, newest first (capped) |
//! | `P:mcp:catalogue` | hash | upstream MCP server → its tools as last listed ([`crate::upstream::CatalogueEntry`]) |
//! | `P:mcp:sent:<job id>` | string | an upstream MCP call sent and not yet answered (TTL) |
//! | `{P:usage}:session:<id>` | hash | a session's token sums: `calls`, `prompt`, `completion`, `cached`, `total` (TTL: the usage retention) |
//! | `{P:usage}:tool:<name>` | hash | the same sums of one tool (TTL: the usage retention) |
//! | `{P:usage}:model:<name>` | hash | the same sums of one model, and its `provider` (TTL: the usage retention) |
//! | `{P:usage}:sessions`, `:tools`, `:models` | zset | the names whose sums are kept, score = last call (ms, Redis clock) |
//! | `{P:workers}:live` | zset | registered worker processes, score = registration expiry (ms, Redis clock) |
//! | `{P:workers}:info` | hash | worker id → JSON description (see [`crate::worker_registry`]) |
//! | `{P:q:<queue>}:…` | various | one queue's lists, sorted sets and job hashes: [`QueueKeys`], and the table in [`crate::queue`] |

/// The Redis key layout of one deployment (one `EXAI_REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The deployment's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The sorted set of live leases of semaphore `name`.
    pub fn sem_leases(&self, name: &str) -> String {
        format!("{{{}:sem}}:lease:{name}", self.prefix)
    }

    /// Lease token → JSON holder info, for every semaphore.
    pub fn sem_holders(&self) -> String {
        format!("{{{}:sem}}:holder", self.prefix)
    }

    /// Name → limit overrides set at runtime.
    pub fn sem_limits(&self) -> String {
        format!("{{{}:sem}}:limits", self.prefix)
    }

    /// Adaptive concurrency state: `name` → effective limit (absent: the ceiling),
    /// `name:dec_at` → Redis time (ms) of the last decrease, `name:ok` → successes since the
    /// last change.
    pub fn sem_adaptive(&self) -> String {
        format!("{{{}:sem}}:adaptive", self.prefix)
    }

    /// A provider's rate budget (see [`crate::budget`]): `<provider>:req` (sorted set, one
    /// member per admitted request, scored by its Redis time in ms), `<provider>:tpm` and
    /// `<provider>:tpd` (sorted sets, one member `<reservation>:<tokens>` per request in the
    /// minute and the day), and `<provider>:sums` (hash: `tpm`, `tpd`, the tokens in each).
    /// Under the semaphores' hash tag, so one script sees them with the leases.
    pub fn budget(&self, provider: &str, part: &str) -> String {
        format!("{}{provider}:{part}", self.budget_prefix())
    }

    /// What every [`Keys::budget`] key starts with (the scripts build a provider's keys from it).
    pub fn budget_prefix(&self) -> String {
        format!("{{{}:sem}}:budget:", self.prefix)
    }

    /// Unsettled budget reservations: lease token → until when the reservation holds (ms, the
    /// Redis clock; renewed with the lease), and their terms hash ([`Keys::budget_terms`]).
    pub fn budget_held(&self) -> String {
        format!("{{{}:sem}}:budget:held", self.prefix)
    }

    /// Lease token → `<provider> <tokens> <admitted ms>` of each unsettled reservation.
    pub fn budget_terms(&self) -> String {
        format!("{{{}:sem}}:budget:terms", self.prefix)
    }

    /// The monotonic fencing counter.
    pub fn sem_fence(&self) -> String {
        format!("{{{}:sem}}:fence", self.prefix)
    }

    /// The set of every semaphore name ever acquired, for inspection.
    pub fn sem_names(&self) -> String {
        format!("{{{}:sem}}:names", self.prefix)
    }

    /// The pub/sub channel of one job's events (progress, chunks, finished).
    pub fn job_events(&self, job_id: &str) -> String {
        format!("{}:ev:{job_id}", self.prefix)
    }

    /// The hex SHA-256 of session `session_id`'s resume secret (a string with the session's
    /// retention as its TTL). Only the daemon's hello reads and writes it.
    pub fn session_resume(&self, session_id: &str) -> String {
        format!("{}:session:{session_id}:resume", self.prefix)
    }

    /// An MCP session's record: the JSON of its client's `initialize` parameters, so any daemon
    /// can restore the session. Named by the hex SHA-256 of the session id (the id is the
    /// client's credential for the session, so it is not written in a key name); its TTL is
    /// `EXAI_MCP_SESSION_TTL_SECS`, renewed while the session is used.
    pub fn mcp_session(&self, session_digest: &str) -> String {
        format!("{}:mcp:session:{session_digest}", self.prefix)
    }

    /// The upstream MCP servers' tools, as the workers connected to them last listed them:
    /// server name → JSON [`crate::upstream::CatalogueEntry`] (with its own expiry, renewed by
    /// the workers while connected). The daemons list and validate upstream tools from it.
    pub fn mcp_catalogue(&self) -> String {
        format!("{}:mcp:catalogue", self.prefix)
    }

    /// The mark of an upstream MCP call that was sent and has not been answered yet (a string
    /// with a TTL): an attempt that finds it knows an earlier one may have run the tool.
    pub fn mcp_sent(&self, job_id: &str) -> String {
        format!("{}:mcp:sent:{job_id}", self.prefix)
    }

    /// The pub/sub channel on which releases are announced.
    pub fn sem_released_channel(&self) -> String {
        format!("{}:sem:released", self.prefix)
    }

    /// The last orphan cleanup report (a JSON string: when, which tick, the report).
    pub fn cleanup_last(&self) -> String {
        format!("{{{}:cleanup}}:last", self.prefix)
    }

    /// The recent orphan cleanup reports, newest first (a capped list of the same JSON).
    pub fn cleanup_history(&self) -> String {
        format!("{{{}:cleanup}}:history", self.prefix)
    }

    /// Session `session_id`'s token sums (a hash of counters; see [`crate::usage::ledger`]).
    pub fn usage_session(&self, session_id: &str) -> String {
        format!("{{{}:usage}}:session:{session_id}", self.prefix)
    }

    /// Tool `tool`'s token sums.
    pub fn usage_tool(&self, tool: &str) -> String {
        format!("{{{}:usage}}:tool:{tool}", self.prefix)
    }

    /// Model `model`'s token sums (and its provider).
    pub fn usage_model(&self, model: &str) -> String {
        format!("{{{}:usage}}:model:{model}", self.prefix)
    }

    /// The index of one dimension of the token sums (`sessions`, `tools` or `models`): a sorted
    /// set of names, score = the time of its last recorded call (Unix ms, Redis clock).
    pub fn usage_index(&self, dimension: &str) -> String {
        format!("{{{}:usage}}:{dimension}", self.prefix)
    }

    /// The sorted set of registered worker processes: member = worker id, score = when its
    /// registration expires (Unix ms, Redis clock).
    pub fn workers_live(&self) -> String {
        format!("{{{}:workers}}:live", self.prefix)
    }

    /// Worker id → JSON description of the worker process (see [`crate::worker_registry`]).
    pub fn workers_info(&self) -> String {
        format!("{{{}:workers}}:info", self.prefix)
    }

    /// The keys of queue `name`, all under the hash tag `{P:q:<name>}` (see
    /// [`crate::queue`] for the layout).
    pub fn queue(&self, name: &str) -> QueueKeys {
        QueueKeys::new(&self.prefix, name)
    }
}

/// The keys and pub/sub channels of one queue (see the layout table in [`crate::queue`]).
///
/// Every key starts with the hash tag `{P:q:<name>}`, so all the keys a queue script touches —
/// including job hashes built inside Lua from [`job_prefix`](Self::job_prefix) — live in one
/// Redis Cluster slot. Channels carry no tag: classic pub/sub is not bound to a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    name: String,
    tag: String,
    channel_base: String,
}

impl QueueKeys {
    /// The keys of queue `name` under deployment prefix `prefix`.
    pub fn new(prefix: &str, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            tag: format!("{{{prefix}:q:{name}}}"),
            channel_base: format!("{prefix}:q:{name}"),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hash tag shared by every key of the queue, braces included.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// List of job ids ready to run: pushed on the left by enqueue, popped on the right by fetch
    /// (FIFO); due, released and rescued jobs are pushed on the right so they run next.
    pub fn wait(&self) -> String {
        format!("{}:wait", self.tag)
    }

    /// Sorted set of delayed jobs (enqueued with a delay, or released with one); score = due
    /// time in Unix milliseconds.
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.tag)
    }

    /// Sorted set of jobs waiting out a retry backoff; score = due time in Unix milliseconds.
    pub fn retry(&self) -> String {
        format!("{}:retry", self.tag)
    }

    /// Sorted set of running attempts, member `<fence>:<id>`; score = lease expiry in Unix
    /// milliseconds (Redis clock).
    pub fn active(&self) -> String {
        format!("{}:active", self.tag)
    }

    /// Sorted set of dead jobs; score = time of death; trimmed to the policy's `dead_max`.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.tag)
    }

    /// List of the ids of recently completed jobs, newest first, capped at the policy's
    /// `completed_index_max` (entries whose job expired are skipped when listing).
    pub fn completed(&self) -> String {
        format!("{}:completed", self.tag)
    }

    /// List of the ids of recently cancelled jobs, newest first, capped like the completed
    /// index (entries whose job expired are skipped when listing).
    pub fn cancelled(&self) -> String {
        format!("{}:cancelled", self.tag)
    }

    /// The prefix of the per-minute history hashes; the hash of the minute that starts at
    /// Unix second `s` (a multiple of 60) is this prefix followed by `s`. Written by the
    /// complete, fail and sweep scripts, each expiring about 25 hours after its minute (see
    /// [`crate::queue::history`]).
    pub fn history_prefix(&self) -> String {
        format!("{}:history:", self.tag)
    }

    /// The history hash of the minute that starts at Unix second `minute`.
    pub fn history(&self, minute: u64) -> String {
        format!("{}:history:{minute}", self.tag)
    }

    /// Hash of counters: `completed`, `cancelled`, `ghosts` (stale ids still in the wait list)
    /// and `fence` (the last fencing token handed out).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.tag)
    }

    /// String present while the queue is paused.
    pub fn paused(&self) -> String {
        format!("{}:paused", self.tag)
    }

    /// Sorted set of the workers waiting for work (member: worker id, score: until when the
    /// registration holds, Unix ms): an enqueue wakes one of them, on its own channel, instead
    /// of every worker.
    pub fn idle(&self) -> String {
        format!("{}:idle", self.tag)
    }

    /// Hash of the hand-off terms of the idle workers that take hand-offs (field: worker id,
    /// value: `<lease ms> <job events channel prefix>`): an enqueue leases a lone new job to
    /// such a worker itself and publishes it on the worker's channel, saving it the fetch.
    pub fn hand_offs(&self) -> String {
        format!("{}:handoff", self.tag)
    }

    /// A capped group of this queue's jobs (a session's calls): a set of job ids. The enqueue
    /// script that counts a job in it also enforces its cap, pruning finished or vanished members
    /// at the cap ([`crate::queue::Queue::enqueue_in_group`]).
    pub fn group(&self, name: &str) -> String {
        format!("{}:group:{name}", self.tag)
    }

    /// The ids a group admitted before their job exists (score: when, Unix ms), kept a minute
    /// ([`crate::queue::Queue::admit_to_group`]).
    pub fn group_pending(&self, name: &str) -> String {
        format!("{}:group:{name}:pending", self.tag)
    }

    /// The prefix of the fair-share keys, which the scripts build from it: the key lists
    /// (`<prefix>k:<fairness key>`), the ring (`<prefix>ring`), the weights (`<prefix>weight`)
    /// and the credits (`<prefix>credit`). See [`crate::queue`]'s fair share.
    pub fn fair_prefix(&self) -> String {
        format!("{}:fair:", self.tag)
    }

    /// List of the ids of queued jobs of fairness key `key`, next to run at the right end.
    pub fn fair_list(&self, key: &str) -> String {
        format!("{}:fair:k:{key}", self.tag)
    }

    /// List of the fairness keys with queued jobs, each once; the right end is served next.
    pub fn fair_ring(&self) -> String {
        format!("{}:fair:ring", self.tag)
    }

    /// The fair keys that had nothing waiting when their job arrived, served before the ring,
    /// oldest first.
    pub fn fair_fresh(&self) -> String {
        format!("{}:fair:fresh", self.tag)
    }

    /// Hash of the fairness keys' weights other than 1 (key → weight).
    pub fn fair_weights(&self) -> String {
        format!("{}:fair:weight", self.tag)
    }

    /// Hash of how many jobs in a row the key at the ring's head has given (weighted keys).
    pub fn fair_credits(&self) -> String {
        format!("{}:fair:credit", self.tag)
    }

    /// The prefix of job hashes; a job's hash is this prefix followed by its id.
    pub fn job_prefix(&self) -> String {
        format!("{}:j:", self.tag)
    }

    /// The hash of job `id`.
    pub fn job(&self, id: &str) -> String {
        format!("{}:j:{id}", self.tag)
    }

    /// Sorted set of the cron ticks of schedule `schedule` already fired; member and score =
    /// tick time in Unix seconds.
    pub fn cron_ticks(&self, schedule: &str) -> String {
        format!("{}:cron:{schedule}", self.tag)
    }

    /// Channel on which the queue announces to every worker that its wait list became
    /// non-empty (when no worker is registered idle, and on resume, release, rescue, retry).
    pub fn wake_channel(&self) -> String {
        format!("{}:wake", self.channel_base)
    }

    /// The channel on which worker `worker` alone is woken (see [`QueueKeys::idle`]).
    pub fn wake_channel_of(&self, worker: &str) -> String {
        format!("{}:wake:{worker}", self.channel_base)
    }

    /// Channel on which the ids of running jobs asked to stop are published.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.channel_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_of(key: &str) -> &str {
        let open = key.find('{').expect("has a tag");
        let close = key.find('}').expect("has a tag");
        &key[open + 1..close]
    }

    #[test]
    fn semaphore_keys_share_one_hash_tag() {
        let k = Keys::new("t1");
        let tag = |s: String| tag_of(&s).to_owned();
        let tags = [
            tag(k.sem_leases("global")),
            tag(k.sem_leases("kimi")),
            tag(k.sem_holders()),
            tag(k.sem_limits()),
            tag(k.sem_fence()),
            tag(k.sem_names()),
            tag(k.sem_adaptive()),
            tag(k.budget("kimi", "req")),
            tag(k.budget_held()),
            tag(k.budget_terms()),
        ];
        assert!(tags.iter().all(|t| t == "t1:sem"), "{tags:?}");
        assert_eq!(tag(k.workers_live()), tag(k.workers_info()));
        let usage = [
            tag(k.usage_session("s")),
            tag(k.usage_tool("chat")),
            tag(k.usage_model("kimi-k2")),
            tag(k.usage_index("sessions")),
        ];
        assert!(usage.iter().all(|t| t == "t1:usage"), "{usage:?}");
    }

    #[test]
    fn the_cleanup_report_key_is_under_the_prefix() {
        assert_eq!(Keys::new("t1").cleanup_last(), "{t1:cleanup}:last");
    }

    #[test]
    fn every_key_of_a_queue_shares_one_hash_tag() {
        let k = QueueKeys::new("p", "tool_calls");
        let keys = [
            k.wait(),
            k.scheduled(),
            k.retry(),
            k.active(),
            k.dead(),
            k.completed(),
            k.cancelled(),
            k.history_prefix(),
            k.history(1_796_658_480),
            k.stats(),
            k.paused(),
            k.idle(),
            k.hand_offs(),
            k.job_prefix(),
            k.job("abc"),
            k.cron_ticks("hourly"),
            k.fair_prefix(),
            k.fair_list("tenant-a"),
            k.fair_ring(),
            k.fair_weights(),
            k.fair_credits(),
        ];
        for key in &keys {
            assert_eq!(tag_of(key), "p:q:tool_calls", "{key}");
        }
        assert_eq!(k.job("abc"), format!("{}abc", k.job_prefix()));
        assert_eq!(k.fair_list("a"), format!("{}k:a", k.fair_prefix()));
        assert_eq!(k.fair_ring(), format!("{}ring", k.fair_prefix()));
        assert_eq!(k.fair_fresh(), format!("{}fresh", k.fair_prefix()));
        assert_eq!(k.fair_weights(), format!("{}weight", k.fair_prefix()));
        assert_eq!(k.fair_credits(), format!("{}credit", k.fair_prefix()));
        assert!(!k.wake_channel().contains('{'));
    }
}
