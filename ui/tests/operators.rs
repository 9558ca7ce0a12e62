//! Named operators through the router on real files: each logs in by name
//! and password or calls with its API token, each decision is recorded by
//! the operator of the login (never a name in the body), a removed
//! operator or a new password ends the sessions at once, and every login
//! and decision is in the audit trail once.

use axum::http::{HeaderMap, Method, StatusCode};
use homelab_core::audit::{self, What};
use homelab_core::operator::{self, Operator, Secrets};
use homelab_core::{Action, ActionKind, ActionState, ActionStore, Layout, Name, Risk};
use homelab_ui::{app, AppState};
use serde_json::Value;

const TOKEN: &str = "operators-test-token";
const CSRF: &str = "homelab_csrf=abc";
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

struct Site {
    _root: tempfile::TempDir,
    layout: Layout,
    app: axum::Router,
    /// Each request comes from a new address, so the failures the test
    /// makes on purpose do not reach the login limit.
    from: std::cell::Cell<u8>,
}

impl Site {
    fn new() -> Site {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        let app = app(AppState::new(layout.clone(), TOKEN.into()));
        Site {
            _root: root,
            layout,
            app,
            from: std::cell::Cell::new(1),
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        use tower::ServiceExt;
        let n = self.from.get();
        self.from.set(n.wrapping_add(1));
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let addr = std::net::SocketAddr::from(([10, 0, 0, n], 40000));
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn add(&self, name: &str) -> Secrets {
        let (op, secrets) =
            Operator::new(operator::check_new_name(name).unwrap(), chrono::Utc::now());
        operator::write(&self.layout, &op).unwrap();
        secrets
    }

    fn pending(&self, service: &str, risk: Risk) -> Name {
        let action = Action::new(
            ActionKind::ContainerRestart,
            Name::parse("n1").unwrap(),
            Some(Name::parse(service).unwrap()),
            risk,
            "containers_not_running",
            "exited (1)",
            chrono::Utc::now(),
        );
        ActionStore::new(self.layout.clone())
            .create(&action)
            .unwrap();
        action.id
    }

    /// The session cookie a login answers with, or the status.
    async fn login(&self, name: &str, password: &str) -> Result<String, StatusCode> {
        let body = format!("csrf=abc&name={name}&password={password}");
        let (status, headers, _) = self
            .call(Method::POST, "/login", &[FORM, ("cookie", CSRF)], &body)
            .await;
        if status != StatusCode::SEE_OTHER {
            return Err(status);
        }
        let set = headers["set-cookie"].to_str().unwrap();
        let value = set
            .strip_prefix("homelab_session=")
            .and_then(|v| v.split(';').next())
            .unwrap();
        Ok(format!("homelab_session={value}; {CSRF}"))
    }

    /// The page's approve button, with a session cookie.
    async fn approve_on_page(&self, cookie: &str, id: &Name) -> StatusCode {
        self.call(
            Method::POST,
            &format!("/actions/{id}/approve"),
            &[FORM, ("cookie", cookie)],
            "csrf=abc&note=seen",
        )
        .await
        .0
    }

    fn decided_by(&self, id: &Name) -> String {
        let action = ActionStore::new(self.layout.clone())
            .find(id)
            .unwrap()
            .unwrap();
        let last = action.history.last().unwrap();
        format!("{} by {}", last.state, last.by)
    }
}

#[tokio::test]
async fn each_decision_is_recorded_by_the_operator_of_the_login() {
    let site = Site::new();
    let ann = site.add("ann");
    let bob = site.add("bob");

    // Ann logs in on the page; the page says who she is.
    let ann_cookie = site.login("ann", &ann.password).await.unwrap();
    let (status, _, page) = site
        .call(Method::GET, "/", &[("cookie", &ann_cookie)], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"<b id="operator">ann</b>"#), "{page}");
    assert!(!page.contains(r#"id="login""#));
    let first = site.pending("app", Risk::Low);
    assert_eq!(
        site.approve_on_page(&ann_cookie, &first).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(site.decided_by(&first), "approved by ann");

    // Bob's API token; the body's "by" is not believed.
    let second = site.pending("db", Risk::Low);
    let bearer = format!("Bearer {}", bob.token);
    let (status, _, body) = site
        .call(
            Method::POST,
            &format!("/api/actions/{second}/reject"),
            &[("authorization", &bearer)],
            r#"{"by":"ann","note":"not now"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(site.decided_by(&second), "rejected by bob");

    // The operator token is admin, on the page as well.
    let admin_cookie = site.login("admin", TOKEN).await.unwrap();
    let third = site.pending("web", Risk::Low);
    assert_eq!(
        site.approve_on_page(&admin_cookie, &third).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(site.decided_by(&third), "approved by admin");

    // Wrong passwords and unknown names are refused, and said in the trail.
    assert_eq!(
        site.login("ann", "wrong").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        site.login("eve", &ann.password).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        site.login("bob", &ann.password).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let forged = format!("Bearer {}", bob.token.replace("hlo.bob.", "hlo.ann."));
    let fourth = site.pending("cache", Risk::Low);
    let (status, _, _) = site
        .call(
            Method::POST,
            &format!("/api/actions/{fourth}/approve"),
            &[("authorization", &forged)],
            "",
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "bob's secret under ann's name"
    );

    // Ann is removed: her open session can no longer decide; a new
    // password for bob ends his session.
    let bob_cookie = site.login("bob", &bob.password).await.unwrap();
    assert!(operator::remove(&site.layout, &Name::parse("ann").unwrap()).unwrap());
    assert_eq!(
        site.approve_on_page(&ann_cookie, &fourth).await,
        StatusCode::UNAUTHORIZED
    );
    let (_, _, page) = site
        .call(Method::GET, "/", &[("cookie", &ann_cookie)], "")
        .await;
    assert!(
        page.contains(r#"id="login""#),
        "a removed operator's page asks to log in"
    );
    let mut renewed = operator::read(&site.layout, &Name::parse("bob").unwrap())
        .unwrap()
        .unwrap();
    renewed.password = homelab_core::identity::hash_password("new password");
    operator::write(&site.layout, &renewed).unwrap();
    assert_eq!(
        site.approve_on_page(&bob_cookie, &fourth).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(site
        .layout
        .action_file(ActionState::Pending, &fourth)
        .exists());

    // The trail: each login and each decision once, with its operator.
    let (status, _, body) = site
        .call(
            Method::GET,
            "/api/audit",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entries: Vec<Value> = serde_json::from_str(&body).unwrap();
    let lines: Vec<String> = entries
        .iter()
        .rev()
        .map(|e| {
            format!(
                "{} {} {} {} {}",
                e["operator"].as_str().unwrap(),
                e["what"].as_str().unwrap(),
                e["via"].as_str().unwrap(),
                e["ok"],
                e["target"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            "ann login page true -".to_string(),
            format!("ann approve page true {first}"),
            format!("bob reject api true {second}"),
            "admin login page true -".to_string(),
            format!("admin approve page true {third}"),
            "ann login page false -".to_string(),
            "eve login page false -".to_string(),
            "bob login page false -".to_string(),
            // bob's secret under ann's name
            "ann login session false -".to_string(),
            "bob login page true -".to_string(),
            // the removed ann's page, and bob's after his new password
            "ann login session false -".to_string(),
            "bob login session false -".to_string(),
        ]
    );
    assert!(entries.iter().all(|e| e["client"].is_string()));
    // The page shows the same, to an operator only.
    let (status, _, page) = site.call(Method::GET, "/audit", &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains(r#"id="audit-login""#) && !page.contains(">eve<"));
    let (status, _, body) = site
        .call(
            Method::GET,
            "/api/audit",
            &[("authorization", "Bearer nope")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, page) = site
        .call(
            Method::GET,
            "/audit?operator=bob",
            &[("cookie", &admin_cookie)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!(
            r#"<a href="/actions/{second}"><code>{second}</code></a>"#
        )) && !page.contains(&format!("<code>{first}</code>")),
        "{page}"
    );
    assert!(page.contains("✗ refused"), "bob's refused login: {page}");
    // And the file under the root holds it, one line each.
    let on_disk = audit::read(&site.layout, &audit::Filter::default(), 100).unwrap();
    assert_eq!(on_disk.len(), lines.len() + 1, "and the wrong token since");
    assert_eq!((on_disk[0].operator.as_str(), on_disk[0].ok), ("?", false));
    assert_eq!(
        on_disk.iter().filter(|e| e.what == What::Approve).count(),
        2
    );
}

#[tokio::test]
async fn logging_out_ends_the_session_in_this_browser() {
    let site = Site::new();
    let ann = site.add("ann");
    let cookie = site.login("ann", &ann.password).await.unwrap();
    let (status, headers, _) = site
        .call(
            Method::POST,
            "/logout",
            &[FORM, ("cookie", &cookie)],
            "csrf=abc",
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with("homelab_session=;") && set.contains("Max-Age=0"),
        "{set}"
    );
    let entries = audit::read(&site.layout, &audit::Filter::default(), 10).unwrap();
    assert_eq!(entries[0].what, What::Logout);
    assert_eq!(entries[0].operator, "ann");
}
