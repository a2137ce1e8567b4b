//! Any bytes as an `EnvelopeBatch` from the RLP: decode, classify, and encode
//! every record for every sink format. Nothing may panic.
#![no_main]

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::EnvelopeBatch;
use cf_audit_nozzle::record::EncodeContext;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = EnvelopeBatch::decode(data) else {
        return;
    };
    let ctx = EncodeContext {
        foundation: "fuzz".into(),
    };
    let syslog = cf_audit_nozzle::sink::syslog::SyslogFormat::default();
    let mut out = Vec::new();
    for envelope in batch.batch {
        let record = classify(envelope);
        out.clear();
        record.write_json(&ctx, &mut out);
        // The record JSON must always be valid JSON.
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&out);
        assert!(parsed.is_ok(), "invalid record JSON: {:?}", String::from_utf8_lossy(&out));
        out.clear();
        cf_audit_nozzle::sink::http::encode_hec(&record, &ctx, None, &mut out);
        out.clear();
        cf_audit_nozzle::sink::syslog::encode(&record, &ctx, &syslog, &mut out);
        let _ = record.approx_size();
    }
});
