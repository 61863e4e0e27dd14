//! The HTTP JSON API of `sparq serve`, and the messages it exchanges with `submit` and
//! `worker`.
//!
//! | request                            | answer                                   |
//! |------------------------------------|------------------------------------------|
//! | `GET /healthz`                     | 200, no token needed                     |
//! | `POST /v1/jobs[?name=N]` (spec)    | 201 `{id, state}`; 200 for a known name  |
//! | `GET /v1/jobs`                     | `{jobs: [JobView]}`                      |
//! | `GET /v1/jobs/{id}`                | `JobView` with spec and shards, or 404   |
//! | `POST /v1/jobs/{id}/cancel`        | `JobView` with shards; 409 if it had ended |
//! | `POST /v1/leases` `{worker}`       | `LeaseGrant`, or 204 when there is no work |
//! | `POST /v1/leases/{l}/heartbeat`    | `LeaseReply` (`keep: false`: stop)       |
//! | `POST /v1/leases/{l}/done`         | `LeaseReply`                             |
//! | `POST /v1/leases/{l}/failed`       | `LeaseReply`                             |

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::db::{Db, Inserted};
use super::spec::{parse_spec, Roots};
pub use super::wire::*;

/// Shared state of the handlers.
pub struct App {
    /// The queue.
    pub db: Mutex<Db>,
    /// SHA-256 of the bearer token, when one is required.
    pub token: Option<[u8; 32]>,
    /// Where specs' local paths may point.
    pub roots: Roots,
    /// Most jobs waiting to be planned.
    pub max_queued: u64,
    /// Wakes the planner.
    pub wake: crossbeam_channel::Sender<()>,
}

impl App {
    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An API error: status and message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        }
        response
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("state database: {e}"),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// SHA-256 of a token (compared in constant time, whatever the lengths).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn authorize(app: &App, headers: &HeaderMap) -> ApiResult<()> {
    let Some(expected) = &app.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: set SPARQ_TOKEN to the service's token".into(),
            )
        })?;
    if bool::from(token_digest(given.trim()).ct_eq(expected)) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong token: set SPARQ_TOKEN to the service's token".into(),
        ))
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}"),
        )
    })
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/leases", post(lease))
        .route("/v1/leases/{lease}/heartbeat", post(heartbeat))
        .route("/v1/leases/{lease}/done", post(done))
        .route("/v1/leases/{lease}/failed", post(failed))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint (see /v1/jobs)".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn healthz(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let (counts, unfinished) = {
        let db = app.db();
        (db.count_by_state()?, db.unfinished_jobs()?)
    };
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "jobs": counts,
        "unfinished_jobs": unfinished,
    })))
}

/// `?name=`: a name makes submission idempotent.
#[derive(Deserialize)]
struct SubmitQuery {
    name: Option<String>,
}

async fn submit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<SubmitQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    authorize(&app, &headers)?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    if let Some(name) = &query.name {
        let ok = (1..=128).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(bad(format!(
                "job name `{name}`: use 1 to 128 letters, digits, `.`, `_` or `-`"
            )));
        }
    }
    let doc: Value = parse_body(&body)?;
    let spec = parse_spec(&doc, &app.roots).map_err(bad)?;
    // [ownership] An output a live job writes is refused now, naming that job.
    if let crate::serve::spec::JobSpec::Encode { args, .. } = &spec {
        crate::job::ownership::refuse_if_held(&args.output, &app.roots.access)
            .await
            .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
    }
    let inserted = app.db().insert_job(
        spec.kind(),
        &spec.document(),
        (spec.max_attempts(), spec.lease_timeout()),
        app.max_queued,
        query.name.as_deref(),
    )?;
    match inserted {
        Inserted::New(id) => {
            let _ = app.wake.try_send(());
            Ok((
                StatusCode::CREATED,
                Json(json!({ "id": id, "state": JobState::Queued, "existing": false })),
            ))
        }
        Inserted::Existing {
            id,
            state,
            same: true,
        } => Ok((
            StatusCode::OK,
            Json(json!({ "id": id, "state": state, "existing": true })),
        )),
        Inserted::Existing { id, .. } => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "a job named `{}` ({id}) exists with another spec: choose another --name",
                query.name.unwrap_or_default()
            ),
        )),
        Inserted::Full => Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} jobs are already waiting (--max-queued): submit again later",
                app.max_queued
            ),
        )),
    }
}

async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    authorize(&app, &headers)?;
    let jobs = app.db().jobs()?;
    Ok(Json(json!({ "jobs": jobs })))
}

fn not_found(id: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no job `{id}` (see `sparq status` for the list)"),
    )
}

async fn show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    authorize(&app, &headers)?;
    let job = app.db().job(&id, true)?;
    job.map(Json).ok_or_else(|| not_found(&id))
}

async fn cancel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    authorize(&app, &headers)?;
    let result = app.db().cancel(&id)?;
    // [ownership] A cancelled job lets go of its output.
    if let Some(Ok(view)) = &result {
        crate::job::ownership::release_spec(view.spec.as_ref(), &app.roots.access, &id).await;
    }
    match result {
        None => Err(not_found(&id)),
        Some(Ok(view)) => Ok(Json(view)),
        Some(Err(state)) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("job `{id}` has already ended ({state})"),
        )),
    }
}

async fn lease(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&app, &headers)?;
    let request: LeaseRequest = parse_body(&body)?;
    let grant = app.db().lease(&request.worker)?;
    Ok(match grant {
        Some(mut g) => {
            g.allowed_roots = app.roots.access.clone();
            Json(g).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn heartbeat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(lease): Path<String>,
    body: Bytes,
) -> ApiResult<Json<LeaseReply>> {
    authorize(&app, &headers)?;
    let beat: Heartbeat = parse_body(&body)?;
    let reply = app.db().heartbeat(&lease, beat.rows, beat.tokens)?;
    Ok(Json(reply))
}

async fn done(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(lease): Path<String>,
    body: Bytes,
) -> ApiResult<Json<LeaseReply>> {
    authorize(&app, &headers)?;
    let report: DoneReport = parse_body(&body)?;
    let reply = app.db().done(&lease, &report.worker, &report.report)?;
    let _ = app.wake.try_send(());
    Ok(Json(reply))
}

async fn failed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(lease): Path<String>,
    body: Bytes,
) -> ApiResult<Json<LeaseReply>> {
    authorize(&app, &headers)?;
    let report: FailedReport = parse_body(&body)?;
    let reply = app.db().failed(&lease, &report.error, report.retryable)?;
    let _ = app.wake.try_send(());
    Ok(Json(reply))
}
