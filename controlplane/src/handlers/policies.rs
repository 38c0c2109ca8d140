//! Mapping policies: who may use a mapping, and the upstream
//! credential put in place of the client's own. A policy is addressed as
//! its mapping is (`/api/policies/{prefix}`, `%2F` for `/`), stored in the
//! prefix's one spelling, and may exist without a mapping (set it before
//! the mapping is created; it stays when the mapping is deleted). The
//! credential's secret is write-only: sealed under `API_PROXY_SECRETS_KEY`
//! before it reaches Redis, shown only as its last four characters (none
//! of a secret under 16 characters).

use apiproxy_shared::access::{
    secret_hint, validate_secret, CredentialPlace, SecretsKey, StoredCredential, StoredPolicy,
};
use apiproxy_shared::canonical_prefix;
use axum::extract::State;
use axum::Json;

use crate::access_store::AccessError;
use crate::error::AppError;
use crate::extract::{ApiJson, ClientAddr, PrefixPath, Shared};
use crate::model::{
    CredentialView, Deleted, ErrorBody, NewCredential, NewPolicy, PolicyFound, PolicyList,
    PolicySaved, PolicyView,
};

fn view(prefix: String, policy: StoredPolicy) -> PolicyView {
    PolicyView {
        prefix,
        access: policy.access,
        upstream_credential: policy.upstream_credential.map(|c| CredentialView {
            header: c.place.header,
            template: c.place.template,
            query: c.place.query,
            secret_hint: c.secret_hint,
        }),
    }
}

/// The prefix a path names, in its one spelling (how policies are stored).
fn one_spelling(prefix: &str) -> Result<String, AppError> {
    canonical_prefix(prefix)
        .map(|p| p.into_owned())
        .map_err(|e| AppError::BadRequest(e.to_string()))
}

/// A credential as given, checked: its place normalised, and its secret
/// (if given) sealed for `prefix`, with its hint.
fn checked(
    credential: NewCredential,
    prefix: &str,
    secrets: Option<&SecretsKey>,
) -> Result<(CredentialPlace, Option<(String, String)>), AppError> {
    let bad = |e: apiproxy_shared::access::PolicyError| AppError::BadRequest(e.to_string());
    let place = CredentialPlace {
        header: credential.header,
        template: credential.template,
        query: credential.query,
    }
    .normalised()
    .map_err(bad)?;
    let Some(secret) = credential.secret else {
        return Ok((place, None));
    };
    validate_secret(&secret).map_err(bad)?;
    let Some(key) = secrets else {
        return Err(AppError::BadRequest(
            "`upstream_credential.secret`: the control plane needs API_PROXY_SECRETS_KEY to store a credential (`apiproxy-controlplane gen-secrets-key` prints one; the data planes need the same)".into(),
        ));
    };
    Ok((
        place,
        Some((key.seal(prefix, &secret), secret_hint(&secret))),
    ))
}

#[utoipa::path(get, operation_id = "list_policies", path = "/api/policies", tag = "policies", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = PolicyList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list(State(state): State<Shared>) -> Result<Json<PolicyList>, AppError> {
    let policies = state.access.list_policies().await?;
    Ok(Json(PolicyList {
        success: true,
        policies: policies
            .into_iter()
            .map(|(p, policy)| view(p, policy))
            .collect(),
    }))
}

#[utoipa::path(get, operation_id = "get_policy", path = "/api/policies/{prefix}", tag = "policies", security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the mapping prefix without its leading slash, as in /api/mappings/{prefix}; %2F (or nothing, /api/policies/) is the prefix /")),
    responses((status = 200, body = PolicyFound), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_one(
    State(state): State<Shared>,
    PrefixPath(prefix): PrefixPath,
) -> Result<Json<PolicyFound>, AppError> {
    let prefix = one_spelling(&prefix)?;
    let policy = state
        .access
        .policy(&prefix)
        .await?
        .ok_or_else(|| AccessError::NoPolicy(prefix.clone()))?;
    Ok(Json(PolicyFound {
        success: true,
        policy: view(prefix, policy),
    }))
}

/// Sets a mapping's policy, whether the mapping exists or not. A
/// credential without `secret` keeps the secret stored for the prefix.
#[utoipa::path(put, operation_id = "put_policy", path = "/api/policies/{prefix}", tag = "policies", request_body = NewPolicy, security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the mapping prefix without its leading slash")),
    responses((status = 200, body = PolicySaved), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn put(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    PrefixPath(prefix): PrefixPath,
    ApiJson(body): ApiJson<NewPolicy>,
) -> Result<Json<PolicySaved>, AppError> {
    let prefix = one_spelling(&prefix)?;
    let credential = body
        .upstream_credential
        .map(|c| checked(c, &prefix, state.secrets.as_deref()))
        .transpose()?;
    let saved = state
        .access
        .put_policy(&prefix, &actor.to_string(), |stored| {
            let upstream_credential = match &credential {
                None => None,
                Some((place, given)) => {
                    let kept = stored.and_then(|p| p.upstream_credential.as_ref());
                    let (sealed, secret_hint) = match (given, kept) {
                        (Some(given), _) => given.clone(),
                        (None, Some(kept)) => (kept.sealed.clone(), kept.secret_hint.clone()),
                        (None, None) => {
                            return Err(AccessError::Refused(format!(
                                "`upstream_credential.secret` is required: no secret is stored for {prefix}"
                            )))
                        }
                    };
                    Some(StoredCredential {
                        place: place.clone(),
                        sealed,
                        secret_hint,
                    })
                }
            };
            Ok(StoredPolicy {
                access: body.access,
                upstream_credential,
            })
        })
        .await?;
    tracing::info!(%prefix, %actor, version = saved.version, first = saved.first, "policy set");
    Ok(Json(PolicySaved {
        success: true,
        policy: view(prefix, saved.policy),
        first_policy: saved.first,
    }))
}

#[utoipa::path(delete, operation_id = "delete_policy", path = "/api/policies/{prefix}", tag = "policies", security(("bearer" = []), ("session" = [])),
    params(("prefix" = String, Path, description = "the mapping prefix without its leading slash")),
    responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<Shared>,
    ClientAddr(actor): ClientAddr,
    PrefixPath(prefix): PrefixPath,
) -> Result<Json<Deleted>, AppError> {
    let prefix = one_spelling(&prefix)?;
    let version = state
        .access
        .delete_policy(&prefix, &actor.to_string())
        .await?;
    tracing::info!(%prefix, %actor, version, "policy deleted");
    Ok(Json(Deleted {
        success: true,
        deleted: prefix,
    }))
}
