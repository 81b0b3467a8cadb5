//! The admin API described as OpenAPI 3, served at `/openapi.json` so that
//! clients and fuzzers (schemathesis in the test command) can use it. The
//! schemas are generated from the contract's own types (their doc comments
//! become the descriptions), so the document cannot drift from what the
//! manager writes and reads; the paths are the router's
//! ([`super::ROUTES`]), and a test walks the live router with them.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::contract::{ErrorDoc, ProbeDoc, ScaleRequest, WorkersDoc};

/// The whole document.
pub fn document() -> Value {
    // Answers are described as serialized, the request as deserialized
    // (`desired` is required there, and may be null).
    let mut answers = SchemaSettings::openapi3().for_serialize().into_generator();
    let workers = Value::from(answers.subschema_for::<WorkersDoc>());
    let error = Value::from(answers.subschema_for::<ErrorDoc>());
    let probe = Value::from(answers.subschema_for::<ProbeDoc>());
    let mut requests = SchemaSettings::openapi3()
        .for_deserialize()
        .into_generator();
    let scale = Value::from(requests.subschema_for::<ScaleRequest>());
    let mut schemas = answers.take_definitions(true);
    schemas.extend(requests.take_definitions(true));

    let body = |description: &str, schema: &Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let refused = |description: &str| body(description, &error);
    let change_answers = json!({
        "200": body("The workers document after the change", &workers),
        "401": refused("Missing or wrong bearer token"),
        "403": refused("No token configured: changes are disabled"),
        "409": refused("The manager is shutting down"),
        "413": refused("Body over 64 KiB"),
        "503": refused("The supervision loop did not answer"),
    });
    let mut put_answers = change_answers.clone();
    put_answers["400"] = refused("The body is not JSON");
    put_answers["422"] = refused("Wrong shape, or refused by a limit (named in limited_by)");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "corral admin API",
            "version": crate::contract::VERSION.to_string(),
            "description": "Probes, worker count and metrics of one corral manager. Changes need a bearer token from --admin-token-file; without one configured they are refused with 403."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": {
            "/livez": {"get": {"summary": "The supervision loop answers", "responses": {
                "200": body("Alive", &probe),
                "503": body("The loop did not answer in time", &probe)}}},
            "/readyz": {"get": {"summary": "Enough workers are ready and no shutdown is under way", "responses": {
                "200": body("Ready", &probe),
                "503": body("Not ready, with the reason", &probe)}}},
            "/workers": {
                "get": {"summary": "Workers, limits and measurements", "responses": {
                    "200": body("The workers document", &workers)}},
                "put": {
                    "summary": "Set the worker count (null: back to the configured count)",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": scale}}},
                    "responses": put_answers}
            },
            "/workers/restart": {"post": {
                "summary": "Roll every worker, new before old",
                "security": [{"bearer": []}],
                "responses": change_answers}},
            "/metrics": {"get": {"summary": "Prometheus text format", "responses": {
                "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(|m| (path.clone(), m.to_uppercase()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut routed: Vec<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(path, method, _)| (path.to_string(), method.to_string()))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
    }

    #[test]
    fn schemas_come_from_the_contract_types() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let workers = &schemas["WorkersDoc"];
        for field in ["desired", "limits", "workers", "listeners", "cgroup"] {
            assert!(
                workers["properties"][field].is_object(),
                "{field}: {workers}"
            );
        }
        assert_eq!(
            schemas["ScaleRequest"]["required"],
            json!(["desired"]),
            "{}",
            schemas["ScaleRequest"]
        );
        assert_eq!(
            schemas["ScaleRequest"]["properties"]["desired"]["nullable"],
            json!(true),
            "{}",
            schemas["ScaleRequest"]
        );
        assert!(
            schemas["LimitReason"].to_string().contains("memory_guard"),
            "{}",
            schemas["LimitReason"]
        );
        // Every reference resolves.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(schemas[name].is_object(), "dangling $ref to {name}");
        }
    }
}
