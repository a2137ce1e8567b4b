//! Validation of records against the published ApiInvocation JSON Schema.

use std::sync::OnceLock;

/// Panics, naming every violation, unless `record` validates against
/// `schema/api-invocation.schema.json`.
pub fn assert_valid_api_record(record: &serde_json::Value) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let v = VALIDATOR.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schema/api-invocation.schema.json"
        );
        let text = std::fs::read_to_string(path).expect("read the schema");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
        jsonschema::draft202012::new(&schema).expect("schema compiles")
    });
    let errors: Vec<String> = v
        .iter_errors(record)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\nin {record:#}");
}
