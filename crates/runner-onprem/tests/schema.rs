//! bench-sim's answers conform to docs/adapters/onprem-api.yaml: a session
//! touching every operation (and its documented error answers), each JSON
//! answer checked against the response schema the spec gives for its path,
//! method and status, and every operation in the spec exercised.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use serde_json::{Value, json};

struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Spec {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/adapters/onprem-api.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        Spec {
            doc: serde_yaml_ng::from_str(&text).unwrap(),
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.trim_start_matches('#');
                self.resolve(
                    self.doc
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("dangling $ref {r}")),
                )
            }
            None => schema,
        }
    }

    /// The response object for an operation and status (or `default`).
    fn response(&self, template: &str, method: &str, status: u16) -> &Value {
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "the spec has no {method} {template}");
        let responses = &op["responses"];
        let response = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
            .unwrap_or_else(|| {
                panic!("{method} {template} answered {status}, which the spec does not document")
            });
        self.resolve(response)
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() {
            if schema["nullable"] != json!(true) {
                problems.push(format!("{at}: null, but not nullable"));
            }
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            problems.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => {
                let Some(map) = value.as_object() else {
                    return problems.push(format!("{at}: not an object"));
                };
                for key in schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !map.contains_key(key) {
                        problems.push(format!("{at}: missing required `{key}`"));
                    }
                }
                let props = schema.get("properties").and_then(Value::as_object);
                for (key, v) in map {
                    match props.and_then(|p| p.get(key)) {
                        Some(s) => self.check(s, v, &format!("{at}.{key}"), problems),
                        None => match schema.get("additionalProperties") {
                            Some(Value::Bool(false)) => {
                                problems.push(format!("{at}: `{key}` is not in the spec"))
                            }
                            Some(s @ Value::Object(_)) => {
                                self.check(s, v, &format!("{at}.{key}"), problems)
                            }
                            _ if props.is_some() => {
                                problems.push(format!("{at}: `{key}` is not in the spec"))
                            }
                            _ => {}
                        },
                    }
                }
            }
            Some("array") => {
                let Some(items) = value.as_array() else {
                    return problems.push(format!("{at}: not an array"));
                };
                for (i, item) in items.iter().enumerate() {
                    self.check(&schema["items"], item, &format!("{at}[{i}]"), problems);
                }
            }
            Some("string") => {
                let Some(text) = value.as_str() else {
                    return problems.push(format!("{at}: not a string"));
                };
                if schema["pattern"] == json!("^[0-9a-f]{64}$")
                    && !(text.len() == 64
                        && text
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                {
                    problems.push(format!("{at}: {text:?} is not a sha256"));
                }
            }
            Some("integer") => {
                if !(value.is_i64() || value.is_u64()) {
                    problems.push(format!("{at}: not an integer"));
                } else if let Some(min) = schema.get("minimum").and_then(Value::as_i64)
                    && value.as_i64().is_some_and(|v| v < min)
                {
                    problems.push(format!("{at}: below {min}"));
                }
            }
            Some("boolean") if !value.is_boolean() => problems.push(format!("{at}: not a boolean")),
            _ => {}
        }
    }
}

struct Session {
    spec: Spec,
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    seen: BTreeSet<(String, String)>,
    problems: Vec<String>,
}

impl Session {
    /// Call, check the answer against the spec, return (status, JSON or Null).
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let method_key = method.to_lowercase();
        self.seen.insert((template.to_string(), method_key.clone()));
        let documented = self.spec.response(template, &method_key, status).clone();
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            assert!(
                bytes.is_empty(),
                "{method} {path} {status}: the spec documents no body"
            );
            return (status, Value::Null);
        };
        if let Some(json_media) = content.get("application/json") {
            let value: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON: {e}"));
            let mut problems = Vec::new();
            self.spec.check(
                &json_media["schema"],
                &value,
                &format!("{method} {path} {status}"),
                &mut problems,
            );
            self.problems.extend(problems);
            (status, value)
        } else {
            (status, Value::Null)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sim_answers_conform_to_the_openapi_spec() {
    let sim = common::sim(common::BENCHES).await;
    let mut s = Session {
        spec: Spec::load(),
        http: reqwest::Client::new(),
        base: sim.base_url(),
        token: Some(common::TOKEN.to_string()),
        seen: BTreeSet::new(),
        problems: Vec::new(),
    };
    let (status, _) = s.call("GET", "/v1/benches", "/v1/benches", None).await;
    assert_eq!(status, 200);
    let new = json!({"bench_type": "rig", "labels": {"fw": "2"}, "idempotency_key": "schema-1", "owner": "schema", "lease_seconds": 30});
    let (status, res) = s
        .call(
            "POST",
            "/v1/reservations",
            "/v1/reservations",
            Some(new.clone()),
        )
        .await;
    assert_eq!(status, 201);
    let rid = res["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.call("POST", "/v1/reservations", "/v1/reservations", Some(new))
            .await
            .0,
        200
    );
    let queued = json!({"bench_type": "rig", "idempotency_key": "schema-2"});
    let (_, second) = s
        .call("POST", "/v1/reservations", "/v1/reservations", Some(queued))
        .await;
    let third = json!({"bench_type": "rig", "idempotency_key": "schema-3"});
    let (_, third) = s
        .call("POST", "/v1/reservations", "/v1/reservations", Some(third))
        .await;
    assert_eq!(third["state"], "queued", "two benches, three reservations");
    assert_eq!(third["position"], 1);
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations",
            "/v1/reservations",
            Some(json!({"bench_type": "", "idempotency_key": "x"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations",
            "/v1/reservations",
            Some(json!({"bench_type": "rig"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations",
            "/v1/reservations",
            Some(json!({"bench_type": "nope", "idempotency_key": "x"}))
        )
        .await
        .0,
        422
    );
    assert_eq!(
        s.call(
            "GET",
            "/v1/reservations",
            "/v1/reservations?owner=schema",
            None
        )
        .await
        .0,
        200
    );
    let r = format!("/v1/reservations/{rid}");
    assert_eq!(
        s.call("GET", "/v1/reservations/{id}", &r, None).await.0,
        200
    );
    assert_eq!(
        s.call(
            "GET",
            "/v1/reservations/{id}",
            "/v1/reservations/res-999999",
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations/{id}/heartbeat",
            &format!("{r}/heartbeat"),
            None
        )
        .await
        .0,
        200
    );

    let run_body = json!({"command": ["suite"], "env": {"SIM_DURATION_MS": "300", "SIM_ARTIFACTS": "a.xml"}, "idempotency_key": "schema-run", "timeout_seconds": 60});
    let (status, run) = s
        .call(
            "POST",
            "/v1/reservations/{id}/runs",
            &format!("{r}/runs"),
            Some(run_body.clone()),
        )
        .await;
    assert_eq!(status, 201);
    let run_id = run["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations/{id}/runs",
            &format!("{r}/runs"),
            Some(run_body)
        )
        .await
        .0,
        200
    );
    let other = json!({"command": ["suite"], "idempotency_key": "other"});
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations/{id}/runs",
            &format!("{r}/runs"),
            Some(other.clone())
        )
        .await
        .0,
        409
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations/{id}/runs",
            &format!("{r}/runs"),
            Some(json!({"command": []}))
        )
        .await
        .0,
        400
    );
    let run_path = format!("/v1/runs/{run_id}");
    assert_eq!(s.call("GET", "/v1/runs/{id}", &run_path, None).await.0, 200);
    let mut offset = 0;
    for _ in 0..100 {
        let (status, chunk) = s
            .call(
                "GET",
                "/v1/runs/{id}/logs",
                &format!("{run_path}/logs?offset={offset}&wait_ms=200"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        offset = chunk["next_offset"].as_u64().unwrap();
        if chunk["complete"] == json!(true) {
            break;
        }
    }
    assert_eq!(
        s.call(
            "GET",
            "/v1/runs/{id}/logs",
            &format!("{run_path}/logs?offset=999999"),
            None
        )
        .await
        .0,
        416
    );
    let (_, listed) = s
        .call(
            "GET",
            "/v1/runs/{id}/artifacts",
            &format!("{run_path}/artifacts"),
            None,
        )
        .await;
    assert_eq!(listed["artifacts"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.call(
            "GET",
            "/v1/runs/{id}/artifacts/{name}",
            &format!("{run_path}/artifacts/a.xml"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "GET",
            "/v1/runs/{id}/artifacts/{name}",
            &format!("{run_path}/artifacts/missing"),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        s.call(
            "GET",
            "/v1/reservations/{id}/runs",
            &format!("{r}/runs"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/runs/{id}/cancel",
            &format!("{run_path}/cancel"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call("GET", "/v1/runs/{id}", "/v1/runs/run-999999", None)
            .await
            .0,
        404
    );

    assert_eq!(
        s.call("DELETE", "/v1/reservations/{id}", &r, None).await.0,
        204
    );
    assert_eq!(
        s.call("DELETE", "/v1/reservations/{id}", &r, None).await.0,
        204,
        "release is idempotent"
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations/{id}/heartbeat",
            &format!("{r}/heartbeat"),
            None
        )
        .await
        .0,
        409
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/reservations/{id}/runs",
            &format!("{r}/runs"),
            Some(other)
        )
        .await
        .0,
        409
    );
    for id in [&second["id"], &third["id"]] {
        let path = format!("/v1/reservations/{}", id.as_str().unwrap());
        assert_eq!(
            s.call("DELETE", "/v1/reservations/{id}", &path, None)
                .await
                .0,
            204
        );
    }

    sim.fail_next(1);
    assert_eq!(
        s.call("GET", "/v1/benches", "/v1/benches", None).await.0,
        503
    );
    sim.rate_limit_next(1, 1);
    assert_eq!(
        s.call("GET", "/v1/benches", "/v1/benches", None).await.0,
        429
    );
    s.token = None;
    assert_eq!(
        s.call("GET", "/v1/benches", "/v1/benches", None).await.0,
        401
    );

    assert!(
        s.problems.is_empty(),
        "answers that break the spec: {:#?}",
        s.problems
    );
    let mut documented = BTreeSet::new();
    for (path, item) in s.spec.doc["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            documented.insert((path.clone(), method.clone()));
        }
    }
    let missed: Vec<_> = documented.difference(&s.seen).collect();
    assert!(
        missed.is_empty(),
        "operations the session did not exercise: {missed:?}"
    );
}

#[test]
fn the_checker_catches_what_breaks_the_spec() {
    let spec = Spec::load();
    let run = json!({"$ref": "#/components/schemas/Run"});
    let mut problems = Vec::new();
    spec.check(&run, &json!({"id": "r", "reservation_id": "x", "bench_id": "b", "state": "running", "started_at": 1}), "ok", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    for bad in [
        json!({"id": "r", "reservation_id": "x", "bench_id": "b", "state": "running"}),
        json!({"id": "r", "reservation_id": "x", "bench_id": "b", "state": "exploded", "started_at": 1}),
        json!({"id": "r", "reservation_id": "x", "bench_id": "b", "state": "running", "started_at": "soon"}),
        json!({"id": "r", "reservation_id": "x", "bench_id": "b", "state": "running", "started_at": 1, "extra": 1}),
        json!({"id": "r", "reservation_id": null, "bench_id": "b", "state": "running", "started_at": 1}),
    ] {
        let mut problems = Vec::new();
        spec.check(&run, &bad, "bad", &mut problems);
        assert!(!problems.is_empty(), "{bad} passed");
    }
}
