//! The script registry: one Lua script per state change, each in `scripts/<name>.lua` with
//! a header comment giving its arguments and reply, and the shared `scripts/prelude.lua`
//! (key names and helpers) put in front of each. Scripts are loaded once and run with
//! `EVALSHA` (redis-rs falls back to `EVAL` after a `SCRIPT FLUSH` or a restart).

use ::redis::Script;

/// The Lua scripts, each one state change. `KEYS` = queues, scheduled, leased, dead,
/// garbage, live, finished; `ARGV[1]` = the key base `{prefix}:`.
pub(super) struct Scripts {
    pub(super) enqueue: Script,
    pub(super) reserve: Script,
    pub(super) ack: Script,
    pub(super) retry: Script,
    pub(super) dead_letter: Script,
    pub(super) extend: Script,
    pub(super) release: Script,
    pub(super) reap: Script,
    pub(super) requeue: Script,
    pub(super) stats: Script,
    pub(super) dead_letters: Script,
    pub(super) find_dead_letter: Script,
    pub(super) insert_raw: Script,
    pub(super) sweep: Script,
    pub(super) cancel: Script,
    pub(super) cancelled: Script,
    pub(super) progress: Script,
    pub(super) watch: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            enqueue: s(include_str!("scripts/enqueue.lua")),
            reserve: s(include_str!("scripts/reserve.lua")),
            ack: s(include_str!("scripts/ack.lua")),
            retry: s(include_str!("scripts/retry.lua")),
            dead_letter: s(include_str!("scripts/dead_letter.lua")),
            extend: s(include_str!("scripts/extend.lua")),
            release: s(include_str!("scripts/release.lua")),
            reap: s(include_str!("scripts/reap.lua")),
            requeue: s(include_str!("scripts/requeue.lua")),
            stats: s(include_str!("scripts/stats.lua")),
            dead_letters: s(include_str!("scripts/dead_letters.lua")),
            find_dead_letter: s(include_str!("scripts/find_dead_letter.lua")),
            insert_raw: s(include_str!("scripts/insert_raw.lua")),
            sweep: s(include_str!("scripts/sweep.lua")),
            cancel: s(include_str!("scripts/cancel.lua")),
            cancelled: s(include_str!("scripts/cancelled.lua")),
            progress: s(include_str!("scripts/progress.lua")),
            watch: s(include_str!("scripts/watch.lua")),
        }
    }

    pub(super) fn all(&self) -> [&Script; 18] {
        [
            &self.enqueue,
            &self.reserve,
            &self.ack,
            &self.retry,
            &self.dead_letter,
            &self.extend,
            &self.release,
            &self.reap,
            &self.requeue,
            &self.stats,
            &self.dead_letters,
            &self.find_dead_letter,
            &self.insert_raw,
            &self.sweep,
            &self.cancel,
            &self.cancelled,
            &self.progress,
            &self.watch,
        ]
    }
}

/// Key names and helpers every script starts with.
const PRELUDE: &str = include_str!("scripts/prelude.lua");
