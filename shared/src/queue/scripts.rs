//! The Lua scripts of the queue protocol, each run with `EVALSHA` (loaded on first use).
//!
//! Every script is its own file preceded by the helpers of `lua/prelude.lua` it uses, directly
//! or through another helper, in the prelude's order — so the helpers are written once, and a
//! script carries only what it runs (Redis re-runs a script's whole text on every call, and
//! keeps every script's compiled code in its Lua heap).
//! Every key a script touches is in `KEYS`, except job hashes of ids read from an index inside
//! the script (fetch, sweep, promotion, dead-set trim, list): those are built from a
//! `KEYS`-passed job prefix carrying the queue's hash tag, so they live in the same cluster slot.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use redis::Script;

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// One top-level definition of the prelude (`local function name` or `local NAME =`): its
/// text, with the comment above it, and the identifiers its code mentions.
struct Helper {
    name: String,
    text: String,
    uses: BTreeSet<String>,
}

/// The prelude cut into its top-level definitions, in order. A definition runs from its
/// comment to the line before the next definition's comment; top-level lines are the ones
/// that start in column 0 (`local`, `end`, `--`), the rest belong to the definition above.
fn helpers(prelude: &str) -> Vec<Helper> {
    let mut out: Vec<Helper> = Vec::new();
    let mut pending = String::new();
    for line in prelude.lines() {
        if let Some(rest) = line.strip_prefix("local ") {
            let rest = rest.strip_prefix("function ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(Helper {
                name,
                text: std::mem::take(&mut pending),
                uses: BTreeSet::new(),
            });
        } else if line.is_empty() || line.starts_with("--") {
            pending.push_str(line);
            pending.push('\n');
            continue;
        } else if let Some(last) = out.last_mut() {
            last.text.push_str(&std::mem::take(&mut pending));
        }
        if let Some(last) = out.last_mut() {
            last.text.push_str(line);
            last.text.push('\n');
        }
    }
    for h in &mut out {
        h.uses = words(&h.text);
        h.uses.remove(&h.name);
    }
    out
}

/// The identifiers of Lua `code`, comments left out.
fn words(code: &str) -> BTreeSet<String> {
    code.lines()
        .map(|l| l.find("--").map_or(l, |i| &l[..i]))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `body` preceded by the prelude helpers it needs.
fn assemble(body: &str) -> String {
    let helpers = helpers(PRELUDE);
    let mut needed = words(body);
    // Helpers only use helpers defined above them: one pass from the bottom up closes the set.
    for h in helpers.iter().rev() {
        if needed.contains(&h.name) {
            needed.extend(h.uses.iter().cloned());
        }
    }
    let mut out: String = helpers
        .iter()
        .filter(|h| needed.contains(&h.name))
        .map(|h| h.text.as_str())
        .collect();
    out.push_str(body);
    out
}

macro_rules! script {
    ($(#[$doc:meta])* $name:ident = $file:literal) => {
        $(#[$doc])*
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(&assemble(include_str!($file))));
    };
}

script!(
    /// Enqueue a batch of jobs, idempotently by id.
    ENQUEUE = "lua/enqueue.lua"
);
script!(
    /// Enqueue one job counted in a capped group (a session's calls).
    ENQUEUE_GROUPED = "lua/enqueue_grouped.lua"
);
script!(
    /// Count a job in a capped group before it is enqueued.
    GROUP_ADMIT = "lua/group_admit.lua"
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
script!(
    /// The last minutes of a queue's history.
    HISTORY = "lua/history.lua"
);
script!(
    /// Jobs whose payload contains a text, from a bounded scan of one state's index.
    SEARCH = "lua/search.lua"
);
script!(
    /// Running attempts per lease holder, from a bounded read of the active set.
    RUNNING = "lua/running.lua"
);

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPTS: &[(&str, &str)] = &[
        ("enqueue", include_str!("lua/enqueue.lua")),
        ("enqueue_grouped", include_str!("lua/enqueue_grouped.lua")),
        ("enqueue_tick", include_str!("lua/enqueue_tick.lua")),
        ("heartbeat", include_str!("lua/heartbeat.lua")),
        ("complete", include_str!("lua/complete.lua")),
        ("complete_fetch", include_str!("lua/complete_fetch.lua")),
        ("fail", include_str!("lua/fail.lua")),
        ("release", include_str!("lua/release.lua")),
        ("sweep", include_str!("lua/sweep.lua")),
        ("cancel", include_str!("lua/cancel.lua")),
        ("remove", include_str!("lua/remove.lua")),
        ("register_idle", include_str!("lua/register_idle.lua")),
        ("retry_dead", include_str!("lua/retry_dead.lua")),
        ("resume", include_str!("lua/resume.lua")),
        ("counts", include_str!("lua/counts.lua")),
        ("list", include_str!("lua/list.lua")),
        ("position", include_str!("lua/position.lua")),
        ("history", include_str!("lua/history.lua")),
        ("search", include_str!("lua/search.lua")),
        ("running", include_str!("lua/running.lua")),
    ];

    /// The names a script's text defines at top level, in order.
    fn defined(text: &str) -> Vec<String> {
        helpers(text).into_iter().map(|h| h.name).collect()
    }

    #[test]
    fn the_prelude_is_cut_into_every_definition_and_loses_no_line() {
        let hs = helpers(PRELUDE);
        let locals = PRELUDE.lines().filter(|l| l.starts_with("local ")).count();
        assert_eq!(hs.len(), locals);
        assert_eq!(hs[0].name, "split_member");
        assert!(hs.iter().any(|h| h.name == "HAND_OFF_MAX"));
        let joined: String = hs.iter().map(|h| h.text.as_str()).collect();
        // Only the blank and comment lines after the last definition may be dropped.
        assert!(
            PRELUDE.starts_with(joined.trim_end()),
            "a line moved or went missing"
        );
    }

    #[test]
    fn every_helper_a_script_uses_is_defined_before_it() {
        let names: BTreeSet<String> = helpers(PRELUDE).into_iter().map(|h| h.name).collect();
        for (script, body) in SCRIPTS {
            let text = assemble(body);
            let have = defined(&text);
            for h in helpers(&text) {
                let before = &have[..have.iter().position(|n| *n == h.name).unwrap()];
                for used in h.uses.intersection(&names) {
                    assert!(
                        before.contains(used),
                        "{script}: {} uses {used} undefined",
                        h.name
                    );
                }
            }
            for used in words(body).intersection(&names) {
                assert!(have.contains(used), "{script} uses {used} undefined");
            }
        }
    }

    #[test]
    fn a_script_carries_only_the_helpers_it_runs() {
        let enqueue = defined(&assemble(include_str!("lua/enqueue.lua")));
        for name in [
            "enqueue_jobs",
            "hand_off",
            "take_idle",
            "start_attempt",
            "int",
        ] {
            assert!(enqueue.iter().any(|n| n == name), "enqueue lacks {name}");
        }
        for name in ["fetch_jobs", "complete_jobs", "push_error", "to_dead"] {
            assert!(!enqueue.iter().any(|n| n == name), "enqueue carries {name}");
        }
        let complete = defined(&assemble(include_str!("lua/complete.lua")));
        assert!(complete.iter().any(|n| n == "complete_jobs"));
        assert!(
            !complete
                .iter()
                .any(|n| n == "fetch_jobs" || n == "hand_off")
        );
    }
}
