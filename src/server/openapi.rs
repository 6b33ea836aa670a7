//! The OpenAPI document as served: poem-openapi's, completed with what only the running server
//! knows. The generate body is each model's JSON Schema from /api/info (so the document accepts
//! exactly what validation accepts), the server URL is relative (Swagger UI's "Try it out"
//! then works behind a proxy and from other machines, as FastAPI's does), and SSE responses say
//! what the stream carries.

use serde_json::{Value, json};

use super::AppState;
use super::face::Face;
use super::validation::parameter_schema;

/// The component name of `POST /api/generate`'s body.
pub const GENERATE_BODY: &str = "GenerateBody";

/// `generated` (poem-openapi's document, JSON) with the server's models and LoRAs as they are
/// now.
pub fn document(generated: &str, state: &AppState) -> Value {
    let mut doc: Value = serde_json::from_str(generated).expect("poem-openapi writes JSON");
    doc["servers"] = json!([{"url": "/"}]);
    doc["components"]["schemas"][GENERATE_BODY] = generate_body(state);
    describe_event_streams(&mut doc);
    document_body_limits(&mut doc);
    document_security(&mut doc);
    doc
}

/// An error answer in the body shape of the face `path` belongs to (face.rs).
fn error_response(path: &str, description: &str) -> Value {
    let schema = match Face::of_native_path(path) {
        Face::Gateway => "Failure",
        _ => "ErrorBody",
    };
    json!({"description": description, "content": {"application/json": {"schema":
        {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// The API keys (server/auth.rs): a bearer token, or `?token=` where headers cannot be set,
/// on every operation that needs a scope, and the refusals it can get. A loopback server with
/// no key created needs none.
fn document_security(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A key from `hanga keys create`. Needed once any key exists, \
                                   and always on an address other machines reach (unless \
                                   `--no-auth`)."},
        "token": {"type": "apiKey", "in": "query", "name": "token",
                  "description": "The same key, for EventSource and `<img>`, which cannot set \
                                  headers."},
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            let Ok(method) = method.to_uppercase().parse::<poem::http::Method>() else {
                continue;
            };
            let Some(scope) = super::auth::native_scope(&method, path) else {
                continue;
            };
            operation["security"] = json!([{"bearer": []}, {"token": []}]);
            let responses = &mut operation["responses"];
            responses["401"] = error_response(path, "No API key, or not an active one.");
            responses["403"] = error_response(path, &format!("The key lacks the `{scope}` scope."));
            // Generate's own 429 (a full queue) documents Retry-After already.
            if responses.get("429").is_none() {
                responses["429"] =
                    error_response(path, "The key's rate limit is spent; see Retry-After.");
            }
        }
    }
}

/// The answers of `limit_body` (server/mod.rs), which runs before any operation that takes a
/// body.
fn document_body_limits(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut().filter(|o| o.get("requestBody").is_some()) {
            let responses = &mut operation["responses"];
            responses["413"] = error_response(path, "The body is larger than the server takes.");
            responses["411"] = error_response(path, "A chunked body without Content-Length.");
        }
    }
}

/// One variant per model: the default model's takes `model` absent, the others need it.
fn generate_body(state: &AppState) -> Value {
    let library = state.shared.loras.read().expect("loras lock");
    let mut variants: Vec<Value> = state
        .shared
        .registry
        .models()
        .map(|manifest| {
            let mut schema = parameter_schema(
                manifest,
                &library,
                state.shared.registry.checker().is_some(),
            );
            if state.default_model.as_deref() != Some(manifest.id.as_str()) {
                schema["required"]
                    .as_array_mut()
                    .expect("a required list")
                    .push("model".into());
            }
            schema["title"] = manifest.id.clone().into();
            to_openapi_30(&mut schema);
            schema
        })
        .collect();
    let mut body = match variants.len() {
        // No model: nothing can be generated.
        0 => json!({"not": {}}),
        1 => variants.remove(0),
        _ => json!({"anyOf": variants}),
    };
    body["description"] = "The generate request; every field but `prompt` is optional and \
        `null` means absent. One schema per model (the `model` field chooses; the server's \
        default model when absent), as /api/info lists them."
        .into();
    body
}

/// JSON Schema as /api/info writes it, in OpenAPI 3.0's dialect: `type: [T, "null"]` becomes
/// `nullable`, `const` a one-value `enum`, and every optional property is nullable, since
/// validation reads `null` as absent.
fn to_openapi_30(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(types) = object.get("type").and_then(Value::as_array).cloned() {
        let named: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
        if named.len() == 1 {
            object.insert("type".into(), named[0].clone());
        }
        if named.len() < types.len() {
            object.insert("nullable".into(), true.into());
        }
    }
    if let Some(value) = object.remove("const") {
        object.insert("enum".into(), json!([value]));
    }
    let required: Vec<Value> = object
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, property) in properties.iter_mut() {
            to_openapi_30(property);
            if !required.contains(&Value::from(name.as_str())) {
                property["nullable"] = true.into();
                if let Some(values) = property.get_mut("enum").and_then(Value::as_array_mut) {
                    // OpenAPI 3.0.3: a nullable enum lists null among its values.
                    values.push(Value::Null);
                }
            }
        }
    }
    if let Some(items) = object.get_mut("items") {
        to_openapi_30(items);
    }
}

/// An SSE body is a sequence of events, not one JSON value. The schema of a
/// `text/event-stream` response describes one event (as schemathesis and the SSE guides of
/// OpenAPI 3.2 read it): an `id` and a `data` line holding one JSON object of the schema
/// poem-openapi derived for the stream's items.
fn describe_event_streams(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for operation in paths.values_mut().filter_map(Value::as_object_mut) {
        for responses in operation
            .values_mut()
            .filter_map(|o| o.get_mut("responses"))
        {
            for response in responses
                .as_object_mut()
                .into_iter()
                .flat_map(|r| r.values_mut())
            {
                if let Some(stream) = response
                    .get_mut("content")
                    .and_then(|c| c.get_mut("text/event-stream"))
                {
                    // poem-openapi writes `{type: array, format: event-stream, items}`.
                    let schema = stream["schema"].take();
                    let data = schema.get("items").cloned().unwrap_or(schema);
                    *stream = json!({"schema": {
                        "type": "object",
                        "description": "One event: `id: <id>` and `data: <one JSON object>` \
                            lines, then a blank line (no `event:` name, so \
                            `EventSource.onmessage` receives it). `:` comments keep the \
                            connection alive.",
                        "required": ["id", "data"],
                        "properties": {
                            "id": {"type": "string"},
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": data,
                            },
                        },
                    }});
                }
            }
        }
    }
}

/// The methods `path` answers to, for the `Allow` header of a 405; `None` for a path the
/// document does not have.
pub fn allowed_methods(doc: &Value, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let (_, operations) = doc["paths"].as_object()?.iter().find(|(template, _)| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(part, segment)| part.starts_with('{') || part == segment)
    })?;
    let mut methods: Vec<String> = operations
        .as_object()?
        .keys()
        .map(|m| m.to_uppercase())
        .collect();
    if methods.iter().any(|m| m == "GET") {
        methods.push("HEAD".into());
    }
    methods.sort();
    Some(methods.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schema_nulls_become_nullable_and_optional_fields_take_null() {
        let mut schema = json!({"type": "object", "required": ["prompt"], "properties": {
            "prompt": {"type": "string"},
            "seed": {"type": ["integer", "null"], "minimum": 0},
            "model": {"type": "string", "const": "m"},
            "sampler": {"type": "string", "enum": ["euler"]},
        }});
        to_openapi_30(&mut schema);
        let p = &schema["properties"];
        assert_eq!(p["prompt"], json!({"type": "string"}));
        assert_eq!(
            p["seed"],
            json!({"type": "integer", "minimum": 0, "nullable": true})
        );
        assert_eq!(p["model"]["enum"], json!(["m", null]));
        assert_eq!(p["sampler"]["enum"], json!(["euler", null]));
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_path() {
        let doc = json!({"paths": {
            "/api/jobs/{job_id}": {"get": {}, "delete": {}},
            "/api/generate": {"post": {}},
        }});
        assert_eq!(
            allowed_methods(&doc, "/api/jobs/abc").as_deref(),
            Some("DELETE, GET, HEAD")
        );
        assert_eq!(
            allowed_methods(&doc, "/api/generate").as_deref(),
            Some("POST")
        );
        assert_eq!(allowed_methods(&doc, "/api/nothing"), None);
    }
}
