//! `POST /signup`: a row and its job in one transaction (the Postgres store only).
//!
//! The handler inserts the user into a `users` table and enqueues the welcome
//! [`send_email`](crate::email::send_email) job with
//! [`Client::enqueue_tx`](job_core::Client::enqueue_tx) on the same transaction, then
//! commits. Both happen or neither does: a duplicate email breaks the table's unique
//! constraint, the transaction rolls back and no email is sent; a full queue or a failed
//! commit leaves no user behind either.

use std::sync::Arc;

use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::email::{SendEmail, is_valid_address};

/// The `users` table, created on the first signup (in the connection's `search_path`).
const CREATE_USERS: &str = "CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// The JSON body of `POST /signup`. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// The new user's address; stored lowercased, so `Ada@Example.com` and
    /// `ada@example.com` are one user.
    pub email: String,
}

impl SignupRequest {
    /// The normalized address, or `None` when it is not a plausible one.
    pub fn email(&self) -> Option<String> {
        let email = self.email.trim().to_ascii_lowercase();
        is_valid_address(&email).then_some(email)
    }
}

/// The welcome email a new user gets.
pub fn welcome(email: &str) -> SendEmail {
    SendEmail {
        to: email.to_owned(),
        subject: "Welcome!".to_owned(),
        body: format!("Hello {email}, thanks for signing up."),
    }
}

/// The application's pool, and whether the `users` table has been made.
#[derive(Debug, Clone)]
pub struct Signups {
    pool: PgPool,
    table: Arc<OnceCell<()>>,
}

impl Signups {
    /// Signups on the application's pool (the one the job backend shares).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            table: Arc::new(OnceCell::new()),
        }
    }

    /// A transaction on a database where the `users` table exists.
    ///
    /// # Errors
    /// The database is unreachable or refuses the statement.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.table
            .get_or_try_init(|| async {
                sqlx::query(CREATE_USERS).execute(&self.pool).await?;
                Ok::<(), sqlx::Error>(())
            })
            .await?;
        self.pool.begin().await
    }
}

/// Inserts the user on `tx`, answering its id; `Ok(None)` when the email is taken (the
/// transaction is then aborted and must be dropped).
///
/// # Errors
/// Any other database error.
pub async fn insert_user(
    tx: &mut sqlx::PgConnection,
    email: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let inserted =
        sqlx::query_scalar::<_, i64>("INSERT INTO users (email) VALUES ($1) RETURNING id")
            .bind(email)
            .fetch_one(tx)
            .await;
    match inserted {
        Ok(id) => Ok(Some(id)),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_normalized() {
        let request = |email: &str| SignupRequest {
            email: email.to_owned(),
        };
        assert_eq!(
            request(" Ada@Example.COM ").email().as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(request("not an address").email(), None);
        assert_eq!(request("<script>@x.y").email(), None);
        assert_eq!(welcome("ada@example.com").to, "ada@example.com");
    }
}
