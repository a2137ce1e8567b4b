//! HEC indexer acknowledgement (`--hec-acks`): a request Splunk accepted
//! counts as delivered only once `/services/collector/ack` says it was
//! indexed; one not acknowledged within the timeout is sent again.

use std::time::Duration;

use super::HttpSink;
use crate::sink::{SinkError, SinkFailure};

/// How HEC indexer acknowledgements are followed.
#[derive(Clone, Debug)]
pub struct AckConfig {
    /// How often `/services/collector/ack` is asked (the sink's roll interval).
    pub interval: Duration,
    /// A request not acknowledged after this long is sent again (at least once).
    pub timeout: Duration,
    /// Requests awaiting acknowledgement at most; beyond, writes wait.
    pub max_pending: usize,
}

/// A request Splunk accepted and has not yet said it indexed.
pub(super) struct Unacked {
    pub(super) ack_id: u64,
    pub(super) body: bytes::Bytes,
    pub(super) records: u64,
    pub(super) sent: tokio::time::Instant,
    /// Indexed, but reported only once every earlier request is too: the
    /// runner and the disk buffer count deliveries in order.
    pub(super) acked: bool,
}

/// Where HEC acknowledgements are asked for, next to the event endpoint.
pub(crate) fn ack_endpoint(endpoint: &str) -> String {
    match endpoint.find("/services/collector") {
        Some(i) => format!("{}/services/collector/ack", &endpoint[..i]),
        None => format!("{}/ack", endpoint.trim_end_matches('/')),
    }
}

impl HttpSink {
    /// With `max_pending` requests awaiting acknowledgement, asks Splunk
    /// once more; still full, the batch waits (a retryable failure).
    pub(super) async fn wait_for_acks(&mut self) -> Result<(), SinkFailure> {
        let max_pending = self.cfg.acks.as_ref().map_or(usize::MAX, |a| a.max_pending);
        if self.unacked.len() >= max_pending {
            self.poll_acks().await;
            if self.unacked.len() >= max_pending {
                let error = SinkError::Unacknowledged {
                    requests: self.unacked.len(),
                };
                return Err(SinkFailure::Retry { error, after: None });
            }
        }
        Ok(())
    }

    /// Asks Splunk which requests it indexed; counts their records as
    /// acknowledged and sends again those waiting longer than the timeout.
    pub(super) async fn poll_acks(&mut self) {
        let Some(acks) = self.cfg.acks.clone() else {
            return;
        };
        if self.unacked.is_empty() {
            return;
        }
        let ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|u| !u.acked)
            .map(|u| u.ack_id)
            .collect();
        let req = self
            .client
            .post(ack_endpoint(&self.endpoint))
            .header("Content-Type", "application/json")
            .body(serde_json::json!({ "acks": ids }).to_string());
        let answer = match self.hec_identity(req).send().await {
            Ok(r) if r.status().is_success() => r
                .text()
                .await
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()),
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    "HEC acknowledgement query refused"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "HEC acknowledgement query failed");
                None
            }
        };
        if let Some(acked) = answer.as_ref().and_then(|a| a.get("acks")) {
            for u in &mut self.unacked {
                if acked.get(u.ack_id.to_string()).and_then(|v| v.as_bool()) == Some(true) {
                    u.acked = true;
                }
            }
        }
        let now = tokio::time::Instant::now();
        for i in 0..self.unacked.len() {
            if self.unacked[i].acked || now.duration_since(self.unacked[i].sent) < acks.timeout {
                continue;
            }
            // Not indexed in time: send it again (Splunk may then hold it twice).
            let body = self.unacked[i].body.clone();
            match self.post(body).await {
                Ok(Some(id)) => {
                    tracing::warn!(
                        records = self.unacked[i].records,
                        "HEC request not acknowledged in time; sent again"
                    );
                    self.unacked[i].ack_id = id;
                    self.unacked[i].sent = now;
                }
                Ok(None) => self.unacked[i].acked = true,
                Err(f) => {
                    tracing::warn!(error = %f.failure.error().in_sink("http"), "resending an unacknowledged HEC request failed")
                }
            }
        }
        // Report in order: the acknowledged requests at the front.
        let done = self.unacked.iter().take_while(|u| u.acked).count();
        self.acked_unreported += self.unacked.drain(..done).map(|u| u.records).sum::<u64>();
    }
}
