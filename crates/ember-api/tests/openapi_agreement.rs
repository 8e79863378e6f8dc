//! The OpenAPI document (`docs/api/ember-openapi.yaml`) and the server agree:
//! every documented path and method is routed by the server, every route is
//! documented, and the operations documented as unsupported are exactly
//! those the server answers with a "not supported by Ember" fault.

mod common;

use std::collections::BTreeSet;

use common::Harness;
use ember_api::http::ROUTES;
use serde_json::Value;

fn document() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/api/ember-openapi.yaml"
    );
    let text = std::fs::read_to_string(path).expect("docs/api/ember-openapi.yaml");
    serde_norway::from_str(&text).expect("the OpenAPI document is valid YAML")
}

/// (METHOD, path template, documented as unsupported)
fn documented_operations(doc: &Value) -> BTreeSet<(String, String, bool)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if !["get", "put", "patch", "post", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                continue;
            }
            let unsupported = op["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == "unsupported"));
            out.insert((method.to_uppercase(), path.clone(), unsupported));
        }
    }
    out
}

#[test]
fn document_is_openapi_3_with_every_reference_resolvable() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    // Every $ref points at something that exists.
    fn walk(v: &Value, doc: &Value, refs: &mut usize) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let mut target = doc;
                    for part in r.trim_start_matches("#/").split('/') {
                        target = &target[part];
                    }
                    assert!(!target.is_null(), "dangling $ref {r}");
                    *refs += 1;
                }
                m.values().for_each(|x| walk(x, doc, refs));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, doc, refs)),
            _ => {}
        }
    }
    let mut refs = 0;
    walk(&doc, &doc, &mut refs);
    assert!(refs > 50);
}

#[test]
fn document_and_route_table_list_the_same_operations() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = documented_operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    let only_doc: Vec<_> = documented.difference(&routed).collect();
    let only_server: Vec<_> = routed.difference(&documented).collect();
    assert!(
        only_doc.is_empty(),
        "documented but not routed: {only_doc:?}"
    );
    assert!(
        only_server.is_empty(),
        "routed but not documented: {only_server:?}"
    );
}

#[test]
fn the_running_server_routes_every_documented_operation() {
    let doc = document();
    let h = Harness::new("openapi");
    for (method, template, unsupported) in documented_operations(&doc) {
        let path = template
            .replace("{drive_id}", "d1")
            .replace("{iface_id}", "eth0")
            .replace("{id}", "p1");
        let body = if method == "GET" { None } else { Some("{}") };
        let r = h.call(&method, &path, body);
        assert!(r.status < 500, "{method} {path}: {}", r.status);
        if r.status == 400 {
            let f = r.fault();
            assert!(
                !f.starts_with("Invalid request method and/or path"),
                "{method} {path} is documented but not routed: {f}"
            );
            assert_eq!(
                f.contains("not supported by Ember"),
                unsupported,
                "{method} {path}: documented unsupported={unsupported}, server says {f:?}"
            );
        } else {
            assert!(
                !unsupported,
                "{method} {path} is documented as unsupported but answered {}",
                r.status
            );
        }
    }
    // And a path that is not documented is not routed.
    h.call("GET", "/ember/none", None)
        .expect_fault(400, "Invalid request method and/or path");
}
