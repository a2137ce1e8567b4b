//! The audit filters: which kind of record an envelope becomes, and what a
//! Cloud Controller `API` log line says was done.
//!
//! Classification reads the envelope in place (its message type and the
//! `source_type` tag) and never fails: every envelope becomes exactly one record.

pub mod rules;

use crate::record::{
    ApiCall, ApiResource, ApiSource, EnvelopeView, Kind, MessageRef, MessageType, Record, ruby_hash,
};

/// Turns an envelope (a view of received bytes, or a prost `Envelope`,
/// which is encoded once to be viewed) into its record.
pub fn classify(envelope: impl Into<EnvelopeView>) -> Record {
    let envelope = envelope.into();
    let kind = kind_of(&envelope);
    let api = match (&kind, envelope.message()) {
        (Kind::Api, Some(MessageRef::Log(l))) => Some(Box::new(parse_api_message(
            &String::from_utf8_lossy(l.payload),
        ))),
        _ => None,
    };
    Record {
        kind,
        envelope,
        api,
        names: None,
        number: None,
    }
}

/// The kind an envelope belongs to. Envelopes without a message (which
/// Loggregator should never send) are kept as events rather than dropped.
pub(crate) fn kind_of(envelope: &EnvelopeView) -> Kind {
    match envelope.message_type() {
        Some(MessageType::Log) if envelope.tag("source_type") == Some("API") => Kind::Api,
        Some(MessageType::Log) => Kind::AppLog,
        Some(MessageType::Counter | MessageType::Gauge | MessageType::Timer) => Kind::Metric,
        Some(MessageType::Event) | None => Kind::Event,
    }
}

/// Cloud Controller's log-line texts (reference §3.4), the audit event type
/// each stands for, and what follows the phrase: the guid of an app or of a build.
const API_MESSAGES: &[(&str, &str, &str)] = &[
    ("Created app with guid ", "audit.app.create", "app"),
    ("Updated app with guid ", "audit.app.update", "app"),
    (
        "Applied manifest to app with guid ",
        "audit.app.apply_manifest",
        "app",
    ),
    ("Starting app with guid ", "audit.app.start", "app"),
    ("Stopping app with guid ", "audit.app.stop", "app"),
    ("Restarted app with guid ", "audit.app.restart", "app"),
    ("Deleted app with guid ", "audit.app.delete-request", "app"),
    (
        "Enqueued job to delete app with guid ",
        "audit.app.delete-request",
        "app",
    ),
    ("App instance exited with guid ", "app.crash", "app"),
    (
        "Creating build for app with guid ",
        "audit.app.build.create",
        "app",
    ),
    (
        "Staging complete for build ",
        "audit.app.build.staged",
        "build",
    ),
    (
        "Staging failed for build ",
        "audit.app.build.failed",
        "build",
    ),
    (
        "Creating deployment for app with guid ",
        "audit.app.deployment.create",
        "app",
    ),
    (
        "Cancelling deployment for app with guid ",
        "audit.app.deployment.cancel",
        "app",
    ),
    (
        "Continuing deployment for app with guid ",
        "audit.app.deployment.continue",
        "app",
    ),
    (
        "Creating droplet for app with guid ",
        "audit.app.droplet.create",
        "app",
    ),
    (
        "Deleting droplet for app with guid ",
        "audit.app.droplet.delete",
        "app",
    ),
    (
        "Downloading droplet for app with guid ",
        "audit.app.droplet.download",
        "app",
    ),
    (
        "Uploading droplet for app with guid ",
        "audit.app.droplet.upload",
        "app",
    ),
    (
        "Adding app package for app with guid ",
        "audit.app.package.create",
        "app",
    ),
    (
        "Uploading app package for app with guid ",
        "audit.app.package.upload",
        "app",
    ),
    (
        "Uploading bits for app with guid ",
        "audit.app.upload-bits",
        "app",
    ),
    (
        "Deleting app package for app with guid ",
        "audit.app.package.delete",
        "app",
    ),
    (
        "Downloading app package for app with guid ",
        "audit.app.package.download",
        "app",
    ),
];

/// Reads a Cloud Controller `API` log line. Unrecognised texts give the event
/// name `unknown`; the raw text always stays in the record's `message`.
pub fn parse_api_message(text: &str) -> ApiCall {
    let text = text.trim_end_matches(['\n', '\r']);
    for (phrase, event_name, target_type) in API_MESSAGES {
        let Some(rest) = text.strip_prefix(phrase) else {
            continue;
        };
        let guid_len = rest.find([' ', '(', ':']).unwrap_or(rest.len());
        let (guid, tail) = rest.split_at(guid_len);
        return ApiCall {
            event_name: (*event_name).to_string(),
            target: (!guid.is_empty()).then(|| ApiResource {
                kind: (*target_type).to_string(),
                guid: Some(guid.to_string()),
                name: None,
            }),
            request_parameters: request_parameters(tail),
            source: ApiSource::Firehose,
            security: None,
            merged_firehose: None,
        };
    }
    ApiCall {
        event_name: "unknown".to_string(),
        target: None,
        request_parameters: None,
        source: ApiSource::Firehose,
        security: None,
        merged_firehose: None,
    }
}

/// What follows the guid: ` (<attributes>)` or ` payload: <object>`, as JSON
/// when it is a Ruby hash, else as the text CC wrote.
fn request_parameters(tail: &str) -> Option<serde_json::Value> {
    let tail = tail.trim_start();
    let text = if let Some(inner) = tail.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        inner
    } else {
        tail.strip_prefix("payload:").map(str::trim)?
    };
    if text.is_empty() {
        return None;
    }
    Some(ruby_hash::parse(text).unwrap_or_else(|| serde_json::Value::String(text.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::{Value, json};

    fn check(text: &str, name: &str, target: Option<(&str, &str)>, params: Option<Value>) {
        let call = parse_api_message(text);
        assert_eq!(call.event_name, name, "{text}");
        assert_eq!(
            call.target
                .as_ref()
                .map(|t| (t.kind.as_str(), t.guid.as_deref().unwrap_or_default())),
            target,
            "{text}"
        );
        assert_eq!(call.request_parameters, params, "{text}");
    }

    #[test]
    fn cloud_controller_texts() {
        let g = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
        check(
            &format!(
                "Updated app with guid {g} ({{\"name\"=>\"spring-music\", \"instances\"=>1, \"memory\"=>512, \"environment_json\"=>\"PRIVATE DATA HIDDEN\"}})"
            ),
            "audit.app.update",
            Some(("app", g)),
            Some(
                json!({"name": "spring-music", "instances": 1, "memory": 512, "environment_json": "PRIVATE DATA HIDDEN"}),
            ),
        );
        check(
            &format!("Created app with guid {g}"),
            "audit.app.create",
            Some(("app", g)),
            None,
        );
        check(
            &format!("Starting app with guid {g}\n"),
            "audit.app.start",
            Some(("app", g)),
            None,
        );
        check(
            &format!(
                "App instance exited with guid {g} payload: {{\"instance\"=>\"a\", \"index\"=>0}}"
            ),
            "app.crash",
            Some(("app", g)),
            Some(json!({"instance": "a", "index": 0})),
        );
        check(
            &format!("Staging complete for build {g}"),
            "audit.app.build.staged",
            Some(("build", g)),
            None,
        );
        check("Could not find package for x", "unknown", None, None);
        check("", "unknown", None, None);
    }
}
