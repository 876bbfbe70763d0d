//! Deliveries this process holds (the leases), and the outcomes written back recently (so a
//! repeated write-back is recognised).
//!
//! A lease token is `generation << 64 | delivery tag`: the delivery tag names the delivery
//! on its channel, the generation the connection it came on. A token is only ever good on
//! the connection that issued it; when that connection dies, the broker takes every
//! delivery on it back, and the token matches nothing held any more.

use std::collections::{HashMap, VecDeque};

use lapin::Acker;
use tokio::time::Instant;

use super::decode::Meta;
use crate::backend::LeaseToken;
use crate::job::JobId;

/// Outcomes remembered per backend (oldest forgotten first).
const SETTLED_KEPT: usize = 65_536;

/// A delivery handed out by `reserve` and not yet written back.
pub(super) struct Held {
    /// The job's id (a stand-in for a malformed message without one).
    pub(super) id: JobId,
    pub(super) acker: Acker,
    /// The job's fields as its message carried them, or `None` for a malformed message.
    pub(super) meta: Option<Meta>,
    /// Deliveries of this message before this one.
    pub(super) earlier: u32,
    /// The message body.
    pub(super) body: Vec<u8>,
    /// The job queue it was consumed from.
    pub(super) queue: String,
    /// The lease the runtime asked for, renewed by `extend`: past it, the reaper gives the
    /// delivery back to the broker (as if its holder had died).
    pub(super) expires: Instant,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("meta", &self.meta)
            .field("earlier", &self.earlier)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// Attempts started, counting this delivery's.
    pub(super) fn attempt(&self) -> u32 {
        self.meta
            .as_ref()
            .map_or(0, |m| m.attempt)
            .saturating_add(self.earlier)
            .saturating_add(1)
    }

    /// Recoveries so far (every earlier delivery was one).
    pub(super) fn recoveries(&self) -> u32 {
        self.meta
            .as_ref()
            .map_or(0, |m| m.recoveries)
            .saturating_add(self.earlier)
    }
}

/// What a write-back did with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ack,
    Retry,
    Dead,
    Release,
}

/// The last outcomes written, by token.
#[derive(Debug, Default)]
pub(super) struct Settled {
    by_token: HashMap<u128, (JobId, Outcome)>,
    order: VecDeque<u128>,
}

impl Settled {
    pub(super) fn record(&mut self, token: u128, id: JobId, outcome: Outcome) {
        if self.by_token.insert(token, (id, outcome)).is_none() {
            self.order.push_back(token);
        }
        while self.order.len() > SETTLED_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_token.remove(&old);
            }
        }
    }

    pub(super) fn get(&self, token: u128) -> Option<(JobId, Outcome)> {
        self.by_token.get(&token).copied()
    }
}

pub(super) fn token(generation: u64, delivery_tag: u64) -> u128 {
    (u128::from(generation) << 64) | u128::from(delivery_tag)
}

/// The number of a token this backend made, if it is one.
pub(super) fn number(token: &LeaseToken) -> Option<u128> {
    token.as_u128()
}

/// A job id for a message that has none (a malformed one): fixed per token, so every
/// write-back of it names the same id.
pub(super) fn stand_in_id() -> JobId {
    JobId::new()
}
