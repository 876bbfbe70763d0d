//! Postgres helpers: a backend in a fresh schema of its own per test, dropped afterwards.

use std::time::Duration;

use job_core::backend::Backend;
use job_core::backend::postgres::{PostgresBackend, PostgresBackendBuilder};

/// `JOB_POSTGRES_URL`, default the local server's `test` database.
pub fn postgres_url() -> String {
    std::env::var("JOB_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Fails the test with the command that starts Postgres.
pub fn unreachable(e: impl std::fmt::Display) -> ! {
    panic!(
        "Postgres is not reachable at {} ({e}). Start it with:\n    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        postgres_url()
    )
}

/// Drops the schema when dropped (also after a panic). Errors are ignored: cleanup must
/// never fail a test.
pub struct PgCleanup {
    pub schema: String,
}

impl Drop for PgCleanup {
    fn drop(&mut self) {
        drop_schema(&self.schema);
    }
}

/// Drops `schema` with everything in it, on a thread of its own (so it also works inside a
/// runtime, from `Drop`).
pub fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            use sqlx::Connection;
            let connect = sqlx::PgConnection::connect(&postgres_url());
            if let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
                let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&mut conn),
                )
                .await;
            }
        });
    })
    .join();
}

/// A fresh schema name.
pub fn fresh_schema() -> String {
    format!("t_{:016x}", fastrand::u64(..))
}

/// A connected backend in a fresh schema, built with `configure`.
pub async fn postgres_backend_with(
    configure: impl FnOnce(PostgresBackendBuilder) -> PostgresBackendBuilder,
) -> (PostgresBackend, PgCleanup) {
    let schema = fresh_schema();
    let backend = configure(PostgresBackend::builder(&postgres_url()).schema(schema.as_str()))
        .build()
        .expect("valid Postgres settings");
    let cleanup = PgCleanup { schema };
    if let Err(e) = backend.connect().await {
        unreachable(e);
    }
    (backend, cleanup)
}

/// A connected backend in a fresh schema, with the default settings.
pub async fn postgres_backend() -> (PostgresBackend, PgCleanup) {
    postgres_backend_with(|b| b).await
}
