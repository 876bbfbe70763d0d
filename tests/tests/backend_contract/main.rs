//! The backend contract suite: the promises of the [`Backend`] trait's docs, checked by
//! calling the trait directly (no runtime in between), against every backend. A backend
//! joins by supplying a factory that makes a [`Store`]: the backend as `Arc<dyn Backend>`, a
//! guard that cleans up its storage when dropped, and a way to plant a raw malformed record.
//! `contract!(factory)` expands every check into a test of its own; a check a backend is
//! known to fail is listed with the bug, and its test then asserts that the check FAILS, so
//! it turns red the day the bug is fixed (and the entry must go).
//!
//! A new backend needs a factory (see `memory_store`) and one line:
//! `mod mine { contract!(super::my_store); }`. The checks live in `leases.rs` (fencing,
//! repeated and spent write-backs, release, extend, expiry), `enqueue.rs` (stored ids,
//! capacity, delays, order, queues, reservations, wake-ups) and `records.rs` (malformed
//! records, statuses, counts, dead letters), `cancel.rs` (cancel by id), `results.rs`
//! (results kept by the ack) and `watch.rs` (announced ends); each asserts
//! what the trait's docs promise.
//!
//! Real servers: `JOB_REDIS_URL` (default the local Redis), `JOB_POSTGRES_URL` (default
//! the local `test` database), `JOB_AMQP_URL` (default the local RabbitMQ) and
//! `JOB_AZURE_QUEUE` (default Azurite on 127.0.0.1:10001); a missing server fails these
//! tests, it never skips them.
//!
//! Leases are short (300 ms) and every wait polls with a deadline, so a loaded machine makes
//! the tests slower, never red.

mod cancel;
#[path = "../common/mod.rs"]
mod common;
mod enqueue;
mod leases;
mod records;
mod results;
mod support;
mod watch;

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use job_core::backend::memory::MemoryBackend;
use job_core::backend::{Backend, BoxFuture};
use job_core::prelude::*;

use self::cancel::*;
use self::enqueue::*;
use self::leases::*;
use self::records::*;
use self::results::*;
use self::watch::*;

/// Plants a raw record that is not a job envelope: (id, queue, raw text).
type Plant = Box<dyn Fn(JobId, &str, &str) -> BoxFuture<'static, ()> + Send + Sync>;

/// One backend under test, fresh for each check.
pub(crate) struct Store {
    backend: Arc<dyn Backend>,
    plant: Plant,
    /// Cleans up the backend's storage when dropped (after the two fields above).
    _guard: Box<dyn Any + Send>,
}

impl Store {
    pub(crate) fn b(&self) -> &dyn Backend {
        &*self.backend
    }

    pub(crate) async fn plant_raw(&self, id: JobId, queue: &str, raw: &str) {
        (self.plant)(id, queue, raw).await;
    }
}

async fn memory_store() -> Store {
    let memory = Arc::new(MemoryBackend::new());
    let m = memory.clone();
    Store {
        backend: memory,
        plant: Box::new(move |id, queue, raw| {
            m.insert_raw(id, queue, raw);
            Box::pin(std::future::ready(()))
        }),
        _guard: Box::new(()),
    }
}

async fn redis_store() -> Store {
    let (redis, guard) = common::redis_backend().await;
    let redis = Arc::new(redis);
    let r = redis.clone();
    Store {
        backend: redis,
        plant: Box::new(move |id, queue, raw| {
            let (r, queue, raw) = (r.clone(), queue.to_owned(), raw.to_owned());
            Box::pin(async move { r.insert_raw(id, &queue, &raw).await.unwrap() })
        }),
        _guard: Box::new(guard),
    }
}

async fn postgres_store() -> Store {
    let (pg, guard) = common::pg::postgres_backend().await;
    let pg = Arc::new(pg);
    let p = pg.clone();
    Store {
        backend: pg,
        plant: Box::new(move |id, queue, raw| {
            let (p, queue, raw) = (p.clone(), queue.to_owned(), raw.to_owned());
            Box::pin(async move { p.insert_raw(id, &queue, &raw).await.unwrap() })
        }),
        _guard: Box::new(guard),
    }
}

async fn amqp_store() -> Store {
    let (amqp, guard) = common::amqp::amqp_backend().await;
    let a = amqp.clone();
    Store {
        backend: amqp,
        plant: Box::new(move |id, queue, raw| {
            let (a, queue, raw) = (a.clone(), queue.to_owned(), raw.to_owned());
            Box::pin(async move { a.insert_raw(id, &queue, &raw).await.unwrap() })
        }),
        _guard: Box::new(guard),
    }
}

async fn azure_store() -> Store {
    let (azure, guard) = common::azure::azure_backend().await;
    let azure = Arc::new(azure);
    let a = azure.clone();
    Store {
        backend: azure,
        plant: Box::new(move |id, queue, raw| {
            let (a, queue, raw) = (a.clone(), queue.to_owned(), raw.to_owned());
            Box::pin(async move { a.insert_raw(id, &queue, &raw).await.unwrap() })
        }),
        _guard: Box::new(guard),
    }
}

// ---------------------------------------------------------------------------------------
// The harness

/// Runs `check` on a fresh store from `factory`. A check listed in `known` (with the bug
/// that breaks it) must fail: the test then passes, and fails once the check passes.
async fn run<F, FF, C, CF>(check: &str, factory: F, body: C, known: &[(&str, &str)])
where
    F: FnOnce() -> FF,
    FF: Future<Output = Store>,
    C: FnOnce(Store) -> CF,
    CF: Future<Output = ()>,
{
    let store = factory().await;
    let backend = store.backend.name();
    let outcome = AssertUnwindSafe(body(store)).catch_unwind().await;
    match (known.iter().find(|(name, _)| *name == check), outcome) {
        (None, Ok(())) => {}
        (None, Err(panic)) => std::panic::resume_unwind(panic),
        (Some((_, bug)), Err(_)) => {
            eprintln!("`{check}` fails on {backend} as expected (known bug: {bug})");
        }
        (Some((_, bug)), Ok(())) => panic!(
            "`{check}` passes on {backend}, but it is listed as a known failure ({bug}): \
             the bug looks fixed; remove the entry from this backend's known failures"
        ),
    }
}

/// One test per check for a backend: `contract!(factory)`, or with known failures
/// `contract!(factory, known_failures: { check: "the bug", ... })`.
macro_rules! contract {
    ($factory:path $(, known_failures: { $($bug:ident: $why:literal),* $(,)? })? $(,)?) => {
        const KNOWN_FAILURES: &[(&str, &str)] = &[$($((stringify!($bug), $why)),*)?];
        // Every entry names a check (a misspelt one would silently never apply).
        $($(const _: () = { let _ = super::$bug; };)*)?
        contract!(@checks $factory;
            stale_lease_holders_change_nothing,
            repeated_write_backs_succeed_and_change_nothing,
            other_write_backs_with_a_spent_token_are_refused,
            enqueue_of_a_stored_id_changes_nothing,
            enqueue_batch_of_a_stored_id_changes_nothing,
            capacity_refuses_what_does_not_fit,
            delayed_jobs_wait_for_their_time,
            fifo_within_a_queue,
            queues_are_independent,
            release_makes_the_job_reservable_at_once,
            malformed_records_are_reserved_as_malformed,
            status_follows_every_state,
            stats_count_every_state,
            dead_letters_are_listed_oldest_first_and_requeued,
            dead_letters_are_found_by_id,
            extend_moves_the_lease_expiry,
            expired_leases_are_recovered_then_dead_lettered_as_poison_pills,
            status_time_moves_only_with_the_job,
            reserve_hands_back_the_envelope_as_stored,
            reserve_fills_max_when_enough_are_ready,
            wait_for_work_wakes_on_enqueue,
            cancels_end_jobs_as_the_trait_says,
            ack_results_keep_each_result_fenced,
            watched_ends_are_announced,
        );
    };
    (@checks $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                super::run(stringify!($check), $factory, super::$check, KNOWN_FAILURES).await;
            }
        )*
    };
}

mod memory {
    contract!(super::memory_store);
}

mod redis {
    contract!(super::redis_store);
}

mod postgres {
    contract!(super::postgres_store);
}

mod amqp {
    contract!(super::amqp_store);
}

mod azure {
    // Limits of Azure Queue Storage itself (the README's guarantees table says so too):
    contract!(super::azure_store, known_failures: {
        repeated_write_backs_succeed_and_change_nothing: "a delete repeated after its reply was lost gets 404, the same answer as a message another receiver holds, so it is reported LeaseLost (the job is gone either way: nothing changes)",
        expired_leases_are_recovered_then_dead_lettered_as_poison_pills: "the store counts deliveries, not expiries: a poison pill is moved to the poison queue at its next delivery (by reserve), not by reap",
    });
}
