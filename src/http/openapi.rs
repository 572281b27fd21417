//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP door, a file written by hand
//! (`openapi.json` beside this one) and compiled in; `GET /docs`: a page that renders it
//! (`docs.html`, self-contained: it fetches nothing but the document, so it works with no
//! internet).
//!
//! The document is kept true by the tests below (every route of [`super::routes`] and every
//! built-in forwarded endpoint is in it and nothing else is, every example validates against
//! its schema) and by the integration
//! tests that request each documented operation and fuzz the API from it (schemathesis).

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");
const PAGE: &str = include_str!("docs.html");

pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

pub async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::DOCUMENT;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// `"GET /path"` for every operation the document lists.
    fn documented(doc: &Value) -> BTreeSet<String> {
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(method).is_some() {
                    ops.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        ops
    }

    #[test]
    fn every_route_the_router_serves_is_documented_and_nothing_else() {
        let doc = doc();
        let in_doc = documented(&doc);
        // The door's own routes, and the forwarded endpoints the core routes beside them (an
        // operator's `--passthrough-path`s aside: the document says they are not listed).
        let served: BTreeSet<String> = super::super::routes()
            .iter()
            .flat_map(|r| r.documented.iter().map(|s| s.to_string()))
            .chain(
                crate::chat::Endpoint::builtin()
                    .iter()
                    .map(|e| format!("POST {}", e.path)),
            )
            .collect();
        let undocumented: Vec<_> = served.difference(&in_doc).collect();
        let unserved: Vec<_> = in_doc.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in openapi.json: {undocumented:?}; in openapi.json but not served: {unserved:?}"
        );
        // Each route names the operations of its own path (a catch-all `{*id}` documents
        // `{id}`, and `{id}/…` below it).
        for route in super::super::routes() {
            let path = route.path.replace("{*", "{");
            for op in route.documented {
                let (_, documented_path) = op.split_once(' ').unwrap();
                assert!(
                    documented_path.starts_with(&path),
                    "route {} documents {op}",
                    route.path
                );
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_of_this_version_with_its_security_schemes() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let name = format!("{method} {path}");
                assert!(op["operationId"].is_string(), "{name}: no operationId");
                let security = op["security"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: no security (write [] for open)"));
                for requirement in security {
                    for scheme in requirement.as_object().unwrap().keys() {
                        assert!(schemes.contains_key(scheme), "{name}: unknown {scheme}");
                    }
                }
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{name}: no success response"
                );
                if !security.is_empty() {
                    assert!(responses.contains_key("401"), "{name}: no 401");
                }
            }
        }
        for (name, r) in doc["components"]["responses"].as_object().unwrap() {
            let schema = &r["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/Error", "{name}");
        }
    }

    /// Every `example`, `examples.*.value` (beside a `schema`) and schema `examples` entry,
    /// with the schema it must match and where it is.
    fn examples(node: &Value, at: &str, out: &mut Vec<(String, Value, Value)>) {
        match node {
            Value::Object(map) => {
                if let Some(schema) = map.get("schema") {
                    if let Some(example) = map.get("example") {
                        out.push((at.to_owned(), schema.clone(), example.clone()));
                    }
                    if let Some(Value::Object(named)) = map.get("examples") {
                        for (name, example) in named {
                            let value = example.get("value").cloned();
                            let value = value.unwrap_or_else(|| panic!("{at}/{name}: no value"));
                            out.push((format!("{at}/examples/{name}"), schema.clone(), value));
                        }
                    }
                }
                for (key, child) in map {
                    examples(child, &format!("{at}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    examples(child, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_example_validates_against_its_schema() {
        let doc = doc();
        let mut found = Vec::new();
        examples(&doc["paths"], "#/paths", &mut found);
        examples(&doc["components"], "#/components", &mut found);
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            for (i, example) in schema["examples"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = format!("#/components/schemas/{name}/examples/{i}");
                found.push((
                    at,
                    json!({"$ref": format!("#/components/schemas/{name}")}),
                    example.clone(),
                ));
            }
        }
        assert!(found.len() >= 20, "only {} examples found", found.len());
        for (at, schema, example) in &found {
            // The schema is checked as the root of a resource holding the document's
            // components, so that `#/components/schemas/…` resolves.
            let mut root = schema.clone();
            if let Value::Object(map) = &mut root {
                map.insert("components".into(), doc["components"].clone());
            }
            let validator = jsonschema::draft202012::new(&root)
                .unwrap_or_else(|e| panic!("{at}: the schema does not compile: {e}"));
            let errors: Vec<String> = validator
                .iter_errors(example)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{at}: the example does not match: {errors:?}"
            );
        }
        // A wrong example is caught: the check is not vacuous.
        let bad = json!({"$ref": "#/components/schemas/Health", "components": doc["components"]});
        let validator = jsonschema::draft202012::new(&bad).unwrap();
        assert!(!validator.is_valid(&json!({"status": "fine"})));
    }
}
