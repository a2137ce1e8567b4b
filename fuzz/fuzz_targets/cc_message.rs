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
    if let Some(params) = &call.request_parameters {
        assert!(text.contains(params.as_str()));
    }
    if let Some((_, guid)) = &call.target {
        assert!(text.contains(guid.as_str()));
    }
});
