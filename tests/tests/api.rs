//! The REST API over TCP against its checked-in description (docs/openapi.json): every
//! path answers as described, a wrong or missing token gets 401, bad input gets a 4xx with
//! a message and changes nothing, and the token never reaches the logs.

use std::path::Path;

use baton_control::api::{ApiError, Client};
use baton_lab::{
    topology::{API_TCP_PORT, API_TOKEN_FILE, NS_ORCH, STATE_DIR},
    traffic::{in_netns, join, TrafficError},
};
use baton_tests::*;
use serde_json::Value;

fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json");
    serde_json::from_str(&text).expect("the spec is JSON")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let path = r.trim_start_matches("#/");
            path.split('/').fold(spec, |v, k| &v[k])
        }
        None => schema,
    }
}

/// Checks `v` against `schema` (types, required fields, enums, items), recursively.
fn check(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if v.is_null() {
        return if schema["nullable"] == true {
            Ok(())
        } else {
            Err(format!("{at}: null where the spec allows none"))
        };
    }
    let ok = match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("number") => v.is_number(),
        Some("string") => v.is_string(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{at}: {v} is not a {}", schema["type"]));
    }
    if let Some(e) = schema["enum"].as_array() {
        if !e.contains(v) {
            return Err(format!("{at}: {v} not in {e:?}"));
        }
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let k = r.as_str().unwrap();
        if v.get(k).is_none() {
            return Err(format!("{at}: required field {k} missing"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if let Some(x) = v.get(k) {
                check(spec, s, x, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(spec, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn token() -> String {
    std::fs::read_to_string(Path::new(STATE_DIR).join(API_TOKEN_FILE))
        .expect("the lab's API token")
        .trim()
        .to_string()
}

/// A request over TCP from inside bt-orch (where the API's address is).
fn call(token: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value, ApiError> {
    let (token, method, path) = (token.to_string(), method.to_string(), path.to_string());
    join(in_netns(NS_ORCH, move || {
        let c = Client::tcp(format!("198.51.100.254:{API_TCP_PORT}"), token);
        Ok(match method.as_str() {
            "get" => c.get::<Value>(&path),
            "delete" => c.delete::<Value>(&path),
            _ => c.post::<Value, Value>(&path, &body.unwrap_or(Value::Null)),
        })
    }))
    .map_err(|e: TrafficError| ApiError::Io(e.to_string()))
    .and_then(|r| r)
}

fn status(r: Result<Value, ApiError>) -> (u16, String) {
    match r {
        Err(ApiError::Status { status, message }) => (status, message),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[test]
fn the_api_over_tcp_answers_as_its_spec_says() {
    let _lab = Lab::up(3);
    let spec = spec();
    let token = token();
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            // Fill the path and the required query parameters from the spec's examples.
            let mut url = path.replace("{id}", op["x-test-id"].as_str().unwrap_or("2"));
            let mut query = Vec::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let p = resolve(&spec, p);
                if p["in"] == "query" && p["required"] == true {
                    let ex = &p["example"];
                    let ex = ex.as_str().map_or(ex.to_string(), str::to_string);
                    query.push(format!("{}={ex}", p["name"].as_str().unwrap()));
                }
            }
            if !query.is_empty() {
                url = format!("{url}?{}", query.join("&"));
            }
            let body = op["requestBody"]["content"]["application/json"]["example"].clone();
            let body = (!body.is_null()).then_some(body);
            // The example is refused (it would change the lab): the answer is the
            // documented error.
            if let Some(want) = op["x-test-status"].as_u64() {
                let (code, message) = status(call(&token, method, &url, body));
                assert_eq!(u64::from(code), want, "{method} {url}: {message}");
                assert!(
                    op["responses"][want.to_string()].is_object(),
                    "{method} {url}: {want} is documented"
                );
                assert!(!message.is_empty());
            } else {
                let answer = call(&token, method, &url, body)
                    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
                let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
                check(&spec, schema, &answer, &format!("{method} {url}"))
                    .unwrap_or_else(|e| panic!("{e}\n{answer}"));
            }
            // Without the token, nothing.
            let (code, message) = status(call("wrong-token-of-some-length", method, &url, None));
            assert_eq!(code, 401, "{method} {url}");
            assert!(message.contains("bearer token"), "{message}");
            checked += 1;
        }
    }
    assert_eq!(checked, 14, "every operation of the spec was checked");
    // Detach and attach above left member 2 in service again.
    baton_ok(&["attach", "2"]);
}

#[test]
fn bad_api_input_gets_a_4xx_with_a_message_and_changes_nothing() {
    let _lab = Lab::up(3);
    let token = token();
    let before = stat_json();
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        ("post", "/v1/members/99/detach", None, 404, "no member 99"),
        ("post", "/v1/members/99/attach", None, 404, "no member 99"),
        (
            "post",
            "/v1/members/2/workers",
            Some(serde_json::json!({"workers": 99})),
            400,
            "workers must be",
        ),
        (
            "post",
            "/v1/members/2/workers",
            Some(serde_json::json!({"workers": 1, "x": 2})),
            422,
            "unknown field",
        ),
        (
            "post",
            "/v1/members/2/workers",
            Some(Value::from("not an object")),
            422,
            "",
        ),
        ("get", "/v1/buckets?group=9", None, 404, "no group 9"),
        (
            "get",
            "/v1/search?src=not-an-ip&dst=198.19.0.1",
            None,
            400,
            "",
        ),
        ("get", "/v1/nosuch", None, 404, ""),
    ];
    for (method, path, body, want, says) in cases {
        let (code, message) = status(call(&token, method, path, body));
        assert_eq!(code, want, "{method} {path}: {message}");
        assert!(
            message.contains(says),
            "{method} {path}: {message:?} should say {says:?}"
        );
    }
    let after = stat_json();
    let states = |s: &Value| {
        s["groups"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].clone(), m["state"].clone(), m["workers"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(states(&after), states(&before), "nothing changed");
    // The token is in no log.
    for entry in std::fs::read_dir(STATE_DIR).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            assert!(
                !text.contains(&token),
                "the token leaked into {:?}",
                entry.path()
            );
        }
    }
}
