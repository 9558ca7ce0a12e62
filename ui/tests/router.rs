//! Every endpoint of the router, called with `oneshot` on real files under
//! a temporary root: what it answers, with and without the token, and to
//! bad input. The OpenAPI document served at `/api/openapi.json` and the
//! router describe the same endpoints.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use homelab_core::{Action, ActionKind, ActionState, ActionStore, Layout, Name, Risk};
use homelab_ui::{app, AppState};
use serde_json::Value;
use tower::ServiceExt;

mod common;

const TOKEN: &str = "router-test-token";

struct Site {
    _root: tempfile::TempDir,
    layout: Layout,
    app: Router,
}

fn site() -> Site {
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let app = app(AppState::new(layout.clone(), TOKEN.into()));
    Site {
        _root: root,
        layout,
        app,
    }
}

impl Site {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        common::call(&self.app, method, uri, headers, body).await
    }

    async fn get(&self, uri: &str) -> (StatusCode, String) {
        let (status, _, body) = self.call(Method::GET, uri, &[], "").await;
        (status, body)
    }

    fn pending(&self, service: &str) -> Name {
        let action = Action::new(
            ActionKind::ContainerRestart,
            Name::parse("n1").unwrap(),
            Some(Name::parse(service).unwrap()),
            Risk::Low,
            "containers_not_running",
            "exited (1)",
            chrono::Utc::now(),
        );
        ActionStore::new(self.layout.clone())
            .create(&action)
            .unwrap();
        action.id
    }
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// An error answer: JSON with a message.
fn error_of(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    value["error"]
        .as_str()
        .expect("an error message")
        .to_string()
}

#[tokio::test]
async fn reads_answer_from_the_files_and_bad_queries_are_json_errors() {
    let site = site();
    // (path, status, body check)
    type Check = fn(&str) -> bool;
    let ok: &[(&str, Check)] = &[
        ("/healthz", |b| b == "ok\n"),
        ("/summary", |b| b.contains(r#""incidents":0"#)),
        ("/api/nodes", |b| b == "[]"),
        ("/api/services", |b| b == "[]"),
        ("/api/incidents", |b| b == "[]"),
        ("/api/actions", |b| b == "[]"),
        ("/api/actions?state=all", |b| b == "[]"),
        ("/api/actions?state=pending", |b| b == "[]"),
        ("/api/events", |b| b == "[]"),
        ("/api/events?node=n1&type=x&limit=5", |b| b == "[]"),
        ("/api/events?since=2026-11-01T00:00:00Z", |b| b == "[]"),
        ("/api/ai-context", |b| !b.is_empty()),
        ("/api/openapi.json", |b| b.contains(r#""openapi": "3.1.0""#)),
        ("/static/app.css", |b| b.contains("body")),
        ("/static/app.js", |b| b.contains("EventSource")),
        ("/services", |b| b.contains("No services seen yet.")),
        ("/actions", |b| b.contains("No pending actions.")),
        ("/incidents", |b| b.contains("No open incidents.")),
        ("/events", |b| b.contains("No events match.")),
        ("/events?node=&service=&type=&severity=&since=", |b| {
            b.contains("No events match.")
        }),
        ("/", |b| {
            b.contains(r#"<a class="brand" href="/">homelab</a>"#)
                && b.contains(r#"<a href="/api/ai-context" id="ai-context">"#)
                && b.contains(r#"id="copy-ai""#)
        }),
    ];
    for (path, check) in ok {
        let (status, body) = site.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(check(&body), "{path}: {body}");
    }
    let bad = [
        (
            "/api/actions?state=bogus",
            StatusCode::BAD_REQUEST,
            "unknown state",
        ),
        (
            "/api/actions/Not..An.Id",
            StatusCode::BAD_REQUEST,
            "bad action id",
        ),
        (
            "/api/actions/nothing-here",
            StatusCode::NOT_FOUND,
            "no action",
        ),
        (
            "/api/events?limit=many",
            StatusCode::BAD_REQUEST,
            "bad query",
        ),
        ("/api/events?node=a/b", StatusCode::BAD_REQUEST, "bad node"),
        (
            "/api/events?since=yesterday",
            StatusCode::BAD_REQUEST,
            "RFC 3339",
        ),
        ("/no/such/page", StatusCode::NOT_FOUND, "openapi"),
        (
            "/api/events?severity=loud",
            StatusCode::BAD_REQUEST,
            "bad severity",
        ),
        (
            "/api/events?service=a/b",
            StatusCode::BAD_REQUEST,
            "bad service",
        ),
        (
            "/api/events?type=a%20b",
            StatusCode::BAD_REQUEST,
            "bad type",
        ),
        ("/events?before=soon", StatusCode::BAD_REQUEST, "bad before"),
        ("/services?show=some", StatusCode::BAD_REQUEST, "show"),
        ("/nodes/Bad..Name", StatusCode::BAD_REQUEST, "bad node name"),
        ("/nodes/ghost", StatusCode::NOT_FOUND, "no node ghost"),
        ("/actions/nothing-here", StatusCode::NOT_FOUND, "no action"),
        (
            "/actions/Not..An.Id",
            StatusCode::BAD_REQUEST,
            "bad action id",
        ),
        (
            "/incidents/nothing:here",
            StatusCode::NOT_FOUND,
            "no incident",
        ),
    ];
    for (path, status, says) in bad {
        let (got, body) = site.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(error_of(&body).contains(says), "{path}: {body}");
    }
    // A world file that stops parsing: its last good state (here: none
    // yet, no file) is served, and the pages say so.
    std::fs::create_dir_all(site.layout.world_dir()).unwrap();
    std::fs::write(site.layout.world_nodes(), "{not json").unwrap();
    let (status, body) = site.get("/api/nodes").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    let (_, page) = site.get("/").await;
    assert!(
        page.contains(r#"id="system-problems""#) && page.contains("nodes.json"),
        "{page}"
    );
    // With nothing good ever read: 503, said plainly.
    let fresh = self::site();
    std::fs::create_dir_all(fresh.layout.world_dir()).unwrap();
    std::fs::write(fresh.layout.world_nodes(), "{not json").unwrap();
    let (status, body) = fresh.get("/api/nodes").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(&body).contains("unreadable"), "{body}");
}

#[tokio::test]
async fn decisions_need_the_token_and_say_what_is_wrong() {
    let site = site();
    let id = site.pending("app");
    let approve = format!("/api/actions/{id}/approve");
    let (name, value) = bearer();
    let auth = [(name, value.as_str())];
    // (method, path, headers, body, status, message part)
    type Case<'a> = (
        Method,
        String,
        Vec<(&'a str, &'a str)>,
        &'a str,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            approve.clone(),
            vec![],
            "",
            StatusCode::UNAUTHORIZED,
            "token",
        ),
        (
            Method::POST,
            approve.clone(),
            vec![("authorization", "Bearer nope")],
            "",
            StatusCode::UNAUTHORIZED,
            "token",
        ),
        (
            Method::GET,
            approve.clone(),
            auth.to_vec(),
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "POST",
        ),
        (
            Method::POST,
            format!("/api/actions/{id}/maybe"),
            auth.to_vec(),
            "",
            StatusCode::NOT_FOUND,
            "approve or reject",
        ),
        (
            Method::POST,
            "/api/actions/Bad..Id/approve".into(),
            auth.to_vec(),
            "",
            StatusCode::BAD_REQUEST,
            "bad action id",
        ),
        (
            Method::POST,
            approve.clone(),
            auth.to_vec(),
            "{not json",
            StatusCode::BAD_REQUEST,
            "bad request body",
        ),
        (
            Method::POST,
            approve.clone(),
            auth.to_vec(),
            r#"{"by":"me","extra":1}"#,
            StatusCode::BAD_REQUEST,
            "bad request body",
        ),
        (
            Method::POST,
            "/api/actions/nothing-here/approve".into(),
            auth.to_vec(),
            "",
            StatusCode::NOT_FOUND,
            "no action",
        ),
    ];
    for (method, path, headers, body, status, says) in cases {
        let (got, _, answer) = site.call(method.clone(), &path, &headers, body).await;
        assert_eq!(got, status, "{method} {path} {headers:?} {body}: {answer}");
        assert!(
            error_of(&answer).contains(says),
            "{method} {path}: {answer}"
        );
    }
    assert!(site.layout.action_file(ActionState::Pending, &id).exists());

    // Approved with the token; a second decision finds it decided.
    let (status, _, body) = site
        .call(
            Method::POST,
            &approve,
            &auth,
            r#"{"by":"tester","note":"ok"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let action: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(action["state"], "approved");
    assert_eq!(
        action["history"][1]["by"], "admin",
        "who decided is the token's operator, not the body's \"by\": {body}"
    );
    assert!(site.layout.action_file(ActionState::Approved, &id).exists());
    let (status, _, body) = site
        .call(
            Method::POST,
            &format!("/api/actions/{id}/reject"),
            &auth,
            "",
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("approved, not pending"), "{body}");

    // The page's form: its CSRF value, and a form it can read.
    let other = site.pending("db");
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("cookie", "homelab_csrf=abc"),
    ];
    let (status, _, body) = site
        .call(
            Method::POST,
            &format!("/actions/{other}/reject"),
            &form,
            "csrf=abd",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, body) = site
        .call(
            Method::POST,
            &format!("/actions/{other}/reject"),
            &[("content-type", "text/plain")],
            "x",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).contains("bad form"), "{body}");
    let (status, _, body) = site.call(Method::POST, "/login", &form, "csrf=abc").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a login without a password: {body}"
    );
    assert!(error_of(&body).contains("password"), "{body}");
    assert!(site
        .layout
        .action_file(ActionState::Pending, &other)
        .exists());
}

/// An inventory node that never reported (the observer's incident says
/// so) is on the page with the nodes that did, marked as such.
#[tokio::test]
async fn the_page_lists_inventory_nodes_that_never_reported() {
    let site = site();
    std::fs::create_dir_all(site.layout.world_dir()).unwrap();
    let at = "2026-11-24T10:00:00.000Z";
    std::fs::write(
        site.layout.world_nodes(),
        format!(
            r#"[{{"node":"vps","status":"online","since":"{at}","first_seen":"{at}","last_seen":"{at}","last_seq":3,"docker":"ok","containers":2}}]"#
        ),
    )
    .unwrap();
    std::fs::write(
        site.layout.world_incidents(),
        format!(
            r#"[{{"id":"node_never_reported:saturn","kind":"node_never_reported","node":"saturn","severity":"warning","message":"saturn has never reported","opened_at":"{at}"}}]"#
        ),
    )
    .unwrap();
    let (status, page) = site.get("/").await;
    assert_eq!(status, StatusCode::OK);
    let card = |node: &str| {
        let start = page
            .find(&format!(r#"id="node-{node}""#))
            .unwrap_or_else(|| panic!("{node} has a card: {page}"));
        let end = page[start..].find("</article>").unwrap() + start;
        page[start..end].to_string()
    };
    let saturn = card("saturn");
    assert!(
        saturn.contains("✗</span> never reported") && saturn.contains("expected since"),
        "{saturn}"
    );
    let vps = card("vps");
    assert!(
        vps.contains("✓</span> online") && vps.contains(&format!(r#"datetime="{at}""#)),
        "{vps}"
    );
    assert!(
        page.contains("1 node is not online"),
        "the verdict counts saturn: {page}"
    );
}

/// The document and the router name the same endpoints: every path and
/// method of the document answers (not 404 or 405), and every route of
/// the router is in the document.
#[tokio::test]
async fn the_openapi_document_describes_the_router() {
    let site = site();
    let doc: Value = serde_json::from_str(homelab_ui::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut described = Vec::new();
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "container-restart-n1-app")
                .replace("{node}", "n1")
                .replace(
                    "{verb}",
                    if path.starts_with("/repo") {
                        "pin"
                    } else {
                        "approve"
                    },
                );
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, _, body) = if concrete == "/api/stream" {
                // A stream does not end: its headers say it is one.
                let response = site
                    .app
                    .clone()
                    .oneshot(Request::get(&concrete).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                (response.status(), response.headers().clone(), String::new())
            } else {
                site.call(method.clone(), &concrete, &[], "").await
            };
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let unrouted = status == StatusCode::NOT_FOUND && body.contains("no such page");
            assert!(!unrouted, "{method} {path} is described but not routed");
            described.push(format!("{method} {path}"));
        }
    }
    described.sort();
    let mut routed = vec![
        "GET /",
        "GET /services",
        "GET /nodes/{node}",
        "GET /nodes/{node}/logs/{container}",
        "GET /api/nodes/{node}/containers/{container}/logs",
        "GET /actions",
        "GET /actions/{id}",
        "GET /incidents",
        "GET /incidents/{id}",
        "GET /events",
        "POST /login",
        "POST /logout",
        "GET /audit",
        "GET /api/audit",
        "GET /healthz",
        "GET /summary",
        "GET /metrics",
        "GET /api/nodes",
        "GET /api/services",
        "GET /api/incidents",
        "GET /api/actions",
        "GET /api/actions/{id}",
        "POST /api/actions/{id}/{verb}",
        "POST /actions/{id}/{verb}",
        "GET /api/events",
        "GET /api/stream",
        "GET /api/ai-context",
        "GET /static/app.css",
        "GET /static/app.js",
        "GET /api/openapi.json",
        "GET /api/repo",
        "GET /api/repo/commits",
        "POST /api/repo/sync",
        "POST /api/repo/pin",
        "POST /api/repo/unpin",
        "POST /api/repo/webhook",
        "GET /api/deployments",
        "GET /repo",
        "POST /repo/{verb}",
        "GET /search",
    ];
    routed.sort();
    assert_eq!(described, routed);
    // Its enums are the code's.
    let action = &doc["components"]["schemas"]["Action"]["properties"];
    let states: Vec<&str> = action["state"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let code: Vec<&str> = ActionState::ALL.iter().map(|s| s.dir()).collect();
    assert_eq!(states, code);
}

/// Every answer, errors too, carries the security headers.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let site = site();
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/api/nodes"),
        (Method::GET, "/no/such/page"),
        (Method::POST, "/api/actions/x/approve"),
    ] {
        let (_, headers, _) = site.call(method.clone(), path, &[], "").await;
        for name in [
            "content-security-policy",
            "x-frame-options",
            "x-content-type-options",
        ] {
            assert!(headers.contains_key(name), "{method} {path} lacks {name}");
        }
    }
}
