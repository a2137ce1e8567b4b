//! Any JSON as one Cloud Controller audit event (a `/v3/audit_events`
//! resource): it becomes a record or a clear error, and the record encodes
//! to valid JSON. Nothing may panic.
#![no_main]

use cf_audit_nozzle::record::EncodeContext;
use cf_audit_nozzle::record::api::audit_event_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(record) = audit_event_record(event) else {
        return;
    };
    let mut out = Vec::new();
    record.write_json(
        &EncodeContext::new("fuzz"),
        &mut out,
    );
    assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
});
