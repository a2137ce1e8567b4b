//! Any bytes as an `EnvelopeBatch` from the RLP: the envelope view must give
//! prost's verdict and, when both accept, prost's fields; then classify and
//! encode every record for every sink format. Nothing may panic.
#![no_main]

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::EnvelopeBatch;
use cf_audit_nozzle::record::{EncodeContext, EnvelopeView, decode_batch};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost::bytes::Bytes;

fuzz_target!(|data: &[u8]| {
    let prost = EnvelopeBatch::decode(data);
    let views = decode_batch(&Bytes::copy_from_slice(data));
    let views = match (prost, views) {
        (Ok(batch), Ok(views)) => {
            // Re-encoded by prost (ordered maps): equal bytes, equal fields,
            // floats compared bit for bit.
            let viewed = EnvelopeBatch {
                batch: views.iter().map(EnvelopeView::to_prost).collect(),
            };
            assert_eq!(
                batch.encode_to_vec(),
                viewed.encode_to_vec(),
                "the view's fields differ from prost's"
            );
            views
        }
        (Err(_), Err(_)) => return,
        (p, v) => panic!(
            "prost and the view disagree: prost {:?}, view {:?}",
            p.map(|_| ()),
            v.map(|_| ())
        ),
    };
    let ctx = EncodeContext::new("fuzz");
    let syslog = cf_audit_nozzle::sink::syslog::SyslogFormat::default();
    let mut out = Vec::new();
    for envelope in views {
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
