//! The OpenAPI document as a contract the whole suite checks: every answer any test receives
//! through the harness is matched to its operation in `server/openapi.json` and must have a
//! documented status, the documented content type, an `X-Request-Id`, and a body valid against
//! the documented schema. A test that provokes an undocumented answer fails, so the document
//! cannot drift from the server without a test saying so.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use flashsale_server::api::OPENAPI_JSON;
use serde_json::{Value, json};

pub static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(OPENAPI_JSON).unwrap_or_else(|e| panic!("openapi.json: {e}"))
});

/// Compiled validators by JSON pointer of the schema in the document.
static VALIDATORS: LazyLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What one answer looked like on the wire.
pub struct Answer<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub content_type: &'a str,
    pub request_id: Option<&'a str>,
    pub body: &'a Value,
}

/// The document's path template matching `path` (ids as any one segment).
fn template_of(path: &str) -> Option<&'static str> {
    let paths = DOCUMENT["paths"].as_object()?;
    let wanted: Vec<&str> = path.split('/').collect();
    paths.keys().map(String::as_str).find(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == wanted.len()
            && parts
                .iter()
                .zip(&wanted)
                .all(|(t, w)| (t.starts_with('{') && !w.is_empty()) || t == w)
    })
}

/// Follows a `$ref` within the document, or returns `value` as it is.
fn resolve(value: &'static Value) -> &'static Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => DOCUMENT
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("openapi.json: dangling $ref {pointer}")),
        None => value,
    }
}

/// The response the document promises, and the JSON pointer naming it for messages.
fn documented(answer: &Answer<'_>) -> Result<(&'static Value, String), String> {
    let status = answer.status.to_string();
    let Some(template) = template_of(answer.path) else {
        if answer.status == 404 {
            return Ok((
                resolve(&DOCUMENT["components"]["responses"]["NotFound"]),
                "#/components/responses/NotFound".into(),
            ));
        }
        return Err(format!(
            "{} is no documented path, yet answered {status}",
            answer.path
        ));
    };
    let method = answer.method.to_ascii_lowercase();
    let Some(operation) = DOCUMENT["paths"][template].get(&method) else {
        if answer.status == 405 {
            return Ok((
                resolve(&DOCUMENT["components"]["responses"]["MethodNotAllowed"]),
                "#/components/responses/MethodNotAllowed".into(),
            ));
        }
        return Err(format!(
            "{method} {template} is not documented, yet answered {status}"
        ));
    };
    match operation["responses"].get(&status) {
        Some(response) => Ok((resolve(response), format!("{method} {template} {status}"))),
        None => Err(format!(
            "{method} {template} answered {status}, which its responses do not document"
        )),
    }
}

pub fn validator(pointer: &str, schema: &Value) -> Arc<jsonschema::Validator> {
    let mut cache = VALIDATORS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = cache.entry(pointer.to_owned()).or_insert_with(|| {
        // The schema with the document's components beside it, so `#/components/...` resolves.
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": DOCUMENT["components"],
        });
        let compiled = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("openapi.json: the schema of {pointer} is invalid: {e}"));
        Arc::new(compiled)
    });
    Arc::clone(entry)
}

/// Checks one answer against the document.
///
/// # Errors
/// What is undocumented or does not fit, in words.
pub fn check(answer: &Answer<'_>) -> Result<(), String> {
    let (response, name) = documented(answer)?;
    if answer.request_id.is_none_or(str::is_empty) {
        return Err(format!("{name}: no X-Request-Id"));
    }
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return Ok(());
    };
    let media = answer
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let Some(media_type) = content.get(media) else {
        let documented: Vec<&String> = content.keys().collect();
        return Err(format!(
            "{name}: content type {media:?}, documented {documented:?}"
        ));
    };
    if media.ends_with("json") {
        let schema = &media_type["schema"];
        let pointer = format!("{name} {media}");
        let validator = validator(&pointer, schema);
        let errors: Vec<String> = validator
            .iter_errors(answer.body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "{name}: the body does not fit its schema: {}; body {}",
                errors.join("; "),
                answer.body
            ));
        }
    }
    Ok(())
}
