//! The web UI as a browser (and an attacker's page) meets it, over real
//! HTTP: security headers and no inline script, the session cookie, CSRF
//! on every form, no change by GET, and the limit on failed logins.

use std::time::Duration;

use homelab_tests::*;
use serde_json::json;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// The login form posted with the operator token, the CSRF cookie and
/// `csrf` as the form's field: status and response headers.
async fn post_login(
    http: std::net::SocketAddr,
    cookie: &str,
    csrf: &str,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut headers = vec![FORM, ("Cookie", cookie)];
    headers.extend_from_slice(extra);
    let body = format!("token={TOKEN}&csrf={csrf}");
    let (status, head, _) = http_exchange(http, "POST", "/login", &headers, &body).await;
    (status, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_locked_down_and_forms_need_their_csrf_value() {
    let repo = write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
    ]);
    let system = System::start(repo, Options::default()).await;
    let http = system.http;

    // The page: strict headers, styles and script from files only, and a
    // CSRF cookie for its forms.
    let (status, head, page) = http_exchange(http, "GET", "/", &[], "").await;
    assert_eq!(status, 200, "{head}");
    let csp = header_value(&head, "content-security-policy").expect("a CSP");
    for part in [
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        header_value(&head, "x-frame-options").as_deref(),
        Some("DENY")
    );
    assert_eq!(
        header_value(&head, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(
        !page.contains("<script>") && !page.contains("<style"),
        "inline code in the page"
    );
    assert!(page.contains(r#"<script src="/static/app.js">"#));
    let (status, head, _) = http_exchange(http, "GET", "/static/app.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(header_value(&head, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    let (_, first_head, _) = http_exchange(http, "GET", "/", &[], "").await;
    let csrf_cookie = set_cookies(&first_head)
        .into_iter()
        .find(|c| c.starts_with("homelab_csrf="))
        .expect("a CSRF cookie");
    assert!(
        csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Strict"),
        "{csrf_cookie}"
    );
    let csrf = csrf_cookie
        .trim_start_matches("homelab_csrf=")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf_header = format!("homelab_csrf={csrf}");
    let (_, _, page) = http_exchange(http, "GET", "/", &[("Cookie", &csrf_header)], "").await;
    assert!(
        page.contains(&format!(r#"name="csrf" value="{csrf}""#)),
        "the login form carries the cookie's value"
    );

    // Changing anything by GET: refused.
    for path in [
        "/login",
        "/actions/container-restart-n1-app/approve",
        "/api/actions/container-restart-n1-app/approve",
        "/api/actions/container-restart-n1-app/reject",
    ] {
        let (status, _, _) = http_exchange(http, "GET", path, &[], "").await;
        assert_eq!(status, 405, "GET {path}");
    }

    // Login: the CSRF value is needed, then the token.
    let (status, _) = post_login(http, &csrf_header, "wrong", &[]).await;
    assert_eq!(status, 403, "a login without the page's CSRF value");
    let (status, head) =
        post_login(http, &csrf_header, &csrf, &[("X-Forwarded-Proto", "https")]).await;
    assert_eq!(status, 303, "{head}");
    let session = set_cookies(&head)
        .into_iter()
        .find(|c| c.starts_with("homelab_session="))
        .expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(session.contains(part), "{session}");
    }
    assert!(
        !session.contains(TOKEN),
        "the cookie is not the token: {session}"
    );
    let session_value = session
        .trim_start_matches("homelab_session=")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Without TLS in front, no Secure (the browser would drop it).
    let (_, head) = post_login(http, &csrf_header, &csrf, &[]).await;
    assert!(
        !set_cookies(&head).iter().any(|c| c.contains("Secure")),
        "{head}"
    );

    // A pending action to decide on.
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe.report("n1", "online", &[("app", "exited")]).await;
    let id = "container-restart-n1-app";
    let pending = system.action_file("pending", id);
    wait_for("the restart proposed", Duration::from_secs(30), || async {
        pending.exists()
    })
    .await;

    // The page's approve form, with the session: refused without the CSRF
    // value, from another origin, or as a cross-site request; taken with
    // them all right.
    let both = format!("homelab_csrf={csrf}; homelab_session={session_value}");
    let path = format!("/actions/{id}/approve");
    // (headers, form body, expected status)
    type Attempt<'a> = (Vec<(&'a str, &'a str)>, String, u16);
    let attempts: Vec<Attempt> = vec![
        (vec![("Cookie", &both)], "note=".into(), 403),
        (vec![("Cookie", &both)], "note=&csrf=forged".into(), 403),
        (
            vec![("Cookie", &both), ("Origin", "https://evil.example")],
            format!("note=&csrf={csrf}"),
            403,
        ),
        (
            vec![("Cookie", &both), ("Sec-Fetch-Site", "cross-site")],
            format!("note=&csrf={csrf}"),
            403,
        ),
        // A bearer token does not make a cross-site POST acceptable.
        (
            vec![
                ("Authorization", "Bearer test-operator-token"),
                ("Origin", "https://evil.example"),
            ],
            format!("note=&csrf={csrf}"),
            403,
        ),
    ];
    for (headers, body, expected) in attempts {
        let mut headers = headers;
        headers.push(FORM);
        let (status, head, answer) = http_exchange(http, "POST", &path, &headers, &body).await;
        assert_eq!(status, expected, "{headers:?} {body}: {head}\n{answer}");
        assert!(pending.exists(), "still pending after {headers:?}");
    }
    let (status, _, _) = http_exchange(
        http,
        "POST",
        &path,
        &[
            ("Cookie", &both),
            ("Origin", &format!("http://{http}")),
            FORM,
        ],
        &format!("note=looks+right&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 303);
    let approved = read_json(&system.action_file("approved", id))
        .or_else(|_| read_json(&system.action_file("running", id)))
        .or_else(|_| read_json(&system.action_file("failed", id)))
        .or_else(|_| read_json(&system.action_file("completed", id)))
        .expect("decided");
    assert!(
        approved["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "approved" && t["by"] == "admin"),
        "{approved}"
    );

    // Failed logins are limited per address: after five wrong tokens, even
    // the right one waits.
    let bad = json!({}).to_string();
    let approve_with = |token: &'static str| {
        let bad = bad.clone();
        async move {
            let bearer = format!("Bearer {token}");
            http_exchange(
                http,
                "POST",
                "/api/actions/nothing-here/approve",
                &[("Authorization", &bearer)],
                &bad,
            )
            .await
        }
    };
    for attempt in 0..5 {
        let (status, _, _) = approve_with("wrong-token").await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    let (status, head, body) = approve_with(TOKEN).await;
    assert_eq!(status, 429, "{body}");
    let wait: u64 = header_value(&head, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let (status, _) = post_login(http, &csrf_header, &csrf, &[]).await;
    assert_eq!(status, 429, "the login form is limited too");
    let metrics = system.get("/metrics").await.1;
    assert!(
        metrics.contains("homelab_http_login_failures_total 5"),
        "{metrics}"
    );
    system.stop().await.unwrap();
}
