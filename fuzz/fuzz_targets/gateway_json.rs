//! Any text as the `data:` of an RLP Gateway SSE frame: the lenient JSON
//! decoder either refuses it with an error or yields envelopes whose records
//! encode to valid JSON. Nothing may panic.
#![no_main]

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::record::EncodeContext;
use cf_audit_nozzle::source::gateway::json::decode_batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(envelopes) = decode_batch(text) else {
        return;
    };
    let ctx = EncodeContext::new("fuzz");
    let mut out = Vec::new();
    for envelope in envelopes {
        out.clear();
        classify(envelope).write_json(&ctx, &mut out);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    }
});
