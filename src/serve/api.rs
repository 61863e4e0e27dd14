//! The HTTP JSON API of `sparq serve`, and the messages it exchanges with `submit` and
//! `worker`.
//!
//! | request                            | answer                                   |
//! |------------------------------------|------------------------------------------|
//! | `GET /healthz`                     | 200, no token needed                     |
//! | `POST /v1/jobs[?name=N]` (spec)    | 201 `{id, state}`; 200 for a known name  |
//! | `GET /v1/jobs[?limit=N&after=C]`   | `JobPage` `{jobs: [JobView], next}`      |
//! | `GET /v1/jobs/{id}[?shards=S]`     | `JobView` with spec (and shards: `all`, `causes`), or 404 |
//! | `POST /v1/jobs/{id}/cancel`        | `JobView`; 409 if it had ended           |
//! | `POST /v1/leases` `{worker}`       | `LeaseGrant`, or 204 when there is no work |
//! | `POST /v1/leases/{l}/heartbeat`    | `LeaseReply` (`keep: false`: stop)       |
//! | `POST /v1/leases/{l}/done`         | `LeaseReply`                             |
//! | `POST /v1/leases/{l}/failed`       | `LeaseReply`                             |
//!
//! Handlers never touch SQLite on the async runtime: each runs its database work on the
//! blocking pool, writes through the one writer (short transactions), reads on connections
//! of their own.

use std::sync::Arc;

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

use super::db::{Inserted, ShardFilter, Store};
use super::spec::{parse_spec, Roots};
pub use super::wire::*;

/// Shared state of the handlers.
pub struct App {
    /// The queue.
    pub store: Store,
    /// SHA-256 of the bearer token, when one is required.
    pub token: Option<[u8; 32]>,
    /// Where specs' local paths may point.
    pub roots: Roots,
    /// Most jobs waiting to be planned.
    pub max_queued: u64,
    /// Wakes the planner.
    pub wake: crossbeam_channel::Sender<()>,
}

/// Jobs per page of `GET /v1/jobs` unless `?limit=` says otherwise, and the most it may say.
const PAGE: usize = 500;
const MAX_PAGE: usize = 1000;

/// Runs `f` (database work) on the blocking pool, off the async runtime.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the request's worker thread failed: {e}"),
            )
        })?
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
                "missing bearer token: set SPARQ_TOKEN to the service's token, or name its \
                 token file with --token-file or SPARQ_TOKEN_FILE"
                    .into(),
            )
        })?;
    if bool::from(token_digest(given.trim()).ct_eq(expected)) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong token: set SPARQ_TOKEN to the service's token, or name its token file with \
             --token-file or SPARQ_TOKEN_FILE"
                .into(),
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

/// A counter of a request as SQLite stores it (i64): a larger one is refused, never wrapped.
fn stored_counter(name: &str, value: u64) -> ApiResult<i64> {
    i64::try_from(value).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "`{name}` = {value} is larger than {}: counters are signed 64-bit",
                i64::MAX
            ),
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
    let (counts, unfinished) = blocking(&app, |app| {
        Ok(app
            .store
            .read(|db| Ok((db.count_by_state()?, db.unfinished_jobs()?)))?)
    })
    .await?;
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
    let name = query.name.clone();
    // Checking paths touches the file system: off the async runtime too.
    let spec = blocking(&app, move |app| parse_spec(&doc, &app.roots).map_err(bad)).await?;
    // [ownership] An output a live job writes is refused now, naming that job.
    if let crate::serve::spec::JobSpec::Encode { args, .. } = &spec {
        crate::job::ownership::refuse_if_held(&args.output, &app.roots.access)
            .await
            .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
    }
    let inserted = blocking(&app, move |app| {
        Ok(app.store.write(|db| {
            db.insert_job(
                spec.kind(),
                &spec.document(),
                (spec.max_attempts(), spec.lease_timeout()),
                app.max_queued,
                name.as_deref(),
            )
        })?)
    })
    .await?;
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

/// `?limit=&after=` of `GET /v1/jobs`.
#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<JobPage>> {
    authorize(&app, &headers)?;
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit={limit}: pages hold 1 to {MAX_PAGE} jobs"),
        ));
    }
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse::<i64>().map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("after={a}: pass the `next` of the previous page"),
            )
        })?),
    };
    let page = blocking(&app, move |app| {
        Ok(app.store.read(|db| db.jobs_page(after, limit))?)
    })
    .await?;
    Ok(Json(page))
}

/// `?shards=` of `GET /v1/jobs/{id}`.
#[derive(Deserialize)]
struct ShowQuery {
    shards: Option<String>,
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
    Query(query): Query<ShowQuery>,
) -> ApiResult<Json<JobView>> {
    authorize(&app, &headers)?;
    let filter = match query.shards.as_deref() {
        None | Some("none") => ShardFilter::None,
        Some("all") => ShardFilter::All,
        Some("causes") => ShardFilter::Causes,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "shards={other}: use `all`, `causes` (shards with a failed attempt) or `none`"
                ),
            ))
        }
    };
    let key = id.clone();
    let job = blocking(&app, move |app| {
        Ok(app.store.read(|db| db.job(&key, true, filter))?)
    })
    .await?;
    job.map(Json).ok_or_else(|| not_found(&id))
}

async fn cancel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    authorize(&app, &headers)?;
    let key = id.clone();
    let result = blocking(&app, move |app| {
        let cancelled = app.store.write(|db| db.cancel(&key))?;
        Ok(match cancelled {
            Some(Ok(())) => Some(Ok(app
                .store
                .read(|db| db.job(&key, false, ShardFilter::None))?)),
            Some(Err(state)) => Some(Err(state)),
            None => None,
        })
    })
    .await?;
    // [ownership] A cancelled job lets go of its output.
    if let Some(Ok(Some(view))) = &result {
        crate::job::ownership::release_spec(view.spec.as_ref(), &app.roots.access, &id).await;
    }
    match result {
        None | Some(Ok(None)) => Err(not_found(&id)),
        Some(Ok(Some(view))) => Ok(Json(view)),
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
    let grant = blocking(&app, move |app| {
        Ok(app.store.write(|db| db.lease(&request.worker))?)
    })
    .await?;
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
    let rows = stored_counter("rows", beat.rows)?;
    let tokens = stored_counter("tokens", beat.tokens)?;
    let progress = stored_counter("progress", beat.progress)?;
    let reply = blocking(&app, move |app| {
        Ok(app
            .store
            .write(|db| db.heartbeat(&lease, rows, tokens, progress))?)
    })
    .await?;
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
    let reply = blocking(&app, move |app| {
        Ok(app
            .store
            .write(|db| db.done(&lease, &report.worker, &report.report))?)
    })
    .await?;
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
    let reply = blocking(&app, move |app| {
        Ok(app
            .store
            .write(|db| db.failed(&lease, &report.error, report.retryable))?)
    })
    .await?;
    let _ = app.wake.try_send(());
    Ok(Json(reply))
}
