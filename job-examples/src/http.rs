//! The HTTP surface: enqueue, signup (on Postgres), job status, runtime status, health,
//! metrics, and the admin dead-letter routes. Every error answers `{"error": "..."}`.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use job_core::{
    CancelError, Cancellation, Client, EnqueueError, HealthStatus, Job, JobId, QueryError,
    RequeueError, Unique,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::{Access, AdminToken};
use crate::email::SendEmailRequest;
use crate::signup::{SignupRequest, Signups, insert_user, welcome};

/// The largest `POST /send-email` body accepted (64 KiB); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Seconds a client is told to wait (`Retry-After`) when the queue is full.
pub const RETRY_AFTER_SECS: u32 = 1;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    client: Client,
    metrics: Option<PrometheusHandle>,
    admin: AdminToken,
    signups: Option<Signups>,
}

impl AppState {
    /// State over a runtime's client; `metrics` renders `/metrics` (404 without it).
    pub fn new(client: Client, metrics: Option<PrometheusHandle>, admin: AdminToken) -> Self {
        Self {
            client,
            metrics,
            admin,
            signups: None,
        }
    }

    /// Enables `POST /signup` on the application's Postgres pool (without it, the route
    /// answers 501).
    #[must_use]
    pub fn with_postgres(mut self, pool: sqlx::PgPool) -> Self {
        self.signups = Some(Signups::new(pool));
        self
    }
}

/// The routes every example serves: `/health/live`, `/health/ready`, `/metrics`,
/// `/jobs/status`, `GET /jobs/{id}`, and the admin routes: `DELETE /jobs/{id}` (cancel) and
/// `/dead-letters`.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/jobs/status", get(runtime_status))
        .route("/jobs/{id}", get(job_status).delete(cancel_job))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/{id}/requeue", post(requeue))
        .fallback(not_found)
        .with_state(state)
}

/// The email server's routes: [`ops_router`] plus `POST /send-email` and `POST /signup`.
pub fn email_router(state: AppState) -> Router {
    let send = Router::new()
        .route("/send-email", post(send_email))
        .route("/signup", post(signup))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
    ops_router(state).merge(send)
}

/// An error answer: a status and `{"error": "..."}`, plus `Retry-After` when the client
/// should come back later and `WWW-Authenticate` on 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// 503: the runtime is shutting down.
    fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: not accepting new jobs",
        )
    }

    /// 503 with `Retry-After`: the runtime is at capacity.
    fn queue_full() -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "job queue is full: retry later",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `202 Accepted`, `{"job_id"}` and `Location: /jobs/<id>`.
fn accepted(id: JobId) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({ "job_id": id.to_string() })),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed job id `{raw}`: expected a UUID"),
        )
    })
}

/// A content type the JSON endpoint accepts: none at all, or `application/json` (with any
/// parameters) or a `+json` type.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Reads a JSON request body: 413 over [`MAX_BODY_BYTES`], 415 for another content type,
/// 400 for malformed JSON, 422 for JSON of the wrong shape.
fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is over the {MAX_BODY_BYTES}-byte limit"),
            )
        } else {
            ApiError::new(rejection.status(), rejection.body_text())
        }
    })?;
    if !is_json_content_type(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected `Content-Type: application/json`",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"))
        }
    })
}

/// `POST /send-email`: validate, enqueue without waiting, answer 202 with the job's id.
async fn send_email(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if state.client.is_stopping() {
        return Err(ApiError::shutting_down());
    }
    let request: SendEmailRequest = json_body(&headers, body)?;
    let job = request
        .validate()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    // Without waiting for room on any backend: a full store answers 503 at once, and on a
    // durable one the 202 comes only after the store has the job.
    let Some(key) = idempotency_key(&headers)? else {
        let id = state
            .client
            .enqueue_if_room(job)
            .await
            .map_err(|e| enqueue_failed(&e))?;
        tracing::info!(job_id = %id, "email job enqueued");
        return Ok(accepted(id));
    };
    let enqueued = state
        .client
        .enqueue_unique_if_room(job, Unique::new(key, IDEMPOTENCY_WINDOW))
        .await
        .map_err(|e| enqueue_failed(&e))?;
    let mut response = accepted(enqueued.id());
    if enqueued.is_new() {
        tracing::info!(job_id = %enqueued.id(), "email job enqueued");
    } else {
        tracing::info!(job_id = %enqueued.id(), "repeated Idempotency-Key: the first request's job");
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// How long an `Idempotency-Key` of `POST /send-email` names its job (Stripe's 24 h).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The request's `Idempotency-Key`, if it has one: 1 to 255 visible ASCII characters (400
/// otherwise). The same key within [`IDEMPOTENCY_WINDOW`] answers 202 with the first
/// request's job id and `Idempotent-Replayed: true`, and enqueues nothing; the body of the
/// repeat is not compared with the first one's.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "`Idempotency-Key` must be 1 to 255 visible ASCII characters (a UUID is a good key)",
        )),
    }
}

/// `POST /signup` with `{"email": ...}`: inserts the user and enqueues the welcome email
/// in one transaction, answering 201 with `{"user_id", "job_id"}`; 409 when the email is
/// taken (and no email is sent); 501 when the server does not run on Postgres.
async fn signup(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(signups) = &state.signups else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "signup needs the Postgres store: start the server with --postgres URL",
        ));
    };
    if state.client.is_stopping() {
        return Err(ApiError::shutting_down());
    }
    let request: SignupRequest = json_body(&headers, body)?;
    let email = request.email().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid email: expected local@domain.tld",
        )
    })?;
    let mut tx = signups.begin().await.map_err(database_failed)?;
    let Some(user_id) = insert_user(&mut tx, &email)
        .await
        .map_err(database_failed)?
    else {
        // Dropping `tx` rolls it back: nothing was enqueued.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "an account with this email already exists",
        ));
    };
    let job_id = state
        .client
        .enqueue_tx(&mut tx, welcome(&email))
        .await
        .map_err(|e| enqueue_failed(&e))?;
    tx.commit().await.map_err(database_failed)?;
    tracing::info!(user_id, job_id = %job_id, "user signed up, welcome email enqueued");
    let mut response = (
        StatusCode::CREATED,
        Json(json!({ "user_id": user_id, "job_id": job_id.to_string() })),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/jobs/{job_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// 503: the application's database failed (the transaction, if any, is rolled back).
fn database_failed(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("database unavailable: {e}"),
    )
}

fn enqueue_failed<J: Job>(e: &EnqueueError<J>) -> ApiError {
    match e {
        EnqueueError::QueueFull(_) => ApiError::queue_full(),
        EnqueueError::ShuttingDown(_) => ApiError::shutting_down(),
        EnqueueError::Backend { .. } => {
            tracing::error!(job = J::NAME, error = %e, "job store unavailable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        EnqueueError::PayloadTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e),
        EnqueueError::Unsupported { .. } => ApiError::new(StatusCode::NOT_IMPLEMENTED, e),
        _ => {
            tracing::error!(job = J::NAME, error = %e, "enqueue failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

/// 501 for a question the backend cannot answer (naming it), 503 when the store failed.
fn query_failed(e: &QueryError) -> ApiError {
    match e {
        QueryError::Unsupported { .. } => ApiError::new(StatusCode::NOT_IMPLEMENTED, e),
        _ => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                chain = format!("{chain}: {cause}");
                source = cause.source();
            }
            tracing::error!(error = %chain, "job store unavailable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, chain)
        }
    }
}

/// `GET /jobs/{id}`.
async fn job_status(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    match state
        .client
        .status(id)
        .await
        .map_err(|e| query_failed(&e))?
    {
        Some(status) => Ok(Json(status).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no job with id {id}"),
        )),
    }
}

/// `GET /jobs/status`: load, lifecycle and counters.
async fn runtime_status(State(state): State<AppState>) -> Response {
    let s = state.client.stats();
    Json(json!({
        "queue_depth": s.depth,
        "capacity": s.capacity,
        "in_flight": s.in_flight,
        "is_running": s.is_running,
        "is_stopping": s.is_stopping,
        "counters": {
            "enqueued": s.enqueued,
            "started": s.started,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "retried": s.retried,
            "dead_lettered": s.dead_lettered,
            "cancelled": s.cancelled,
        },
    }))
    .into_response()
}

/// `GET /health/live`: the process answers.
async fn live() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// `GET /health/ready`: 200 healthy or degraded, 503 unhealthy (nearly full or stopping).
async fn ready(State(state): State<AppState>) -> Response {
    let health = state.client.health();
    let code = match health.status {
        HealthStatus::Healthy | HealthStatus::Degraded => StatusCode::OK,
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(health)).into_response()
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "metrics are not enabled"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response())
}

/// Checks the admin token: 403 when none is configured, 401 when it is missing or wrong.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.admin.check(presented) {
        Access::Granted => Ok(()),
        Access::Disabled => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin routes are disabled: set JOB_ADMIN_TOKEN to enable them",
        )),
        Access::Denied => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token: send `Authorization: Bearer <JOB_ADMIN_TOKEN>`",
        )),
    }
}

/// `GET /dead-letters` (admin): every dead letter kept, oldest first.
async fn dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let dead = state
        .client
        .dead_letters()
        .await
        .map_err(|e| query_failed(&e))?;
    Ok(Json(json!({ "count": dead.len(), "dead_letters": dead })).into_response())
}

/// `POST /dead-letters/{id}/requeue` (admin): run a dead job again, same id, fresh attempts.
async fn requeue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&raw)?;
    match state.client.requeue(id).await {
        Ok(id) => {
            tracing::info!(job_id = %id, "dead letter requeued by admin");
            Ok(accepted(id))
        }
        Err(e @ RequeueError::NotFound(_)) => Err(ApiError::new(StatusCode::NOT_FOUND, e)),
        Err(RequeueError::QueueFull) => Err(ApiError::queue_full()),
        Err(RequeueError::ShuttingDown) => Err(ApiError::shutting_down()),
        Err(e @ RequeueError::Unsupported { .. }) => {
            Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, e))
        }
        Err(e @ RequeueError::Backend(_)) => {
            tracing::error!(error = %e, "job store unavailable");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))
        }
        Err(e) => Err(ApiError::new(StatusCode::CONFLICT, e)),
    }
}

/// `DELETE /jobs/{id}` (admin): cancels a job. 202 `{"job_id", "cancel"}` with `cancel`
/// `"removed"` (it was waiting) or `"requested"` (it was running: its token fired, and it
/// ends cancelled when the attempt returns); 409 for a job already finished (with its
/// `state`); 404 for an unknown id; 501 where the backend cannot cancel by id.
async fn cancel_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&raw)?;
    match state.client.cancel(id).await {
        Ok(how) => {
            let how = match how {
                Cancellation::Removed => "removed",
                _ => "requested",
            };
            tracing::info!(job_id = %id, cancel = how, "job cancelled by admin");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "job_id": id.to_string(), "cancel": how })),
            )
                .into_response())
        }
        Err(CancelError::Finished { state: done, .. }) => Ok((
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("job {id} has already finished"),
                "state": done,
            })),
        )
            .into_response()),
        Err(e @ CancelError::NotFound(_)) => Err(ApiError::new(StatusCode::NOT_FOUND, e)),
        Err(e @ CancelError::Unsupported { .. }) => {
            Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, e))
        }
        Err(e) => {
            tracing::error!(error = %e, "job store unavailable");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert!(is_json_content_type(&headers));
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json_content_type(&headers), ok, "{value}");
        }
    }
}
