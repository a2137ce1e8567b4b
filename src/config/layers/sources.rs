//! The layers below the command line and the environment: the TOML file
//! `--config` names, the user-provided service in `VCAP_SERVICES`, and what
//! the platform sets (`VCAP_APPLICATION`, `CF_INSTANCE_INDEX`, `PORT`), each
//! read into [`Found`] values for [`super::load`] to check.

use std::path::PathBuf;

use super::{Found, Origin};

/// The values of a TOML or JSON scalar or list, as strings.
fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Keys and values of a JSON object (a TOML table is converted to one).
fn object_layer(
    object: &serde_json::Map<String, serde_json::Value>,
    origin: &Origin,
    errors: &mut Vec<String>,
) -> Vec<Found> {
    let mut found = Vec::new();
    for (key, value) in object {
        let values = match value {
            serde_json::Value::Array(items) => items.iter().map(scalar_text).collect(),
            v => scalar_text(v).map(|s| vec![s]),
        };
        match values {
            Some(values) => found.push(Found {
                key: key.clone(),
                values,
                origin: origin.clone(),
            }),
            None => errors.push(format!(
                "{origin}: {key:?} must be a string, number, boolean or a list of them"
            )),
        }
    }
    found
}

/// The options in the TOML file `path`.
pub(super) fn file_layer(path: &PathBuf, errors: &mut Vec<String>) -> Vec<Found> {
    let origin = Origin::File(path.clone());
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!(
                "--config (CONFIG): cannot read {}: {e}",
                path.display()
            ));
            return Vec::new();
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            let why = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            errors.push(format!("{origin}: not valid TOML{at}: {why}"));
            return Vec::new();
        }
    };
    match serde_json::to_value(&table) {
        Ok(serde_json::Value::Object(object)) => object_layer(&object, &origin, errors),
        _ => {
            errors.push(format!("{origin}: cannot be read as a table of options"));
            Vec::new()
        }
    }
}

/// The credentials of the service named `name` in `VCAP_SERVICES`. An
/// absent service is an error only when its name was asked for.
pub(super) fn service_layer(
    vcap_services: Option<&str>,
    name: &str,
    named: bool,
    errors: &mut Vec<String>,
) -> Vec<Found> {
    let origin = Origin::Service(name.to_string());
    let Some(text) = vcap_services.filter(|t| !t.trim().is_empty()) else {
        if named {
            errors.push(format!(
                "--config-service (CONFIG_SERVICE) {name:?}: VCAP_SERVICES is not set (bind the service to the app)"
            ));
        }
        return Vec::new();
    };
    let services: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!("VCAP_SERVICES is not JSON: {e}"));
            return Vec::new();
        }
    };
    let instance = services
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|list| list.as_array())
        .flatten()
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name));
    let Some(instance) = instance else {
        if named {
            errors.push(format!(
                "--config-service (CONFIG_SERVICE): no service named {name:?} is bound (VCAP_SERVICES)"
            ));
        }
        return Vec::new();
    };
    match instance.get("credentials") {
        Some(serde_json::Value::Object(c)) => object_layer(c, &origin, errors),
        None => Vec::new(),
        Some(_) => {
            errors.push(format!("{origin}: credentials must be a JSON object"));
            Vec::new()
        }
    }
}

/// What Cloud Foundry says about this container: the CF API (for
/// `--cf-api`), this instance's index and the port the platform routes to.
pub(super) fn platform_layer(
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Vec<Found> {
    let mut found = Vec::new();
    let mut add = |key: &str, value: String, origin: &'static str| {
        found.push(Found {
            key: key.to_string(),
            values: vec![value],
            origin: Origin::Platform(origin),
        })
    };
    if let Some(text) = env("VCAP_APPLICATION") {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(app) => {
                if let Some(api) = app.get("cf_api").and_then(|v| v.as_str()) {
                    add("cf-api", api.to_string(), "VCAP_APPLICATION");
                }
                if let Some(i) = app.get("instance_index").and_then(|v| v.as_u64()) {
                    add("instance-index", i.to_string(), "VCAP_APPLICATION");
                }
            }
            Err(e) => errors.push(format!("VCAP_APPLICATION is not JSON: {e}")),
        }
    }
    if let Some(i) = env("CF_INSTANCE_INDEX") {
        match i.parse::<u32>() {
            Ok(i) => add("instance-index", i.to_string(), "CF_INSTANCE_INDEX"),
            Err(_) => errors.push(format!(
                "CF_INSTANCE_INDEX must be an instance number, not {i:?}"
            )),
        }
    }
    // An invalid PORT is reported by the telemetry options (config::telemetry).
    if let Some(port) = env("PORT").and_then(|p| p.parse::<u16>().ok()) {
        add("health-addr", format!("0.0.0.0:{port}"), "PORT");
    }
    found
}
