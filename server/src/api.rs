//! The API's shape, apart from how it is served: its OpenAPI description, the table of routes
//! and their methods (which the request log, the 405 answers, the metrics and the OpenAPI check
//! read), and the JSON bodies products, holds and orders are shown as (which the routes and the
//! admin reconciliation pages answer with).

use chrono::{DateTime, SecondsFormat, Utc};
use flashsale_core::{Hold, HoldView, Order, Timestamp};
use serde::Serialize;
use serde_json::Value;

use flashsale_service::ProductView;

/// The OpenAPI 3.1 description of [`ROUTES`], served at `GET /api/openapi.json`. Tests keep
/// the two in step and check every answer of the end-to-end suite against its schemas.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Every route and its method, as [`crate::request_log`] names routes (ids as `{id}`): the
/// `Allow` header of a 405, the metrics' route label, and what `openapi.json` must describe.
/// Kept in step with [`crate::routes::routes`], which it mirrors.
pub const ROUTES: [(&str, &str); 14] = [
    ("/api/products/{id}", "GET"),
    ("/api/holds", "POST"),
    ("/api/holds/{id}", "GET"),
    ("/api/orders", "POST"),
    ("/api/orders/{id}", "GET"),
    ("/api/payments/webhook", "POST"),
    ("/api/admin/products", "POST"),
    ("/api/admin/products/{id}/restock", "POST"),
    ("/api/admin/webhooks", "GET"),
    ("/api/admin/orders", "GET"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/api/openapi.json", "GET"),
];

/// Whether a path segment is an id: digits only, as [`ROUTES`] write `{id}`.
pub fn is_id(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// The route of [`ROUTES`] a request's path falls on (its numeric segments as `{id}`), without
/// making a string: the metrics' route label, found per request.
pub fn route_of_path(path: &str) -> Option<&'static str> {
    ROUTES.iter().map(|&(route, _)| route).find(|route| {
        let mut given = path.split('/');
        let matched = route.split('/').all(|segment| {
            given
                .next()
                .is_some_and(|part| part == segment || (segment == "{id}" && is_id(part)))
        });
        matched && given.next().is_none()
    })
}

/// The methods a route answers, for the `Allow` header of a 405: a GET route answers HEAD too.
pub fn allowed_methods(route: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(path, _)| *path == route)
        .map(|(_, method)| {
            if *method == "GET" {
                "GET, HEAD"
            } else {
                method
            }
        })
}

/// A product as the API shows it; fields in the original service's order.
#[derive(Serialize)]
struct ProductBody<'a> {
    id: u64,
    name: &'a str,
    price_cents: u64,
    stock: u32,
    available: u32,
}

pub(crate) fn product_json(view: &ProductView) -> Value {
    to_value(ProductBody {
        id: view.product.id.0,
        name: &view.product.name,
        price_cents: view.product.price_cents.0,
        stock: view.product.stock.0,
        available: view.available.0,
    })
}

/// A hold as the API shows it.
#[derive(Serialize)]
struct HoldBody {
    hold_id: u64,
    product_id: u64,
    qty: u32,
    expires_at: String,
    state: &'static str,
}

pub(crate) fn hold_json(hold: &Hold, view: HoldView) -> Value {
    to_value(HoldBody {
        hold_id: hold.id.0,
        product_id: hold.product_id.0,
        qty: hold.qty.0,
        expires_at: rfc3339(hold.expires_at),
        state: view.as_str(),
    })
}

/// An order as the API shows it.
#[derive(Serialize)]
struct OrderBody {
    order_id: u64,
    hold_id: u64,
    product_id: u64,
    qty: u32,
    total_cents: u64,
    status: &'static str,
    created_at: String,
    payment_due_at: String,
}

pub(crate) fn order_json(order: &Order) -> Value {
    to_value(OrderBody {
        order_id: order.id.0,
        hold_id: order.hold_id.0,
        product_id: order.product_id.0,
        qty: order.qty.0,
        total_cents: order.total_cents.0,
        status: order.status.as_str(),
        created_at: rfc3339(order.created_at),
        payment_due_at: rfc3339(order.payment_due_at),
    })
}

/// Serializes a response body; these structs have no map keys or floats, so it cannot fail.
fn to_value(body: impl Serialize) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T04:00:00.000Z`.
pub(crate) fn rfc3339(at: Timestamp) -> String {
    let ms = i64::try_from(at.as_ms()).unwrap_or(i64::MAX);
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC);
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    fn document() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
    }

    #[test]
    fn the_document_describes_exactly_the_routes() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                documented.insert((path.clone(), method.to_ascii_uppercase()));
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(path, method)| ((*path).to_owned(), (*method).to_owned()))
            .collect();
        assert_eq!(documented, served);
    }

    /// `"word"` at the start of `text` (after blanks), when `word` is a code: `[a-z_]+`.
    fn code_literal(text: &str) -> Option<&str> {
        let (word, _) = text.trim_start().strip_prefix('"')?.split_once('"')?;
        let is_code = !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        is_code.then_some(word)
    }

    /// The code each `Problem::new(<status>, "<code>"` in `source` names.
    fn problem_codes(source: &str, constructor: &str, out: &mut BTreeSet<String>) {
        for (at, marker) in source.match_indices(constructor) {
            let rest = source
                .get(at.saturating_add(marker.len())..)
                .unwrap_or_default();
            let rest = rest
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            if let Some(word) = rest.trim_start().strip_prefix(',').and_then(code_literal) {
                out.insert(word.to_owned());
            }
        }
    }

    /// The source before its tests.
    fn without_tests(text: &str) -> &str {
        text.split_once("#[cfg(test)]")
            .map_or(text, |(code, _)| code)
    }

    /// Every `code` a problem can carry, read from the code that builds problems: the
    /// literals given to `Problem::new` and the words of each error type's `code()` and of
    /// `not_found`.
    fn codes_in_source() -> BTreeSet<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut codes = BTreeSet::new();
        let sources = [
            "src/routes/mod.rs",
            "src/routes/client.rs",
            "src/routes/webhook.rs",
            "src/routes/admin.rs",
            "src/routes/operations.rs",
            "src/routes/errors.rs",
            "src/problem.rs",
            "src/body.rs",
            "src/startup.rs",
            "src/reconcile/mod.rs",
            "src/request_log.rs",
        ];
        for file in sources {
            let text = std::fs::read_to_string(root.join(file)).expect("source");
            problem_codes(without_tests(&text), "Problem::new(", &mut codes);
            problem_codes(without_tests(&text), "Self::new(", &mut codes);
        }
        codes.extend(crate::refusals::AUTOMATIC.iter().map(|a| a.2.to_owned()));
        let mappings = [
            ("../core/src/errors.rs", "fn code("),
            ("src/signature.rs", "fn code("),
            ("src/routes/errors.rs", "fn not_found("),
        ];
        for (file, function) in mappings {
            let text = std::fs::read_to_string(root.join(file)).expect("source");
            let body = text
                .split_once(function)
                .and_then(|(_, rest)| rest.split_once("\n    }\n"))
                .map(|(body, _)| body)
                .expect("the function that maps errors to codes");
            for piece in body.split("=> ").skip(1) {
                if let Some(word) = code_literal(piece) {
                    codes.insert(word.to_owned());
                }
            }
        }
        codes
    }

    #[test]
    fn the_document_declares_the_request_id_rule_the_code_applies_on_every_operation() {
        let doc = document();
        // Any value is taken (the parameter has no pattern: an id is replaced, never refused);
        // the answer's header says which ones are kept.
        let header = &doc["components"]["headers"]["X-Request-Id"];
        assert_eq!(
            header["schema"]["pattern"],
            crate::request_log::REQUEST_ID_PATTERN
        );
        let parameter = &doc["components"]["parameters"]["X-Request-Id"];
        assert_eq!(parameter["schema"], json!({"type": "string"}));
        let reference = json!({"$ref": "#/components/parameters/X-Request-Id"});
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let declared = operation["parameters"]
                    .as_array()
                    .is_some_and(|parameters| parameters.contains(&reference));
                assert!(declared, "{method} {path} declares X-Request-Id");
            }
        }
    }

    #[test]
    fn the_document_names_every_problem_code_and_no_other() {
        let doc = document();
        let documented: BTreeSet<String> =
            doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
                .as_array()
                .expect("a code enum")
                .iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect();
        let built = codes_in_source();
        assert!(built.len() > 20, "the scan finds the codes: {built:?}");
        assert_eq!(
            documented, built,
            "openapi.json's Problem.code enum and the codes the server builds"
        );
    }
}
