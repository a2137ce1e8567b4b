//! No credential and no record leaves for an origin nobody configured: a
//! redirect (307) from UAA's token endpoint or from the HTTP sink's receiver
//! to another origin (another port is another origin) is refused with an
//! error naming both origins, and the other origin receives nothing. A
//! redirect within the origin is followed. (The audit-events poller's
//! `pagination.next.href` is held to the same rule in tests/audit_events.rs.)

mod common;

use std::sync::Arc;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::http_client::http_client;
use cf_audit_nozzle::record::{EncodeContext, Record};
use cf_audit_nozzle::sink::http::{HttpFormat, HttpSink, HttpSinkConfig};
use cf_audit_nozzle::sink::{Batch, Sink, SinkFailure};
use cf_audit_nozzle::source::uaa::{TokenProvider, UaaConfig};
use common::peer::{Peer, Reply};

const SECRET: &str = "s3cret&not-for-others";
const TOKEN_REPLY: &str = r#"{"access_token":"tok","token_type":"bearer","expires_in":3600}"#;

fn uaa(token_url: &str) -> TokenProvider {
    TokenProvider::new(
        UaaConfig {
            token_url: token_url.parse().unwrap(),
            client_id: "nozzle".into(),
            client_secret: SECRET.into(),
        },
        http_client(None, false).unwrap(),
    )
}

#[tokio::test]
async fn uaa_never_reposts_the_client_secret_to_another_origin() {
    let elsewhere = Peer::start(Reply::Json(200, TOKEN_REPLY.into())).await;
    let uaa_peer = Peer::start(Reply::Redirect(format!("{}{{path}}", elsewhere.url))).await;
    let token_url = format!("{}/oauth/token", uaa_peer.url);

    let err = uaa(&token_url).authorization().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach UAA at {token_url}: error following redirect: refused a redirect from {} to {}: credentials and records are sent only to the configured origin",
            uaa_peer.url, elsewhere.url
        )
    );
    assert!(!err.to_string().contains(SECRET));
    let asked = uaa_peer.seen();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].method.as_str(), asked[0].target.as_str()),
        ("POST", "/oauth/token")
    );
    assert_eq!(elsewhere.seen().len(), 0, "the other origin got the secret");

    // Within the origin, a redirect is followed (307 keeps the form).
    let same = Peer::start(Reply::Json(200, TOKEN_REPLY.into())).await;
    let provider = uaa(&format!("{}/moved/oauth/token", same.url));
    assert_eq!(provider.authorization().await.unwrap(), "bearer tok");
    let asked: Vec<String> = same.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(asked, ["/moved/oauth/token", "/oauth/token"]);
    let form: Vec<(String, String)> = form_urlencoded::parse(&same.seen()[1].body)
        .into_owned()
        .collect();
    assert!(
        form.contains(&("client_secret".into(), SECRET.into())),
        "{form:?}"
    );
}

fn hec_config(url: &str) -> HttpSinkConfig {
    HttpSinkConfig {
        headers: vec![("X-Api-Key".into(), "header-secret".into())],
        gzip: false,
        ..common::http_config(url, HttpFormat::Hec)
    }
}

fn batch(n: u64) -> Vec<Arc<Record>> {
    (0..n)
        .map(|i| {
            Arc::new(classify(common::log_envelope(
                1_700_000_000_000_000_000 + i as i64,
                "app",
                format!("record {i}"),
                &[],
            )))
        })
        .collect()
}

#[tokio::test]
async fn the_http_sink_never_sends_a_batch_or_its_headers_to_another_origin() {
    let ctx = EncodeContext::new(common::FOUNDATION);
    let elsewhere = Peer::start(Reply::Json(200, r#"{"text":"Success","code":0}"#.into())).await;
    let hec = Peer::start(Reply::Redirect(format!("{}{{path}}", elsewhere.url))).await;
    let mut sink = HttpSink::new(hec_config(&hec.url), ctx.clone()).unwrap();

    let records = batch(5);
    let failure = sink.write(Batch::new(1, &records)).await.unwrap_err();
    // Not delivered, not dropped: the runner keeps the batch and retries.
    assert!(matches!(failure, SinkFailure::Retry { .. }), "{failure:?}");
    let text = failure.error().to_string();
    assert!(
        text.contains(&format!(
            "refused a redirect from {} to {}: credentials and records are sent only to the configured origin",
            hec.url, elsewhere.url
        )),
        "{text}"
    );
    assert!(!text.contains("header-secret"), "{text}");
    assert_eq!(hec.seen().len(), 1);
    assert_eq!(elsewhere.seen().len(), 0, "the other origin got the batch");

    // Within the origin, the redirect is followed and the batch delivered once.
    let same = Peer::start(Reply::Json(200, r#"{"text":"Success","code":0}"#.into())).await;
    let mut sink = HttpSink::new(
        hec_config(&format!("{}/moved/services/collector/event", same.url)),
        ctx,
    )
    .unwrap();
    assert_eq!(sink.write(Batch::new(1, &records)).await.unwrap(), 5);
    let got = same.seen();
    let targets: Vec<&str> = got.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/moved/services/collector/event",
            "/services/collector/event"
        ]
    );
    assert_eq!(got[1].header("x-api-key"), Some("header-secret"));
    assert_eq!(
        String::from_utf8_lossy(&got[1].body)
            .matches("\"event\"")
            .count(),
        5
    );
}
