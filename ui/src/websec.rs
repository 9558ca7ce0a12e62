//! What keeps the operator's browser session safe: the session cookie,
//! CSRF checks, security headers and the login rate limit. The decisions
//! are pure functions, tested by table; the handlers only apply them.
//!
//! - The session cookie holds a value derived from the operator token
//!   (SHA-256 of a label and the token), never the token itself:
//!   HttpOnly, SameSite=Strict, and Secure when the page came over TLS
//!   (`X-Forwarded-Proto: https` from a TLS proxy in front).
//! - Every form carries a CSRF value equal to the `homelab_csrf` cookie
//!   (double submit; another site can neither read the cookie nor set the
//!   field). Every POST that a browser marks as cross-site (`Sec-Fetch-Site`)
//!   or whose `Origin` is another host is refused too, also with a bearer
//!   token.
//! - Failed logins (the form, or a wrong bearer token or cookie) are
//!   limited per client address: after [`MAX_FAILURES`] within [`WINDOW`],
//!   every attempt from there gets 429 until the window has passed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

pub const SESSION_COOKIE: &str = "homelab_session";
pub const CSRF_COOKIE: &str = "homelab_csrf";
pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);

/// The page allows scripts and styles from itself only (no inline ones),
/// forms that post to itself, and no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every answer carries.
pub fn security_headers() -> [(header::HeaderName, HeaderValue); 5] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

/// The session cookie's value for `token`.
pub fn session_value(token: &str) -> String {
    let digest = Sha256::digest([b"homelab/v1/session\0".as_slice(), token.as_bytes()].concat());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cookie's value from the request, if present.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request came over TLS (to a proxy in front of us).
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path /, Secure over
/// TLS; `max_age` 0 removes it.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// Compares in time independent of where the first difference is (the
/// one comparison the operators' tokens and sessions use too).
pub use homelab_core::operator::same;

/// Why a POST is refused as cross-site, if it is: a browser's
/// `Sec-Fetch-Site: cross-site|same-site`, or an `Origin` naming another
/// host than `Host`. Clients that are not browsers send neither.
pub fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A browser that says where the request comes from is believed (its
    // `Origin` may be `null` for a form post, and a proxy may rewrite
    // `Host`).
    match get("sec-fetch-site") {
        Some("same-origin" | "none") => return None,
        Some(_) => return Some("cross-site request"),
        None => {}
    }
    // Older browsers: the origin, if sent, must be this host.
    match (get("origin"), get("host")) {
        (Some("null"), _) => Some("opaque origin"),
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .split_once("://")
                .map_or(origin, |(_, rest)| rest)
                .trim_end_matches('/');
            (!origin_host.eq_ignore_ascii_case(host)).then_some("origin is another host")
        }
        (Some(_), None) => Some("origin without host"),
        (None, _) => None,
    }
}

/// Whether a form's CSRF field matches the request's CSRF cookie.
pub fn csrf_ok(headers: &HeaderMap, field: &str) -> bool {
    cookie(headers, CSRF_COOKIE).is_some_and(|c| !c.is_empty() && same(c, field))
}

/// A new random CSRF value.
pub fn new_csrf() -> String {
    use rand::RngExt;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Failed logins by client address.
#[derive(Debug, Default)]
pub struct Limiter {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Limiter {
    /// `Err(wait)` while `ip` has had [`MAX_FAILURES`] failures within
    /// [`WINDOW`]: how long until the oldest of them leaves the window.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(times) = self.failures.get_mut(&ip) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.is_empty() {
            self.failures.remove(&ip);
            return Ok(());
        }
        if times.len() >= MAX_FAILURES {
            let oldest = *times.front().expect("not empty");
            return Err(WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    pub fn fail(&mut self, ip: IpAddr, now: Instant) {
        let times = self.failures.entry(ip).or_default();
        times.push_back(now);
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
        // Bounded memory under a spray of addresses: forget the quietest.
        if self.failures.len() > 10_000 {
            self.failures
                .retain(|_, t| t.back().is_some_and(|b| now.duration_since(*b) < WINDOW));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Headers, Option<&str>)] = &[
            // curl, homelab actions, Home Assistant's rest_command.
            (&[("host", "127.0.0.1:18180")], None),
            (&[("host", "ui:18180"), ("origin", "http://ui:18180")], None),
            (
                &[("host", "ui:18180"), ("sec-fetch-site", "same-origin")],
                None,
            ),
            (&[("host", "ui:18180"), ("sec-fetch-site", "none")], None),
            // Chromium's form post: Origin null, but same-origin.
            (
                &[
                    ("host", "ui:18180"),
                    ("origin", "null"),
                    ("sec-fetch-site", "same-origin"),
                ],
                None,
            ),
            // Behind a proxy that rewrote Host.
            (
                &[
                    ("host", "127.0.0.1:18180"),
                    ("origin", "https://lab.example"),
                    ("sec-fetch-site", "same-origin"),
                ],
                None,
            ),
            (
                &[("host", "ui:18180"), ("sec-fetch-site", "garbage")],
                Some("cross-site request"),
            ),
            (
                &[("host", "ui:18180"), ("origin", "https://evil.example")],
                Some("origin is another host"),
            ),
            (
                &[("host", "ui:18180"), ("origin", "http://ui:18181")],
                Some("origin is another host"),
            ),
            (
                &[("host", "ui:18180"), ("origin", "null")],
                Some("opaque origin"),
            ),
            (
                &[("host", "ui:18180"), ("sec-fetch-site", "cross-site")],
                Some("cross-site request"),
            ),
            (
                &[("host", "ui:18180"), ("sec-fetch-site", "same-site")],
                Some("cross-site request"),
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(cross_site(&headers(pairs)), *expected, "{pairs:?}");
        }
    }

    #[test]
    fn csrf_needs_the_cookie_and_the_same_field() {
        let with = headers(&[("cookie", "a=b; homelab_csrf=abc123; c=d")]);
        assert!(csrf_ok(&with, "abc123"));
        assert!(!csrf_ok(&with, "abc124"));
        assert!(!csrf_ok(&with, ""));
        assert!(!csrf_ok(&headers(&[]), "abc123"));
        assert!(!csrf_ok(&headers(&[("cookie", "homelab_csrf=")]), ""));
    }

    #[test]
    fn the_session_cookie_is_not_the_token() {
        let value = session_value("s3cret-token");
        assert!(!value.contains("s3cret"));
        assert_eq!(value.len(), 64);
        assert_ne!(value, session_value("s3cret-token2"));
        assert_eq!(
            set_cookie(SESSION_COOKIE, "v", 60, true),
            "homelab_session=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(!set_cookie(SESSION_COOKIE, "v", 60, false).contains("Secure"));
        assert!(over_tls(&headers(&[("x-forwarded-proto", "https")])));
        assert!(!over_tls(&headers(&[("x-forwarded-proto", "http")])));
        assert!(!over_tls(&headers(&[])));
    }

    #[test]
    fn failed_logins_are_limited_per_address_for_a_window() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut limiter = Limiter::default();
        for i in 0..MAX_FAILURES as u64 {
            assert_eq!(limiter.check(a, at(i)), Ok(()), "failure {i} may be tried");
            limiter.fail(a, at(i));
        }
        // (address, second, expected)
        let cases = [
            (a, 5, Err(Duration::from_secs(55))),
            (a, 59, Err(Duration::from_secs(1))),
            (b, 5, Ok(())),
            // The first failure left the window: one more try.
            (a, 60, Ok(())),
        ];
        for (ip, secs, expected) in cases {
            assert_eq!(limiter.check(ip, at(secs)), expected, "{ip} at {secs}s");
        }
        limiter.fail(a, at(60));
        assert_eq!(
            limiter.check(a, at(60)),
            Err(Duration::from_secs(1)),
            "five within the window again, until the one at 1 s leaves it"
        );
        assert_eq!(limiter.check(a, at(61)), Ok(()));
        assert_eq!(limiter.check(a, at(200)), Ok(()));
    }
}
