//! A shared backend is a backend: `Arc<B>` forwards every method to `B`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{
    Backend, BackendError, BackendStats, BoxFuture, CancelOutcome, Capabilities, Envelope,
    Extended, LeaseToken, Payload, Reaped, Reservation, Retry,
};
use crate::dead_letter::DeadLetter;
use crate::job::JobId;
use crate::observe::status::JobStatus;

/// A shared backend is a backend: keep an `Arc` to inspect the store or to start a second
/// runtime on it (a restart, in tests).
impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).connect()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn enqueue(
        &self,
        envelope: Envelope,
        capacity: u64,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).enqueue(envelope, capacity)
    }
    fn enqueue_batch<'a>(
        &'a self,
        envelopes: &'a [Envelope],
        capacity: u64,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        (**self).enqueue_batch(envelopes, capacity)
    }
    fn enqueue_unique<'a>(
        &'a self,
        envelope: Envelope,
        capacity: u64,
        unique: &'a crate::unique::UniqueKey,
    ) -> BoxFuture<'a, Result<crate::Enqueued, BackendError>> {
        (**self).enqueue_unique(envelope, capacity, unique)
    }
    fn ack_batch<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        (**self).ack_batch(acks)
    }
    fn reserve<'a>(
        &'a self,
        queues: &'a [String],
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>> {
        (**self).reserve(queues, max, lease)
    }
    fn wait_for_work<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, ()> {
        (**self).wait_for_work(queues, timeout)
    }
    fn idle_poll(&self) -> Duration {
        (**self).idle_poll()
    }
    #[cfg(feature = "postgres")]
    fn postgres(&self) -> Option<&super::postgres::PostgresBackend> {
        (**self).postgres()
    }
    fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).ack(id, token)
    }
    fn retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).retry(id, token, retry)
    }
    fn dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).dead_letter(id, token, record)
    }
    fn extend<'a>(
        &'a self,
        leases: &'a [(JobId, LeaseToken)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Extended, BackendError>> {
        (**self).extend(leases, lease)
    }
    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).release(id, token)
    }
    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
        (**self).reap(max_recoveries)
    }
    fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
        (**self).status(id)
    }
    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
        (**self).stats()
    }
    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
        (**self).dead_letters(limit)
    }
    fn find_dead_letter(
        &self,
        id: JobId,
    ) -> BoxFuture<'_, Result<Option<DeadLetter>, BackendError>> {
        (**self).find_dead_letter(id)
    }
    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).requeue(id)
    }
    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<CancelOutcome, BackendError>> {
        (**self).cancel(id)
    }
    fn finish_cancelled(
        &self,
        id: JobId,
        token: LeaseToken,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).finish_cancelled(id, token)
    }
    fn record_progress<'a>(
        &'a self,
        updates: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        (**self).record_progress(updates)
    }
    fn ack_results<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        (**self).ack_results(acks)
    }
    fn watch_finish(&self, id: JobId) -> BoxFuture<'_, Result<Arc<Notify>, BackendError>> {
        (**self).watch_finish(id)
    }
}
