//! Validation of records against the published JSON Schemas in `schema/`.

use std::sync::OnceLock;

/// The compiled schema `schema/<name>`.
fn validator(name: &str) -> &'static jsonschema::Validator {
    static VALIDATORS: OnceLock<Vec<(&'static str, jsonschema::Validator)>> = OnceLock::new();
    let all = VALIDATORS.get_or_init(|| {
        [
            "api-invocation.schema.json",
            "app-log.schema.json",
            "metric.schema.json",
            "event.schema.json",
            "declaration.schema.json",
        ]
        .into_iter()
        .map(|file| {
            let path = format!("{}/schema/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("read the schema");
            let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
            let v = jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("{file} compiles: {e}"));
            (file, v)
        })
        .collect()
    });
    &all.iter()
        .find(|(f, _)| *f == name)
        .expect("a published schema")
        .1
}

/// The violations of `record` against `schema/<name>`, one line each.
pub fn violations(name: &str, record: &serde_json::Value) -> Vec<String> {
    validator(name)
        .iter_errors(record)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The schema a record is published under: a declaration's (a record with
/// `last_seq`), else its kind's.
pub fn schema_of(record: &serde_json::Value) -> &'static str {
    if record.get("last_seq").is_some() {
        return "declaration.schema.json";
    }
    match record["kind"].as_str() {
        Some("api") => "api-invocation.schema.json",
        Some("app_log") => "app-log.schema.json",
        Some("metric") => "metric.schema.json",
        Some("event") => "event.schema.json",
        other => panic!("no schema for kind {other:?} in {record}"),
    }
}

/// Panics, naming every violation, unless `record` validates against its
/// kind's schema (or the declaration schema).
pub fn assert_valid_record(record: &serde_json::Value) {
    let name = schema_of(record);
    let errors = violations(name, record);
    assert!(errors.is_empty(), "{name}: {errors:#?}\nin {record:#}");
}

/// `record` (encoded without the router, so without a number) with the
/// `boot` and `seq` the router would have given it, for the schemas,
/// which require them.
pub fn as_numbered(record: &serde_json::Value) -> serde_json::Value {
    let mut r = record.clone();
    let fields = r.as_object_mut().expect("a record is an object");
    assert!(
        fields.get("boot").is_none() && fields.get("seq").is_none(),
        "already numbered: {record}"
    );
    fields.insert("boot".into(), "0-20261202T193322Z-9f3a2c1b".into());
    fields.insert("seq".into(), 0.into());
    r
}

/// Panics, naming every violation, unless `record` validates against
/// `schema/api-invocation.schema.json`.
pub fn assert_valid_api_record(record: &serde_json::Value) {
    let errors = violations("api-invocation.schema.json", record);
    assert!(errors.is_empty(), "{errors:#?}\nin {record:#}");
}
