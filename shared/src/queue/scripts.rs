//! The Lua scripts of the queue protocol, each run with `EVALSHA` (loaded on first use).
//!
//! Every script is `lua/prelude.lua` followed by its own file, so the helpers are written once.
//! Every key a script touches is in `KEYS`, except job hashes of ids read from an index inside
//! the script (fetch, sweep, promotion, dead-set trim, list): those are built from a
//! `KEYS`-passed job prefix carrying the queue's hash tag, so they live in the same cluster slot.

use std::sync::LazyLock;

use redis::Script;

const PRELUDE: &str = include_str!("lua/prelude.lua");

macro_rules! script {
    ($(#[$doc:meta])* $name:ident = $file:literal) => {
        $(#[$doc])*
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(&format!("{PRELUDE}\n{}", include_str!($file))));
    };
}

script!(
    /// Enqueue a batch of jobs, idempotently by id.
    ENQUEUE = "lua/enqueue.lua"
);
script!(
    /// Enqueue one cron tick's job, deduplicated per (schedule, tick).
    ENQUEUE_TICK = "lua/enqueue_tick.lua"
);
script!(
    /// Renew a batch of leases.
    HEARTBEAT = "lua/heartbeat.lua"
);
script!(
    /// Fenced, batched completion.
    COMPLETE = "lua/complete.lua"
);
script!(
    /// One worker round trip: fenced, batched completion (possibly of nothing), then a fetch
    /// for the free slots and the freed ones.
    COMPLETE_FETCH = "lua/complete_fetch.lua"
);
script!(
    /// Fenced failure of one attempt.
    FAIL = "lua/fail.lua"
);
script!(
    /// Fenced put-back without burning the attempt.
    RELEASE = "lua/release.lua"
);
script!(
    /// Rescue expired leases, promote due jobs.
    SWEEP = "lua/sweep.lua"
);
script!(
    /// Cancel a job.
    CANCEL = "lua/cancel.lua"
);
script!(
    /// Delete a job.
    REMOVE = "lua/remove.lua"
);
script!(
    /// Register an idle worker again without fetching.
    REGISTER_IDLE = "lua/register_idle.lua"
);
script!(
    /// Requeue a dead job.
    RETRY_DEAD = "lua/retry_dead.lua"
);
script!(
    /// Resume a paused queue.
    RESUME = "lua/resume.lua"
);
script!(
    /// Snapshot of a queue's sizes.
    COUNTS = "lua/counts.lua"
);
script!(
    /// One page of jobs in one state.
    LIST = "lua/list.lua"
);
script!(
    /// A queued job's place in the wait list, from a bounded search.
    POSITION = "lua/position.lua"
);
