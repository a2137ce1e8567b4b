//! Any text as the `data:` of an RLP Gateway SSE frame: the lenient JSON
//! decoder either refuses it with an error or yields envelopes whose records
//! encode to valid JSON. Nothing may panic. The views the gateway source
//! dispatches (the wire written without prost) say exactly what the prost
//! envelopes say, and are refused exactly when they are.
#![no_main]

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::record::EncodeContext;
use cf_audit_nozzle::record::envelope::EnvelopeView;
use cf_audit_nozzle::source::gateway::json::{decode_batch, decode_batch_views};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let views = decode_batch_views(text);
    let Ok(envelopes) = decode_batch(text) else {
        assert!(views.is_err());
        return;
    };
    let views = views.expect("views decode where prost envelopes do");
    assert_eq!(views.len(), envelopes.len());
    let mut ctx = EncodeContext::new("fuzz");
    ctx.record_envelope = true;
    let record = |view: EnvelopeView| {
        let mut out = Vec::new();
        classify(view).write_json(&ctx, &mut out);
        serde_json::from_slice::<serde_json::Value>(&out).expect("a record is JSON")
    };
    for (envelope, view) in envelopes.into_iter().zip(views) {
        assert_eq!(record(envelope.into()), record(view));
    }
});
