//! Connections: the shared multiplexed connection (it reconnects in the background), the
//! deadline on every call, script invocations, the check at connect, and the dedicated
//! connections that block waiting for work (wake-ups).

use std::collections::HashMap;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, RedisError, Script, ScriptInvocation};
use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use super::RedisBackend;
use crate::backend::BackendError;
use crate::job::{JobId, is_valid_name};

/// Idle dedicated connections kept for `wait_for_work`.
const MAX_IDLE_WAITERS: usize = 8;

impl RedisBackend {
    fn manager(&self) -> Result<ConnectionManager, BackendError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let s = &self.settings;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connection_timeout))
            .set_response_timeout(Some(s.response_timeout))
            // Fail fast while Redis is down: the runtime has its own backoff, and a command
            // waiting on a long reconnect would hold a worker. The next command reconnects.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(unavailable)?;
        Ok(self.manager.get_or_init(|| manager).clone())
    }

    /// An upper bound on one call through the manager: a reconnect (two connection attempts
    /// and a backoff pause) plus a reply.
    pub(super) fn call_deadline(&self) -> Duration {
        let s = &self.settings;
        s.connection_timeout * 2 + s.response_timeout + Duration::from_millis(1500)
    }

    /// A script call with the shared keys declared and the key base as `ARGV[1]`.
    pub(super) fn invocation<'s>(&self, script: &'s Script) -> ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        for key in &self.keys {
            inv.key(key);
        }
        inv.arg(&self.base);
        inv
    }

    pub(super) async fn run_script<T: ::redis::FromRedisValue>(
        &self,
        inv: ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let mut conn = self.manager()?;
        match tokio::time::timeout(self.call_deadline(), inv.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(timed_out()),
        }
    }

    pub(super) async fn run_cmd<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
    ) -> Result<T, BackendError> {
        let mut conn = self.manager()?;
        match tokio::time::timeout(self.call_deadline(), cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(timed_out()),
        }
    }

    /// Runs one fenced script that answers 1 (done) or 0 (lease lost).
    pub(super) async fn fenced(
        &self,
        id: JobId,
        inv: ScriptInvocation<'_>,
    ) -> Result<(), BackendError> {
        match self.run_script::<i64>(inv).await? {
            1 => Ok(()),
            _ => Err(BackendError::LeaseLost(id)),
        }
    }

    /// A dedicated connection for a blocking wait: an idle one, or a new one opened with
    /// backoff before `deadline`.
    async fn waiter(&self, deadline: Instant) -> Option<MultiplexedConnection> {
        if let Some(conn) = self.idle_waiters().pop() {
            return Some(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connection_timeout))
            // The wait sets its own deadline, longer than the server-side block.
            .set_response_timeout(None);
        let open = || async {
            self.client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times();
        let opening = open
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e: &RedisError, pause| {
                tracing::debug!(error = %e, retry_in = ?pause, "opening a Redis connection for blocking waits failed");
            });
        match tokio::time::timeout_at(deadline, opening).await {
            Ok(Ok(conn)) => Some(conn),
            _ => None,
        }
    }

    fn idle_waiters(&self) -> std::sync::MutexGuard<'_, Vec<MultiplexedConnection>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put_back_waiter(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle_waiters();
        if idle.len() < MAX_IDLE_WAITERS {
            idle.push(conn);
        }
    }

    pub(super) async fn wait(&self, queues: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let keys: Vec<String> = queues
            .iter()
            .filter(|q| is_valid_name(q))
            .map(|q| format!("{}signal:{q}", self.base))
            .collect();
        if keys.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        loop {
            let Some(mut conn) = self.waiter(deadline).await else {
                break;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ms = remaining.as_millis();
            if ms == 0 {
                self.put_back_waiter(conn);
                return;
            }
            // BLPOP's timeout is in seconds (decimals since Redis 6); 0 would block forever.
            let block = format!("{}.{:03}", ms / 1000, ms % 1000);
            let mut cmd = ::redis::cmd("BLPOP");
            cmd.arg(&keys).arg(block);
            let limit = remaining + self.settings.response_timeout;
            // If this future is dropped mid-wait, `conn` is dropped with it: the server sees
            // the connection close and the next wait starts on a clean connection.
            let reply = tokio::time::timeout(limit, cmd.query_async::<::redis::Value>(&mut conn));
            match reply.await {
                Ok(Ok(_)) => {
                    self.put_back_waiter(conn);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "blocking wait for work failed; reconnecting");
                }
                Err(_) => {
                    tracing::debug!("blocking wait for work got no reply in time; reconnecting");
                }
            }
            drop(conn);
            // Never spin: an error that repeats at once (a refused command) waits a little.
            let pause = Duration::from_millis(100);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        tokio::time::sleep_until(deadline).await;
    }

    pub(super) async fn check(&self) -> Result<(), BackendError> {
        let pong: String = self.run_cmd(&::redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(BackendError::Unavailable(
                format!("unexpected reply to PING: {pong:?}").into(),
            ));
        }
        let mut info = ::redis::cmd("INFO");
        info.arg("server");
        if let Ok(info) = self.run_cmd::<String>(&info).await {
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(str::trim);
            let mut parts = version.unwrap_or_default().split('.');
            let major = parts.next().and_then(|v| v.parse::<u32>().ok());
            let minor = parts.next().and_then(|v| v.parse::<u32>().ok());
            if let (Some(major), Some(minor)) = (major, minor)
                && (major, minor) < (6, 2)
            {
                return Err(BackendError::Unavailable(
                    format!(
                        "Redis {} is too old: this backend needs Redis 6.2 or later (LPOP with a count, decimal BLPOP timeouts)",
                        version.unwrap_or_default()
                    )
                    .into(),
                ));
            }
        }
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        match self.run_cmd::<HashMap<String, String>>(&cmd).await {
            Ok(config) => match config.get("maxmemory-policy") {
                Some(policy) if policy == "noeviction" => {}
                Some(policy) => tracing::warn!(
                    policy = %policy,
                    "Redis maxmemory-policy is not `noeviction`: when Redis is full it may evict job keys and lose jobs; set `maxmemory-policy noeviction`"
                ),
                None => tracing::warn!(
                    "could not read Redis maxmemory-policy; make sure it is `noeviction` or jobs may be evicted"
                ),
            },
            Err(e) => tracing::warn!(
                error = %error_chain(&e),
                "could not read Redis maxmemory-policy (CONFIG may be forbidden); make sure it is `noeviction` or jobs may be evicted"
            ),
        }
        let mut conn = self.manager()?;
        for script in self.scripts.all() {
            let load = script.load_async(&mut conn);
            match tokio::time::timeout(self.call_deadline(), load).await {
                Ok(r) => {
                    r.map_err(unavailable)?;
                }
                Err(_) => return Err(timed_out()),
            }
        }
        Ok(())
    }
}

pub(super) fn unavailable(e: RedisError) -> BackendError {
    BackendError::Unavailable(Box::new(e))
}

fn timed_out() -> BackendError {
    BackendError::Unavailable("no reply from Redis in time".into())
}

/// An error and its sources as one line (kept local: this module uses only job-core's
/// public API, so it can move to a crate of its own).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
