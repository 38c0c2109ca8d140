//! The stats routes (SPEC §5, §6): data-plane pushes in; the cluster's
//! totals, series, node list and Prometheus text out. Everything is read
//! from Redis on each request, so every control-plane replica answers the
//! same and a restart loses nothing.

use apiproxy_shared::{validate_prefix, StatsBatch};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::batch_schema::StatsBatchSchema;
use crate::error::AppError;
use crate::extract::{ApiJson, NodeAuth, Shared};
use crate::model::{ErrorBody, NodeInfo, NodeList, StatsReport};
use crate::stats_report::{node_counts, node_list, report};
use crate::stats_store::Applied;
use crate::store::now_ms;

/// Push bodies may be larger than admin bodies: a batch holds two
/// histograms per prefix that saw traffic.
pub(crate) const PUSH_BODY_LIMIT: usize = 1024 * 1024;

/// What `validate()` cannot know: a boot id holding `:` would make two
/// (node, boot) pairs share one dedup key (`…:seq:{node_id}:{boot_id}`).
fn check(batch: &StatsBatch) -> Result<(), AppError> {
    batch
        .validate()
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    if batch.boot_id.contains(':') {
        return Err(AppError::BadRequest(
            "field `boot_id` must not contain `:`".into(),
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/internal/stats", tag = "stats", request_body = StatsBatchSchema, security(("node" = [])),
    responses((status = 204, description = "applied, or a repeat of an applied (node_id, boot_id, seq), which is not applied again"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "Redis unavailable, or (the primary having a replica) no replica confirmed the batch within 1 s: the node keeps it and sends it again")))]
pub(crate) async fn push(
    State(state): State<Shared>,
    _: NodeAuth,
    ApiJson(batch): ApiJson<StatsBatch, PUSH_BODY_LIMIT>,
) -> Result<StatusCode, AppError> {
    check(&batch)?;
    let applied = state.stats.apply(&batch, now_ms()).await?;
    tracing::debug!(node_id = %batch.node_id, seq = batch.seq, duplicate = (applied == Applied::Duplicate), "stats batch");
    Ok(StatusCode::NO_CONTENT)
}

/// Every registered node with its state as of now.
async fn nodes_now(state: &Shared) -> redis::RedisResult<Vec<NodeInfo>> {
    let (records, version) = state.stats.nodes().await?;
    Ok(node_list(records, now_ms(), state.node_timeout, version))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatsQuery {
    /// Only this mapping prefix's requests in `series` (e.g. `/openai`);
    /// the rest of the report stays cluster-wide.
    #[param(pattern = "^/")]
    endpoint: Option<String>,
}

#[utoipa::path(get, path = "/stats", tag = "stats", params(StatsQuery),
    security((), ("bearer" = []), ("session" = [])),
    description = "Public unless API_PROXY_PUBLIC_STATS=false; then admin auth as the /api routes.",
    responses((status = 200, body = StatsReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn stats(
    State(state): State<Shared>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<StatsReport>, AppError> {
    let Query(q) = query?;
    if let Some(prefix) = &q.endpoint {
        validate_prefix(prefix).map_err(|e| AppError::BadRequest(format!("endpoint: {e}")))?;
    }
    let now = now_ms();
    let ((totals, endpoints), nodes, series, runs) = tokio::try_join!(
        state.stats.endpoints(),
        nodes_now(&state),
        state.stats.series(now / 1000, q.endpoint.as_deref()),
        state.stats.request_runs(),
    )?;
    Ok(Json(report(
        &totals, &endpoints, &nodes, &series, &runs, now,
    )))
}

#[utoipa::path(get, path = "/api/nodes", tag = "stats", security(("bearer" = []), ("session" = [])),
    description = "`stats_durability` says whether an acknowledged stats batch is on a Redis replica too.",
    responses((status = 200, body = NodeList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn nodes(State(state): State<Shared>) -> Result<Json<NodeList>, AppError> {
    let (nodes, stats_durability) = tokio::try_join!(nodes_now(&state), state.stats.durability())?;
    Ok(Json(NodeList {
        nodes,
        stats_durability,
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "stats",
    responses((status = 200, body = String, content_type = "text/plain", description = "Prometheus text: cluster totals (apiproxy_cluster_*) and this process"),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn metrics(State(state): State<Shared>) -> Result<Response, AppError> {
    let ((totals, endpoints), keys, nodes) = tokio::try_join!(
        state.stats.endpoints(),
        state.stats.all_key_usage(),
        nodes_now(&state)
    )?;
    let text = state
        .metrics
        .render(&totals, &endpoints, &keys, &node_counts(&nodes));
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
