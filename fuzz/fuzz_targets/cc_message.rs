//! Any text as a Cloud Controller `API` log line: the parser must not panic,
//! and what it keeps must come from the input.
#![no_main]

use cf_audit_nozzle::classify::parse_api_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let call = parse_api_message(text);
    // Unparsed parameters are kept as CC wrote them.
    if let Some(serde_json::Value::String(raw)) = &call.request_parameters {
        assert!(text.contains(raw.as_str()));
    }
    if let Some(guid) = call.target.as_ref().and_then(|t| t.guid.as_ref()) {
        assert!(text.contains(guid.as_str()));
    }
    // The Ruby-hash reader alone, on the same text.
    let _ = cf_audit_nozzle::record::ruby_hash::parse(text);
});
