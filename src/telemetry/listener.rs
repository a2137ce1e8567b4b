//! The `/health` and `/metrics` listener: our own accept loop (a cap on
//! open connections, oldest closed first; a request-head timeout), the two
//! routes, and basic auth for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::{BasicAuth, TelemetryConfig, TelemetryError, health, metrics};
use crate::stats::View;

/// Serves `/health` and `/metrics` until `shutdown` is cancelled.
///
/// The accept loop is our own so that the listener can never take the file
/// descriptors the sinks need: at most `cfg.max_connections` connections are
/// open at once, and a new connection beyond that closes the oldest one (a
/// health check still gets through while idle or slow clients hold every
/// slot; the clients that lose their slot are the ones that held it
/// longest). A connection that does not send a whole request head within
/// `cfg.header_timeout` of connecting, or of its previous response, is
/// closed (hyper's header-read timeout, on tokio's clock).
pub async fn serve(
    listener: tokio::net::TcpListener,
    view: Arc<View>,
    cfg: TelemetryConfig,
    shutdown: CancellationToken,
) {
    let app = router(Arc::clone(&view), cfg.metrics_auth.clone());
    let stats = Arc::clone(&view.listener);
    let max = cfg.max_connections.max(1);
    let mut conns = tokio::task::JoinSet::new();
    // Open connections, oldest first.
    let mut order: std::collections::VecDeque<(tokio::task::Id, tokio::task::AbortHandle)> =
        std::collections::VecDeque::new();
    let forget = |order: &mut std::collections::VecDeque<(tokio::task::Id, _)>,
                  id: tokio::task::Id| {
        order.retain(|(i, _)| *i != id);
        stats.open.fetch_sub(1, Ordering::Relaxed);
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                forget(&mut order, id);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "the /health and /metrics listener cannot accept a connection");
                // Out of file descriptors, most likely: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Make room: close the oldest connection and wait until its socket
        // is closed, so that no more than `max` are ever open.
        while conns.len() >= max {
            if let Some((_, oldest)) = order.front() {
                oldest.abort();
            }
            if let Some(done) = conns.join_next_with_id().await {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        if e.is_cancelled() {
                            stats.evicted.fetch_add(1, Ordering::Relaxed);
                        }
                        e.id()
                    }
                };
                forget(&mut order, id);
            }
        }
        stats.open.fetch_add(1, Ordering::Relaxed);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let header_timeout = cfg.header_timeout;
        let conn_stats = Arc::clone(&stats);
        let handle = conns.spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                if e.is_timeout() {
                    conn_stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "a /health or /metrics connection ended with an error");
            }
        });
        order.push_back((handle.id(), handle));
    }
    conns.shutdown().await;
    stats.open.store(0, Ordering::Relaxed);
}

/// The routes: `/health` and `/metrics` (behind `auth` when set).
fn router(view: Arc<View>, auth: Option<BasicAuth>) -> axum::Router {
    let auth = Arc::new(auth);
    axum::Router::new()
        .route(
            "/health",
            axum::routing::get({
                let view = Arc::clone(&view);
                move || async move {
                    let (healthy, body) = health(&view);
                    let code = if healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        code,
                        [(header::CONTENT_TYPE, "application/json")],
                        body.to_string(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| async move {
                if let Some(auth) = &*auth
                    && !authorized(&headers, auth)
                {
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header(header::WWW_AUTHENTICATE, "Basic realm=\"metrics\"")
                        .body(axum::body::Body::empty())
                        .expect("static response");
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics(&view),
                )
                    .into_response()
            }),
        )
}

fn authorized(headers: &HeaderMap, auth: &BasicAuth) -> bool {
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        auth.user,
        auth.password.expose()
    ));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| v.trim() == expected)
}

/// Binds the telemetry address. A taken default address is not fatal.
pub async fn bind(
    cfg: &TelemetryConfig,
) -> Result<Option<tokio::net::TcpListener>, TelemetryError> {
    match tokio::net::TcpListener::bind(cfg.addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if cfg.addr_is_default => {
            tracing::error!(addr = %cfg.addr, error = %e, "cannot listen on the default --health-addr; running without /health and /metrics (set --health-addr)");
            Ok(None)
        }
        Err(source) => Err(TelemetryError::Listen {
            addr: cfg.addr,
            source,
        }),
    }
}
