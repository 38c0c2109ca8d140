//! Mapping CRUD (SPEC §5): list, create, replace all, get, update and
//! delete, each write checked by the shared crate's validation and stored
//! in the prefix's one spelling (`/trail/` as `/trail`, `/café` as
//! `/caf%C3%A9`); and the Go version's public list and reload.

use std::borrow::Cow;
use std::collections::BTreeMap;

use apiproxy_shared::{canonical_prefix, loggable_target, validate_mapping};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::error::AppError;
use crate::extract::{ApiJson, ClientAddr, PrefixPath, Shared};
use crate::model::{
    AllMappings, ErrorBody, Mapping, MappingChanged, MappingDeleted, MappingFound, MappingList,
    NewMapping, NewTarget, PublicMappingList, Reloaded,
};

/// The mapping as stored: the prefix in its one spelling, the target
/// normalised.
fn check(prefix: &str, target: &str) -> Result<(String, String), AppError> {
    let m = validate_mapping(prefix, target).map_err(|e| AppError::BadRequest(e.to_string()))?;
    Ok((m.prefix, m.target))
}

/// The key a path's prefix names: as written when the hash holds it so
/// (an entry the Go version wrote, `/trail/`), else its one spelling
/// (`/api/mappings/café` is `/caf%C3%A9`).
async fn stored_key(state: &Shared, prefix: String) -> Result<(String, Option<String>), AppError> {
    let found = state.store.get(&prefix).await?;
    let one = match canonical_prefix(&prefix) {
        Ok(one) if found.is_none() && one != prefix => one.into_owned(),
        _ => return Ok((prefix, found)),
    };
    let found = state.store.get(&one).await?;
    Ok((one, found))
}

/// 409 when the hash holds the prefix in another spelling, as the Go
/// version may have written it (`/trail/` for `/trail`): one route, which
/// the data plane would give to the one spelling, counting the other
/// invalid.
async fn refuse_other_spelling(state: &Shared, prefix: &str) -> Result<(), AppError> {
    let other = if prefix.contains('%') {
        // A non-ASCII prefix has as many spellings as mixes of its
        // characters raw and encoded: only a look at every entry finds
        // them.
        let (mappings, _) = state.store.list().await?;
        mappings
            .into_keys()
            .find(|k| k != prefix && canonical_prefix(k).is_ok_and(|one| one == prefix))
    } else {
        // An ASCII one has one other: with a trailing `/`. One read, not
        // the whole hash, on every create.
        let trailing = format!("{prefix}/");
        let taken = prefix != "/" && state.store.get(&trailing).await?.is_some();
        taken.then_some(trailing)
    };
    match other {
        Some(other) => Err(AppError::Conflict(format!(
            "a mapping for {prefix} already exists, written {other}"
        ))),
        None => Ok(()),
    }
}

#[utoipa::path(get, path = "/api/mappings", tag = "mappings", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MappingList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list(State(state): State<Shared>) -> Result<Json<MappingList>, AppError> {
    let (mappings, version) = state.store.list().await?;
    Ok(Json(MappingList {
        success: true,
        count: mappings.len(),
        invalid: not_routed(&mappings),
        mappings,
        version,
    }))
}

/// The entries the data plane skips, by the data plane's rules, each with
/// the reason: those that fail validation (the message names the field
/// and never holds the target), and a second spelling of a prefix whose
/// other spelling routes (`/trail/` beside `/trail`: the one spelling
/// wins, else the smaller entry as written).
fn not_routed(mappings: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut invalid = BTreeMap::new();
    let mut valid = Vec::new();
    for (raw, target) in mappings {
        match validate_mapping(raw, target) {
            Ok(m) => valid.push((m.prefix, raw.as_str())),
            Err(e) => {
                invalid.insert(raw.clone(), e.to_string());
            }
        }
    }
    let mut routes: BTreeMap<&str, &str> = BTreeMap::new();
    for (one, raw) in &valid {
        let kept = routes.entry(one).or_insert(raw);
        if (raw != one, *raw) < (kept != one, *kept) {
            *kept = raw;
        }
    }
    for (one, raw) in &valid {
        let kept = routes[one.as_str()];
        if kept != *raw {
            invalid.insert(
                (*raw).to_owned(),
                format!("prefix: another spelling of {one}; the entry {kept} routes"),
            );
        }
    }
    invalid
}

#[utoipa::path(post, path = "/api/mappings", tag = "mappings", request_body = NewMapping, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = MappingChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    ApiJson(body): ApiJson<NewMapping>,
) -> Result<(StatusCode, Json<MappingChanged>), AppError> {
    let (prefix, target) = check(&body.prefix, &body.target)?;
    refuse_other_spelling(&state, &prefix).await?;
    let version = state
        .store
        .create(&prefix, &target, &actor.to_string())
        .await?;
    let shown = loggable_target(&target);
    tracing::info!(%prefix, target = %shown, %actor, version, "mapping created");
    Ok((
        StatusCode::CREATED,
        Json(changed(prefix, target, version, "created")),
    ))
}

/// The answer to a create or an update.
fn changed(prefix: String, target: String, version: u64, what: &str) -> MappingChanged {
    MappingChanged {
        success: true,
        message: format!("mapping {prefix} {what}"),
        mapping: Mapping { prefix, target },
        version,
    }
}

#[utoipa::path(get, path = "/api/mappings/{prefix}", tag = "mappings", security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the prefix without its leading slash; may hold slashes; %2F (or nothing, /api/mappings/) is the prefix /")),
    responses((status = 200, body = MappingFound), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_one(
    State(state): State<Shared>,
    PrefixPath(prefix): PrefixPath,
) -> Result<Json<MappingFound>, AppError> {
    match stored_key(&state, prefix).await? {
        (prefix, Some(target)) => {
            let reason = match validate_mapping(&prefix, &target) {
                Err(e) => Some(e.to_string()),
                Ok(m) if m.prefix == prefix => None,
                // Another spelling of the prefix may route instead.
                Ok(_) => not_routed(&state.store.list().await?.0).remove(&prefix),
            };
            Ok(Json(MappingFound {
                success: true,
                mapping: Mapping { prefix, target },
                valid: reason.is_none(),
                reason,
            }))
        }
        (prefix, None) => Err(AppError::NotFound(format!("no mapping for {prefix}"))),
    }
}

#[utoipa::path(put, path = "/api/mappings/{prefix}", tag = "mappings", request_body = NewTarget, security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the prefix without its leading slash")),
    responses((status = 200, body = MappingChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    PrefixPath(prefix): PrefixPath,
    ApiJson(body): ApiJson<NewTarget>,
) -> Result<Json<MappingChanged>, AppError> {
    let (prefix, target) = check(&prefix, &body.target)?;
    let version = state
        .store
        .update(&prefix, &target, &actor.to_string())
        .await?;
    let shown = loggable_target(&target);
    tracing::info!(%prefix, target = %shown, %actor, version, "mapping updated");
    Ok(Json(changed(prefix, target, version, "updated")))
}

#[utoipa::path(delete, path = "/api/mappings/{prefix}", tag = "mappings", security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the prefix without its leading slash")),
    responses((status = 200, body = MappingDeleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    PrefixPath(prefix): PrefixPath,
) -> Result<Json<MappingDeleted>, AppError> {
    let (prefix, _) = stored_key(&state, prefix).await?;
    let version = state.store.delete(&prefix, &actor.to_string()).await?;
    tracing::info!(%prefix, %actor, version, "mapping deleted");
    Ok(Json(MappingDeleted {
        success: true,
        message: "Mapping deleted successfully".into(),
        prefix,
        version,
    }))
}

/// The Go version's public list: served without auth while stats are
/// public (`API_PROXY_PUBLIC_STATS`), behind admin auth otherwise. A
/// target's query is shown as `?…`: it may hold credentials (`key=`).
#[utoipa::path(get, path = "/api/public/mappings", tag = "mappings", security((), ("bearer" = []), ("session" = [])),
    responses((status = 200, body = PublicMappingList), (status = 401, body = ErrorBody, description = "only with API_PROXY_PUBLIC_STATS=false"),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn public_list(
    State(state): State<Shared>,
) -> Result<Json<PublicMappingList>, AppError> {
    let (mut mappings, _) = state.store.list().await?;
    for target in mappings.values_mut() {
        if let Cow::Owned(shown) = loggable_target(target) {
            *target = shown;
        }
    }
    Ok(Json(PublicMappingList {
        success: true,
        count: mappings.len(),
        mappings,
    }))
}

/// Makes every data plane re-read the whole hash now (a `replace`
/// announcement at the current version), e.g. after an edit made straight
/// in Redis; nothing is written.
#[utoipa::path(post, path = "/api/mappings/reload", tag = "mappings", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Reloaded), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn reload(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
) -> Result<Json<Reloaded>, AppError> {
    let version = state.store.announce_reload().await?;
    tracing::info!(%actor, version, "full re-read of the mappings announced");
    Ok(Json(Reloaded {
        message: "Mappings reloaded successfully".into(),
        version,
    }))
}

#[utoipa::path(put, path = "/api/mappings", tag = "mappings", request_body = AllMappings, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MappingList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn replace_all(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    ApiJson(body): ApiJson<AllMappings>,
) -> Result<Json<MappingList>, AppError> {
    let mut checked = BTreeMap::new();
    let mut spelled = BTreeMap::new();
    for (raw, target) in &body.mappings {
        let (prefix, target) = check(raw, target)
            .map_err(|e| AppError::BadRequest(format!("mappings[{raw:?}]: {e}")))?;
        if let Some(first) = spelled.insert(prefix.clone(), raw) {
            return Err(AppError::BadRequest(format!(
                "mappings[{raw:?}]: the same prefix as {first:?} ({prefix})"
            )));
        }
        checked.insert(prefix, target);
    }
    let version = state.store.replace(&checked, &actor.to_string()).await?;
    tracing::info!(count = checked.len(), %actor, version, "mappings replaced");
    Ok(Json(MappingList {
        success: true,
        count: checked.len(),
        invalid: BTreeMap::new(),
        mappings: checked,
        version,
    }))
}
