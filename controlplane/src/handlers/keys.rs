//! Proxy keys: list, create (the only answer that shows the
//! secret), get, patch and delete. Redis holds a key's SHA-256, never the
//! key; every field is checked by the shared crate's rules.

use apiproxy_shared::access::{
    canonical_key_prefixes, hex, key_hash, key_id_of, new_proxy_key, validate_key_name, KeyRecord,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::access_store::{AccessError, KeyEntry};
use crate::error::AppError;
use crate::extract::{ApiJson, ClientAddr, KeyId, Shared};
use crate::model::{Deleted, ErrorBody, KeyCreated, KeyFound, KeyList, KeyPatch, KeyView, NewKey};
use crate::store::now_ms;

/// The last second `expires_at` may name (the end of the year 9999).
const LAST_EXPIRY: u64 = 253_402_300_799;

fn view((record, last_used_at): KeyEntry) -> KeyView {
    KeyView {
        id: record.id,
        name: record.name,
        prefixes: record.prefixes,
        enabled: record.enabled,
        expires_at: record.expires_at,
        created_at: record.created_at,
        last_used_at,
    }
}

fn name(name: &str) -> Result<(), AppError> {
    validate_key_name(name).map_err(|e| AppError::BadRequest(e.to_string()))
}

/// The allowed prefixes in their one spelling; `None`: all.
fn prefixes(prefixes: Option<Vec<String>>) -> Result<Option<Vec<String>>, AppError> {
    prefixes
        .map(|p| canonical_key_prefixes(&p).map_err(|e| AppError::BadRequest(e.to_string())))
        .transpose()
}

fn expiry(expires_at: Option<u64>, now: u64) -> Result<Option<u64>, AppError> {
    match expires_at {
        Some(t) if t <= now || t > LAST_EXPIRY => Err(AppError::BadRequest(format!(
            "`expires_at` must be unix seconds in the future (now {now}), before the year 10000"
        ))),
        t => Ok(t),
    }
}

#[utoipa::path(get, operation_id = "list_keys", path = "/api/keys", tag = "keys", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list(State(state): State<Shared>) -> Result<Json<KeyList>, AppError> {
    let keys = state.access.list_keys().await?;
    Ok(Json(KeyList {
        success: true,
        keys: keys.into_iter().map(view).collect(),
    }))
}

/// Makes a key; its secret is in this answer and nowhere else, ever.
#[utoipa::path(post, operation_id = "create_key", path = "/api/keys", tag = "keys", request_body = NewKey, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<KeyCreated>), AppError> {
    let now = now_ms() / 1000;
    name(&body.name)?;
    let secret = new_proxy_key();
    let hash = key_hash(secret.as_bytes());
    let record = KeyRecord {
        id: key_id_of(&hash),
        name: body.name,
        prefixes: prefixes(body.prefixes)?,
        enabled: true,
        expires_at: expiry(body.expires_at, now)?,
        created_at: now,
        sha256: hex(&hash),
    };
    let version = state.access.create_key(&record, &actor.to_string()).await?;
    tracing::info!(key_id = %record.id, %actor, version, "proxy key created");
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            success: true,
            key: view((record, None)),
            secret,
        }),
    ))
}

#[utoipa::path(get, operation_id = "get_key", path = "/api/keys/{id}", tag = "keys", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "the key's id, `key_` and 16 hex digits")),
    responses((status = 200, body = KeyFound), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_one(
    State(state): State<Shared>,
    KeyId(id): KeyId,
) -> Result<Json<KeyFound>, AppError> {
    let entry = state
        .access
        .key(&id)
        .await?
        .ok_or_else(|| AccessError::NoKey(id.clone()))?;
    Ok(Json(KeyFound {
        success: true,
        key: view(entry),
    }))
}

/// Changes the fields given (`prefixes` or `expires_at` null: all
/// prefixes, never expires). Disabling a key reaches every node as a
/// mapping change does.
#[utoipa::path(patch, operation_id = "update_key", path = "/api/keys/{id}", tag = "keys", request_body = KeyPatch, security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, body = KeyFound), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    KeyId(id): KeyId,
    ApiJson(body): ApiJson<KeyPatch>,
) -> Result<Json<KeyFound>, AppError> {
    if let Some(new) = &body.name {
        name(new)?;
    }
    let new_prefixes = body.prefixes.map(prefixes).transpose()?;
    let new_expiry = body
        .expires_at
        .map(|t| expiry(t, now_ms() / 1000))
        .transpose()?;
    let entry = state
        .access
        .update_key(&id, &actor.to_string(), |old| KeyRecord {
            name: body.name.clone().unwrap_or_else(|| old.name.clone()),
            prefixes: new_prefixes.clone().unwrap_or_else(|| old.prefixes.clone()),
            enabled: body.enabled.unwrap_or(old.enabled),
            expires_at: new_expiry.unwrap_or(old.expires_at),
            ..old.clone()
        })
        .await?;
    tracing::info!(key_id = %id, %actor, enabled = entry.0.enabled, "proxy key updated");
    Ok(Json(KeyFound {
        success: true,
        key: view(entry),
    }))
}

/// Deletes a key with its usage; requests with it get 401 from then on.
#[utoipa::path(delete, operation_id = "delete_key", path = "/api/keys/{id}", tag = "keys", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, body = Deleted), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    KeyId(id): KeyId,
) -> Result<Json<Deleted>, AppError> {
    let version = state.access.delete_key(&id, &actor.to_string()).await?;
    tracing::info!(key_id = %id, %actor, version, "proxy key deleted");
    Ok(Json(Deleted {
        success: true,
        deleted: id,
    }))
}
