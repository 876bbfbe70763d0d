//! The email server on Postgres (`--postgres`): `POST /signup` inserts the user and
//! enqueues the welcome email in one transaction, so both happen or neither does. Each
//! test uses fresh schemas (the job tables', and the application's `users` table through
//! the URL's `search_path`) dropped afterwards. Needs the Postgres server
//! (`JOB_POSTGRES_URL`, default the local `test` database); without it the tests fail.

mod common;

use std::time::Duration;

use common::pg::{PgCleanup, fresh_schema, postgres_url, unreachable};
use job_examples::testing::{Service, eventually};
use serde_json::{Value, json};

const BIN: &str = "email-server";
const WAIT: Duration = Duration::from_secs(10);

/// A job schema and an application schema, both fresh, dropped when this is dropped.
struct Schemas {
    jobs: PgCleanup,
    app: PgCleanup,
}

impl Schemas {
    fn new() -> Self {
        let app = fresh_schema();
        block_on(async {
            let mut conn = connect().await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{app}\"")))
                .execute(&mut conn)
                .await
                .unwrap();
        });
        Self {
            jobs: PgCleanup {
                schema: fresh_schema(),
            },
            app: PgCleanup { schema: app },
        }
    }

    /// The server's URL: the application's tables in the app schema.
    fn url(&self) -> String {
        let url = postgres_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{}", self.app.schema)
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--postgres".to_owned(),
            self.url(),
            "--postgres-schema".to_owned(),
            self.jobs.schema.clone(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// The emails in the `users` table, in insertion order.
    fn users(&self) -> Vec<String> {
        let sql = format!(
            "SELECT email FROM \"{}\".users ORDER BY id",
            self.app.schema
        );
        block_on(async {
            let mut conn = connect().await;
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .unwrap()
        })
    }

    /// Every job row in the job schema, whatever its state (succeeded rows are kept for
    /// the default ten minutes).
    fn job_rows(&self) -> i64 {
        let sql = format!("SELECT count(*) FROM \"{}\".jobs", self.jobs.schema);
        block_on(async {
            let mut conn = connect().await;
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap()
        })
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn connect() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&postgres_url())
        .await
        .unwrap_or_else(|e| unreachable(e))
}

fn start(schemas: &Schemas, extra: &[&str]) -> Service {
    let args = schemas.args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Service::start(BIN, &args)
}

fn signup(server: &Service, email: &str) -> job_examples::testing::Response {
    server.post_json("/signup", &json!({ "email": email }))
}

fn wait_for_state(server: &Service, id: &str, state: &str) -> Value {
    let path = format!("/jobs/{id}");
    eventually(WAIT, || {
        let status = server.get(&path).json();
        (status["state"] == state).then_some(status)
    })
    .unwrap_or_else(|| {
        panic!(
            "job {id} never reached `{state}`: {}",
            server.get(&path).body
        )
    })
}

/// A signup commits the user and its welcome email together; the same email again
/// (in any case) is a 409 that adds no user and enqueues nothing.
#[test]
fn signup_commits_the_user_and_its_welcome_email_together() {
    let schemas = Schemas::new();
    let server = start(&schemas, &["--mailer-latency", "20ms"]);

    let response = signup(&server, "Ada@Example.com");
    assert_eq!(response.status, 201, "{}", response.body);
    let body = response.json();
    let job_id = body["job_id"].as_str().expect("job_id").to_owned();
    assert!(body["user_id"].as_i64().is_some(), "{body}");
    assert_eq!(
        response.header("location"),
        Some(&*format!("/jobs/{job_id}"))
    );
    let status = wait_for_state(&server, &job_id, "succeeded");
    assert_eq!(status["job"], "send_email");
    // The result is kept in the job's row: the message id the mailer logged.
    let message_id = status["result"]["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a result with a message id: {status}"))
        .to_owned();
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l.contains("email sent") && l.contains(&job_id) && l.contains(&message_id)),
        "the welcome email was not sent with the message id of the result"
    );
    assert_eq!(schemas.users(), ["ada@example.com"]);
    assert_eq!(schemas.job_rows(), 1);

    let again = signup(&server, "ada@example.com");
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(
        again.json()["error"],
        "an account with this email already exists"
    );
    assert_eq!(schemas.users(), ["ada@example.com"]);
    assert_eq!(schemas.job_rows(), 1, "a refused signup enqueued an email");

    // Bad input is refused before the database is touched.
    let bad = signup(&server, "<script>alert(1)</script>");
    assert_eq!(bad.status, 422, "{}", bad.body);
    let unknown = server.post_json(
        "/signup",
        &json!({ "email": "b@example.com", "admin": true }),
    );
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    assert_eq!(schemas.users(), ["ada@example.com"]);
    assert_eq!(schemas.job_rows(), 1);

    let second = signup(&server, "grace@example.com");
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(schemas.users(), ["ada@example.com", "grace@example.com"]);
    assert_eq!(schemas.job_rows(), 2);
}

/// When the job cannot be enqueued (the store is full), the user is not created either:
/// the transaction that held both is rolled back.
#[test]
fn a_signup_whose_email_cannot_be_enqueued_creates_no_user() {
    let schemas = Schemas::new();
    let server = start(
        &schemas,
        &[
            "--capacity",
            "1",
            "--concurrency",
            "1",
            "--mailer-latency",
            "10s",
        ],
    );
    let first = signup(&server, "ada@example.com");
    assert_eq!(first.status, 201, "{}", first.body);
    let job_id = first.json()["job_id"].as_str().expect("job_id").to_owned();
    wait_for_state(&server, &job_id, "running");

    let refused = signup(&server, "grace@example.com");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(schemas.users(), ["ada@example.com"]);
    assert_eq!(schemas.job_rows(), 1);
}

/// Without Postgres there is no transaction to share: the route says what it needs.
#[test]
fn signup_without_postgres_answers_501() {
    let server = Service::start(BIN, &["--mailer-latency", "20ms"]);
    let response = signup(&server, "ada@example.com");
    assert_eq!(response.status, 501, "{}", response.body);
    assert!(
        response.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--postgres"),
        "{}",
        response.body
    );
}

/// The same email server code on Postgres: jobs still queued when it stops run on the
/// next server on the same schema.
#[test]
fn on_postgres_jobs_survive_a_restart() {
    let schemas = Schemas::new();
    let mut first = start(
        &schemas,
        &[
            "--mailer-latency",
            "5s",
            "--concurrency",
            "1",
            "--shutdown-timeout",
            "100ms",
        ],
    );
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let r = signup(&first, &format!("user{i}@example.com"));
            assert_eq!(r.status, 201, "{}", r.body);
            r.json()["job_id"].as_str().expect("job_id").to_owned()
        })
        .collect();
    wait_for_state(&first, &ids[0], "running");
    first.terminate();
    assert!(first.wait_exit(WAIT).success());

    let second = start(&schemas, &["--mailer-latency", "20ms"]);
    for id in &ids {
        wait_for_state(&second, id, "succeeded");
    }
}

/// `--redis` and `--postgres` together are refused at start, naming both.
#[test]
fn redis_and_postgres_together_are_refused() {
    let (status, logs) = job_examples::testing::run_to_exit(
        BIN,
        &[
            "--redis",
            "redis://127.0.0.1:6379",
            "--postgres",
            &postgres_url(),
        ],
        WAIT,
    );
    assert!(!status.success());
    let text = logs.join("\n");
    assert!(
        text.contains("--redis") && text.contains("--postgres"),
        "{text}"
    );
}
