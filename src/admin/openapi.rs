//! The admin API described as OpenAPI 3, served at `/openapi.json` so that
//! clients and fuzzers (schemathesis in the test command) can use it. A unit
//! test keeps the router's paths and this document in step.

/// Methods each path answers, for 405 replies; `None` for unknown paths.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/livez" | "/readyz" | "/metrics" | "/openapi.json" => Some("GET"),
        "/workers" => Some("GET, PUT"),
        "/workers/restart" => Some("POST"),
        _ => None,
    }
}

pub const SPEC: &str = r##"{
  "openapi": "3.0.3",
  "info": {
    "title": "corral admin API",
    "version": "1",
    "description": "Probes, worker count and metrics of one corral manager. Changes need a bearer token from --admin-token-file; without one configured they are refused with 403."
  },
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
      "Error": {
        "type": "object", "required": ["error"],
        "properties": {
          "error": {"type": "string"},
          "limited_by": {"type": "string", "enum": ["min_workers", "max_workers", "memory_guard"]},
          "limit": {"type": "integer", "minimum": 0}
        }
      },
      "Probe": {
        "type": "object", "required": ["ok", "reason"],
        "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}}
      },
      "ScaleRequest": {
        "type": "object", "required": ["desired"], "additionalProperties": false,
        "properties": {"desired": {"type": "integer", "minimum": 0, "maximum": 4294967295, "nullable": true}}
      },
      "Exit": {
        "type": "object", "required": ["reason", "at"],
        "properties": {
          "code": {"type": "integer", "nullable": true},
          "signal": {"type": "integer", "nullable": true},
          "reason": {"type": "string", "enum": ["drained", "crashed", "watchdog", "boot_timeout", "killed"]},
          "at": {"type": "number"}
        }
      },
      "Worker": {
        "type": "object",
        "required": ["id", "pid", "state", "generation", "started_at", "restarts", "cpu_seconds", "cpu_utilisation", "rss_bytes"],
        "properties": {
          "id": {"type": "integer"}, "pid": {"type": "integer"},
          "state": {"type": "string", "enum": ["starting", "ready", "draining"]},
          "generation": {"type": "integer"}, "started_at": {"type": "number"},
          "restarts": {"type": "integer"}, "cpu_seconds": {"type": "number"},
          "cpu_utilisation": {"type": "number"}, "rss_bytes": {"type": "integer"},
          "status": {"type": "string", "nullable": true},
          "last_exit": {"allOf": [{"$ref": "#/components/schemas/Exit"}], "nullable": true}
        }
      },
      "Workers": {
        "type": "object",
        "required": ["version", "desired", "configured", "running", "ready", "shutting_down", "generation", "limits", "cpu_utilisation", "workers", "recent_exits", "listeners", "cgroup"],
        "properties": {
          "version": {"type": "integer"}, "desired": {"type": "integer"},
          "configured": {"type": "integer"}, "requested": {"type": "integer", "nullable": true},
          "running": {"type": "integer"}, "ready": {"type": "integer"},
          "shutting_down": {"type": "boolean"}, "generation": {"type": "integer"},
          "limits": {
            "type": "object", "required": ["min", "max"],
            "properties": {
              "min": {"type": "integer"}, "max": {"type": "integer"},
              "memory_cap": {"type": "integer", "nullable": true},
              "memory_limit_bytes": {"type": "integer", "nullable": true},
              "memory_limit_source": {"type": "string", "nullable": true},
              "per_worker_memory_bytes": {"type": "integer", "nullable": true}
            }
          },
          "last_limited": {
            "type": "object", "nullable": true,
            "properties": {
              "requested": {"type": "integer"}, "applied": {"type": "integer"},
              "by": {"type": "string", "enum": ["min_workers", "max_workers", "memory_guard"]},
              "at": {"type": "number"}
            }
          },
          "cpu_utilisation": {"type": "number"},
          "workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}},
          "recent_exits": {"type": "array", "items": {
            "type": "object", "required": ["id", "pid", "generation", "reason", "at"],
            "properties": {
              "id": {"type": "integer"}, "pid": {"type": "integer"}, "generation": {"type": "integer"},
              "code": {"type": "integer", "nullable": true}, "signal": {"type": "integer", "nullable": true},
              "reason": {"type": "string", "enum": ["drained", "crashed", "watchdog", "boot_timeout", "killed"]},
              "at": {"type": "number"}
            }
          }},
          "listeners": {
            "type": "array",
            "items": {
              "type": "object", "required": ["address"],
              "properties": {
                "address": {"type": "string"},
                "queue_length": {"type": "integer", "nullable": true},
                "queue_max_window": {"type": "integer", "nullable": true},
                "backlog": {"type": "integer", "nullable": true}
              }
            }
          },
          "cgroup": {
            "type": "object",
            "properties": {
              "cpu_quota_cores": {"type": "number", "nullable": true},
              "memory_limit_bytes": {"type": "integer", "nullable": true},
              "memory_usage_bytes": {"type": "integer", "nullable": true}
            }
          }
        }
      }
    },
    "responses": {
      "Unauthorized": {"description": "Missing or wrong bearer token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "Forbidden": {"description": "No token configured: changes are disabled", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "Conflict": {"description": "The manager is shutting down", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "Unavailable": {"description": "The supervision loop did not answer", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "TooLarge": {"description": "Body over 64 KiB", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "Workers": {"description": "The workers document after the change", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Workers"}}}}
    }
  },
  "paths": {
    "/livez": {"get": {"summary": "The supervision loop answers", "responses": {
      "200": {"description": "Alive", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Probe"}}}},
      "503": {"description": "The loop did not answer in time", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Probe"}}}}}}},
    "/readyz": {"get": {"summary": "Enough workers are ready and no shutdown is under way", "responses": {
      "200": {"description": "Ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Probe"}}}},
      "503": {"description": "Not ready, with the reason", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Probe"}}}}}}},
    "/workers": {
      "get": {"summary": "Workers, limits and measurements", "responses": {
        "200": {"description": "The workers document", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Workers"}}}}}},
      "put": {"summary": "Set the worker count (null: back to the configured count)", "security": [{"bearer": []}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScaleRequest"}}}},
        "responses": {
          "200": {"$ref": "#/components/responses/Workers"},
          "400": {"description": "The body is not JSON", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "401": {"$ref": "#/components/responses/Unauthorized"},
          "403": {"$ref": "#/components/responses/Forbidden"},
          "409": {"$ref": "#/components/responses/Conflict"},
          "413": {"$ref": "#/components/responses/TooLarge"},
          "422": {"description": "Wrong shape, or refused by a limit (named in limited_by)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "503": {"$ref": "#/components/responses/Unavailable"}}}
    },
    "/workers/restart": {"post": {"summary": "Roll every worker, new before old", "security": [{"bearer": []}],
      "responses": {
        "200": {"$ref": "#/components/responses/Workers"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "403": {"$ref": "#/components/responses/Forbidden"},
        "409": {"$ref": "#/components/responses/Conflict"},
        "413": {"$ref": "#/components/responses/TooLarge"},
        "503": {"$ref": "#/components/responses/Unavailable"}}}},
    "/metrics": {"get": {"summary": "Prometheus text format", "responses": {
      "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/openapi.json": {"get": {"summary": "This document", "responses": {
      "200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
  }
}"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_json_and_lists_every_route() {
        let spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        let paths = spec["paths"].as_object().unwrap();
        for (path, ops) in paths {
            let allowed = allowed_methods(path).unwrap_or_else(|| panic!("{path} not routed"));
            for method in ops.as_object().unwrap().keys() {
                assert!(allowed.contains(&method.to_uppercase()), "{method} {path}");
            }
        }
        for path in [
            "/livez",
            "/readyz",
            "/workers",
            "/workers/restart",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} undocumented");
        }
    }
}
