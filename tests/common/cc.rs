//! A test Cloud Controller: paginated `/v3/audit_events` (with events that
//! arrive while a poll is under way) and `/v3/apps/:guid?include=space.organization`,
//! counting the requests it serves and refusing other tokens than `bearer test-token`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cf_audit_nozzle::source::cloud_controller::CloudController;
use cf_audit_nozzle::source::uaa::TokenProvider;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token";

#[derive(Default)]
pub struct TestCc {
    pub base: Mutex<String>,
    /// Audit events in created_at order.
    pub events: Mutex<Vec<Value>>,
    pub event_requests: AtomicU64,
    /// After serving this audit-events request number (1-based), append these events.
    pub append_after: Mutex<BTreeMap<u64, Vec<Value>>>,
    /// When serving this request number, cancel the token (a restart) before answering.
    pub cancel_at: Mutex<Option<(u64, CancellationToken)>>,
    /// Apps: guid -> (name, space guid, space name, org guid, org name).
    pub apps: Mutex<BTreeMap<String, [String; 5]>>,
    pub app_requests: AtomicU64,
    /// How long an app lookup takes (tokio's clock).
    pub app_delay: Mutex<Duration>,
    /// Bodies of the token requests UAA received.
    pub token_requests: Mutex<Vec<String>>,
    /// The origin `pagination` links point to, when not this server's own.
    pub link_base: Mutex<Option<String>>,
    /// The client's `max_body` (`--cf-max-response-bytes`), when not the default.
    pub max_body: Mutex<Option<usize>>,
}

impl TestCc {
    pub fn client(&self) -> CloudController {
        CloudController {
            base: self.base.lock().unwrap().parse().unwrap(),
            http: cf_audit_nozzle::http_client::http_client(None, false).unwrap(),
            token: TokenProvider::fixed(TOKEN),
            max_body: self
                .max_body
                .lock()
                .unwrap()
                .unwrap_or(cf_audit_nozzle::source::cf_api::DEFAULT_MAX_RESPONSE_BYTES),
        }
    }
}

pub async fn start() -> Arc<TestCc> {
    let cc = Arc::new(TestCc::default());
    let app = axum::Router::new()
        .route("/v3/audit_events", axum::routing::get(audit_events))
        .route("/v3/apps/{guid}", axum::routing::get(app))
        .route("/", axum::routing::get(root))
        .route("/oauth/token", axum::routing::post(token))
        .with_state(Arc::clone(&cc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *cc.base.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    cc
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("bearer {TOKEN}"))
}

/// An audit event of the shape CC's v3 API returns.
pub fn event(guid: &str, created_at: &str, n: u64) -> Value {
    json!({
        "guid": guid, "created_at": created_at, "updated_at": created_at,
        "type": "audit.app.update",
        "actor": {"guid": "d5a2f3b4-1111-4222-8333-944455556666", "type": "user", "name": "admin@example.com"},
        "target": {"guid": "cdabc600-0b73-48e1-b7d2-26af2c63f933", "type": "app", "name": "my-app"},
        "data": {"request": {"instances": n, "environment_variables": "PRIVATE DATA HIDDEN"}},
        "space": {"guid": "7a1c3a55-3e0b-4d7e-9a4b-3f3e1c2d4b5a"},
        "organization": {"guid": "e2a3c0d1-4b5c-4d6e-8f70-1a2b3c4d5e6f"},
        "links": {"self": {"href": format!("https://api.example.org/v3/audit_events/{guid}")}}
    })
}

async fn audit_events(
    State(cc): State<Arc<TestCc>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let n = cc.event_requests.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some((at, token)) = cc.cancel_at.lock().unwrap().as_ref()
        && *at == n
    {
        token.cancel();
    }
    let q: BTreeMap<String, String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    assert_eq!(q.get("order_by").map(String::as_str), Some("created_at"));
    let gte = q.get("created_ats[gte]").cloned().unwrap_or_default();
    let per_page: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(50);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let body = {
        let events = cc.events.lock().unwrap();
        let matching: Vec<&Value> = events
            .iter()
            .filter(|e| e["created_at"].as_str().unwrap() >= gte.as_str())
            .collect();
        let total_pages = matching.len().div_ceil(per_page).max(1);
        let resources: Vec<&Value> = matching
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .copied()
            .collect();
        let base = cc
            .link_base
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| cc.base.lock().unwrap().clone());
        let href = |p: usize| {
            let mut u = reqwest::Url::parse(&format!("{base}/v3/audit_events")).unwrap();
            u.query_pairs_mut()
                .append_pair("order_by", "created_at")
                .append_pair("created_ats[gte]", &gte)
                .append_pair("page", &p.to_string())
                .append_pair("per_page", &per_page.to_string());
            json!({"href": u.to_string()})
        };
        json!({
            "pagination": {
                "total_results": matching.len(), "total_pages": total_pages,
                "first": href(1), "last": href(total_pages),
                "next": if page < total_pages { href(page + 1) } else { Value::Null },
                "previous": if page > 1 { href(page - 1) } else { Value::Null },
            },
            "resources": resources,
        })
    };
    if let Some(new) = cc.append_after.lock().unwrap().remove(&n) {
        cc.events.lock().unwrap().extend(new);
    }
    json_response(body).into_response()
}

async fn app(
    State(cc): State<Arc<TestCc>>,
    headers: HeaderMap,
    Path(guid): Path<String>,
) -> Response {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    cc.app_requests.fetch_add(1, Ordering::SeqCst);
    let delay = *cc.app_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Some([name, sg, sn, og, on]) = cc.apps.lock().unwrap().get(&guid).cloned() else {
        return (StatusCode::NOT_FOUND, json_response(json!({"errors": [{"code": 10010, "title": "CF-ResourceNotFound", "detail": "App not found"}]}))).into_response();
    };
    json_response(json!({
        "guid": guid, "name": name,
        "relationships": {"space": {"data": {"guid": sg}}},
        "included": {
            "spaces": [{"guid": sg, "name": sn, "relationships": {"organization": {"data": {"guid": og}}}}],
            "organizations": [{"guid": og, "name": on}]
        }
    }))
    .into_response()
}

fn json_response(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

/// The API root: CC and UAA are both this server.
async fn root(State(cc): State<Arc<TestCc>>) -> Response {
    let base = cc.base.lock().unwrap().clone();
    json_response(json!({"links": {
        "self": {"href": base}, "uaa": {"href": base}, "login": {"href": base},
        "cloud_controller_v3": {"href": format!("{base}/v3")}
    }}))
}

/// UAA's token endpoint (client credentials): always `test-token`.
async fn token(State(cc): State<Arc<TestCc>>, body: String) -> Response {
    cc.token_requests.lock().unwrap().push(body);
    json_response(json!({"access_token": TOKEN, "token_type": "bearer", "expires_in": 43199}))
}
