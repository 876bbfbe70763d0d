//! Announcing job ends: [`Backend::watch_finish`](crate::backend::Backend::watch_finish) on
//! Postgres. `watch.sql` marks a live job `watched`; a trigger (schema version 5) sends
//! `=<id>` with `pg_notify` on the backend's channel when a watched job ends or its row is
//! deleted, delivered when that transaction commits. The backend's `LISTEN` connection,
//! the one that wakes idle workers, hears it and fires the signal; it fires it too each time
//! it listens again after a lost connection (notifications sent meanwhile are lost).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::PostgresBackend;
use super::conn::{bounded, sql};
use super::decode::get_at;
use crate::backend::BackendError;
use crate::job::JobId;

/// How long a watch waits for the `LISTEN` connection (at the first watch of a process that
/// has not listened yet).
const LISTENING_WITHIN: Duration = Duration::from_secs(5);

impl PostgresBackend {
    pub(super) async fn do_watch(&self, id: JobId) -> Result<Arc<Notify>, BackendError> {
        self.ensure_schema().await?;
        self.wakeups.start(&self.pool, &self.channel);
        let ended = &self.wakeups.ended;
        // Listening before the job is marked, or its announcement could reach no one.
        if !ended.ready(LISTENING_WITHIN).await {
            return Err(BackendError::Unavailable(
                "the Postgres LISTEN connection is not listening".into(),
            ));
        }
        let q = sqlx::query(sql(&self.sql.watch)).bind(id.as_uuid());
        let row = bounded(self.limit(), q.fetch_one(&self.pool)).await?;
        match get_at::<Option<i16>>(&row, 0)? {
            Some(_) => Ok(ended.signal()),
            None => Err(BackendError::NotFound(id)),
        }
    }
}
