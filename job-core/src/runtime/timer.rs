//! The timer task: delayed jobs and retries wait here, in a heap keyed by start time, and
//! move to the ready channel when due. The ready channel is bounded by the capacity permits
//! the waiting jobs already hold, so moving never blocks and never deadlocks.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Envelope, Inner};

pub(crate) struct Timed {
    due: Instant,
    pub(crate) envelope: Envelope,
}

impl Timed {
    pub(crate) fn new(delay: Duration, envelope: Envelope) -> Self {
        let now = Instant::now();
        Self {
            due: now
                .checked_add(delay)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
            envelope,
        }
    }
}

/// Min-heap entry: earliest due first, then first in.
struct Entry {
    due: Instant,
    seq: u64,
    envelope: Envelope,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due && self.seq == other.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .due
            .cmp(&self.due)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Timed>) {
    let mut heap: BinaryHeap<Entry> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next_due = heap.peek().map(|e| e.due);
        tokio::select! {
            biased;
            _ = inner.stop_background.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(timed) => {
                    seq += 1;
                    heap.push(Entry { due: timed.due, seq, envelope: timed.envelope });
                }
                None => break,
            },
            _ = sleep_until(next_due), if next_due.is_some() => {
                let now = Instant::now();
                while heap.peek().is_some_and(|e| e.due <= now) {
                    if let Some(entry) = heap.pop()
                        && let Err(envelope) = inner.ready.push(entry.envelope)
                    {
                        inner.tally.left_behind(envelope.id);
                    }
                }
            }
        }
    }
    // Shutdown: everything still waiting is left behind, by name.
    rx.close();
    while let Ok(timed) = rx.try_recv() {
        inner.tally.left_behind(timed.envelope.id);
    }
    for entry in heap {
        inner.tally.left_behind(entry.envelope.id);
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}
