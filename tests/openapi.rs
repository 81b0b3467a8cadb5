//! `/openapi.json` against the live router of a real manager: every
//! documented operation answers with one of its documented statuses, every
//! other method on a documented path is a 405, and an undocumented path a
//! 404; so neither the document nor the router can grow alone.

mod support;

use std::time::Duration;

use support::*;

const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PATCH"];

#[test]
fn the_document_and_the_router_agree() {
    let c = corral().start();
    c.wait_for("a ready worker", Duration::from_secs(30), |d| d.ready >= 1);
    let (status, body) = get(c.admin, "/openapi.json").unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 6, "{paths:?}");
    for (path, operations) in paths {
        let operations = operations.as_object().unwrap();
        for method in METHODS {
            let (status, body) = request(c.admin, method, path, &[], "{\"desired\": 1}").unwrap();
            match operations.get(&method.to_lowercase()) {
                Some(op) => {
                    let documented = &op["responses"];
                    assert!(
                        documented.get(status.to_string()).is_some(),
                        "{method} {path} answered {status}, documented: {:?}: {body}",
                        documented.as_object().unwrap().keys().collect::<Vec<_>>()
                    );
                }
                None => assert_eq!(status, 405, "{method} {path}: {body}"),
            }
        }
    }
    for undocumented in ["/", "/worker", "/workers/scale", "/admin"] {
        assert_eq!(get(c.admin, undocumented).unwrap().0, 404, "{undocumented}");
    }
}
