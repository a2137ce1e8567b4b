//! A test HTTP peer that keeps every request it is sent (method, target,
//! headers, body) and answers each with the same reply: a redirect, or a
//! fixed status and body. Another port is another origin. A request for
//! `/moved/<rest>` is redirected (307) to `/<rest>` on the same origin.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Clone, Debug)]
pub enum Reply {
    /// `307 Temporary Redirect` to this URL (`{path}` is replaced by the request's path and query).
    Redirect(String),
    /// This status with this JSON body.
    Json(u16, String),
}

/// One request as the peer received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Peer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct Shared {
    reply: Reply,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Peer {
    pub async fn start(reply: Reply) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            reply,
            seen: Arc::clone(&seen),
        });
        let app = axum::Router::new().fallback(answer).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, seen }
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        target: uri.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
    });
    if let Some(rest) = uri.path().strip_prefix("/moved/") {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("/{rest}"))],
            "moved",
        )
            .into_response();
    }
    match &shared.reply {
        Reply::Redirect(to) => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let location = to.replace("{path}", path);
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", location)],
                "moved",
            )
                .into_response()
        }
        Reply::Json(status, body) => (
            StatusCode::from_u16(*status).unwrap(),
            [("content-type", "application/json")],
            body.clone(),
        )
            .into_response(),
    }
}
