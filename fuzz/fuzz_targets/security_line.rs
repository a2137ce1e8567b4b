//! Any text as a syslog MSG from the syslog ingress: a Cloud Controller CEF
//! security event or UAA audit line becomes a record (or a clear error),
//! anything else is ignored; the record encodes to valid JSON and survives
//! the disk buffer's form. Nothing may panic.
#![no_main]

use cf_audit_nozzle::record::EncodeContext;
use cf_audit_nozzle::record::security::{read_line, security_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = cf_audit_nozzle::record::cef::parse(&text);
    let _ = cf_audit_nozzle::record::uaa::parse(&text);
    let Ok(Some(event)) = read_line(&text, "fuzz/0", Some(1)) else {
        return;
    };
    let record = security_record(event);
    let mut out = Vec::new();
    record.write_json(&EncodeContext::new("fuzz"), &mut out);
    assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
});
