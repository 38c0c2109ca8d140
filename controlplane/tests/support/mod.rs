//! The control plane's router in-process (tower `oneshot`) against a real
//! `redis-server`, shared by the API test files.

#![allow(dead_code)] // each test file uses its own part

use std::collections::HashMap;

use apiproxy_controlplane::{app, redis_connection, Config};
use apiproxy_tests::redis::RedisServer;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub(crate) const TOKEN: &str = "test-admin-token-0123456789";
pub(crate) const NODE_TOKEN: &str = "test-node-token-0123456789";

/// A control plane and the Redis it runs on.
pub(crate) struct Api {
    client: Client,
    pub(crate) redis: RedisServer,
}

/// Calls into one control plane's router.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) router: Router,
}

/// An `Api` is called like its client.
impl std::ops::Deref for Api {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Api {
    pub(crate) fn start() -> Api {
        Api::start_with(&[], &[])
    }

    /// With extra flags, and environment variables over the defaults
    /// (`ADMIN_TOKEN`, `API_PROXY_NODE_TOKEN`).
    pub(crate) fn start_with(flags: &[&str], env: &[(&str, &str)]) -> Api {
        let redis = RedisServer::start();
        let router = Api::router_on(&redis, flags, env);
        Api {
            client: Client { router },
            redis,
        }
    }

    /// A second control-plane replica on the same Redis.
    pub(crate) fn replica(&self) -> Client {
        Client {
            router: Api::router_on(&self.redis, &[], &[]),
        }
    }

    /// Another control plane on the same Redis (a replica, or a restart).
    pub(crate) fn router_on(redis: &RedisServer, flags: &[&str], env: &[(&str, &str)]) -> Router {
        let mut vars: HashMap<String, String> = [
            ("ADMIN_TOKEN".to_owned(), TOKEN.to_owned()),
            ("API_PROXY_NODE_TOKEN".to_owned(), NODE_TOKEN.to_owned()),
        ]
        .into();
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let url = redis.url();
        let args = ["apiproxy-controlplane", "--redis-url", url.as_str()];
        let config = Config::parse(args.into_iter().chain(flags.iter().copied()), &vars).unwrap();
        app(&config, redis_connection(&url, None).unwrap())
    }
}

impl Client {
    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value, header::HeaderMap) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value, headers)
    }

    pub(crate) async fn admin(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(
                method,
                uri,
                Some(&format!("Bearer {TOKEN}")),
                body.map(|b| b.to_string()),
            )
            .await;
        (s, v)
    }
}
