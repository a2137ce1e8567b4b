//! cf-audit-nozzle: a Cloud Foundry Loggregator firehose nozzle that turns the
//! firehose into an audit trail.
//!
//! The modules in the order data flows through them:
//!
//! 1. **Sources** ([`source`]): [`source::rlp`] subscribes to the Reverse Log
//!    Proxy's `loggregator.v2.Egress/BatchedReceiver` over mutual TLS and
//!    reconnects with jittered backoff; [`source::gateway`] reads the RLP
//!    Gateway's Server-Sent Events with a UAA token ([`source::uaa`]) for
//!    nozzles pushed as apps; both ask only for the [`source::Streams`]
//!    configured and share [`source::status`]; [`source::audit_events`]
//!    polls Cloud Controller's audit events into `api` records;
//!    [`source::emulator`] is an in-process Loggregator for the demo, tests
//!    and benchmark. Wire types are in [`proto`].
//! 2. **Classify** ([`classify`]): each envelope becomes exactly one [`record::Record`]
//!    of kind `api` (Cloud Controller's `API` log lines, read into
//!    CloudTrail-style fields), `app_log`, `metric` or `event`. [`record`] holds
//!    the record and its JSON shape. [`classify::rules`] decides what is
//!    delivered; [`enrich`] adds app, space and org names from Cloud Controller.
//! 3. **Route** ([`route`]): each kind goes to its sinks; the router numbers
//!    what it accepts (`boot`, `seq` per kind, [`record::Number`]), declares
//!    each kind's last number every minute and at shutdown, and offers each
//!    sink its share without waiting, so ingress never waits on a sink.
//! 4. **Sinks** ([`sink`]): a bounded queue, batching and exact accounting
//!    shared by all; [`sink::stdout`] and [`sink::file`] (CloudTrail-style gzip files);
//!    [`sink::archive::ObjectSink`] writes the same files to S3 (or a local
//!    folder) through [`sink::archive`], feeding the signed digest chain ([`sink::archive::digest`],
//!    formats in [`integrity`]) that [`validate`] checks; [`gaps`] reads an
//!    archive or a SIEM's export and names the record numbers missing.
//!
//! [`pipeline`] puts the sinks behind the router; [`run`] assembles the
//! nozzle (source, pipeline, the audit-events poller and enrichment,
//! telemetry, alerts) and shuts it down in order; [`config`] is the command
//! line and its validated forms; [`demo`] runs the emulator into the real
//! pipeline.
//! Beside the flow: [`stats`] gathers the counters the stages keep;
//! [`telemetry`] serves `/health` and `/metrics` from them; [`alert`] watches
//! them for stalled sinks, drops and upstream loss; [`tail`] prints the
//! firehose live for an operator; [`logging`] sets up the nozzle's own log
//! lines. Under every stage: [`backoff`] paces reconnects and retries, and
//! [`http_client`] is the one HTTP client (trust roots, redirect policy).
//! Which module may import which is in ARCHITECTURE.md ("Layers").

#![forbid(unsafe_code)]

pub mod alert;
pub mod backoff;
pub mod classify;
pub mod config;
pub mod counters;
pub mod demo;
pub mod enrich;
pub mod gaps;
pub mod http_client;
pub mod integrity;
pub mod logging;
pub mod pipeline;
pub mod record;
pub mod redact;
pub mod route;
pub mod run;
pub mod sink;
pub mod source;
pub mod stats;
pub mod tail;
pub mod telemetry;
pub mod tls;
pub mod validate;

/// Loggregator V2 wire types, client and server, generated from `proto/`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("loggregator.v2");

    /// A log envelope of instance `0` for the library's unit tests.
    #[cfg(test)]
    pub(crate) fn log_envelope(
        timestamp: i64,
        source_id: &str,
        payload: &str,
        r#type: log::Type,
        tags: &[(&str, &str)],
    ) -> Envelope {
        Envelope {
            timestamp,
            source_id: source_id.into(),
            instance_id: "0".into(),
            deprecated_tags: Default::default(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            message: Some(envelope::Message::Log(Log {
                payload: payload.as_bytes().to_vec().into(),
                r#type: r#type as i32,
            })),
        }
    }
}

/// An error and its sources, joined with `: `. Library errors often say only
/// "transport error" at the top; the cause (a rustls verdict, a refused
/// connection) is further down, and operators need it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    // Libraries write the URL they failed on into their errors (reqwest:
    // "for url (...)"), credentials and all.
    redact::urls_in(&parts.join(": "))
}
