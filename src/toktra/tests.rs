//! Unit tests of the client: answers read in every spelling, error bodies, token lifetimes,
//! revoked-credential signs, rate-limit pacing.

use serde_json::{Value, json};

use super::wire::*;
use super::*;

/// Create and list answers in the contract's spelling and in other vendors': the ID the
/// kind names wins, fields of unexpected types read as absent instead of failing the answer.
#[test]
fn credentials_are_read_in_every_spelling() {
    let oauth = json!({ "id": "internal-7", "client_id": "cl_1", "secret": "s1", "name": 5 });
    let minted = parse_minted(CredentialKind::OauthClient, "create", oauth).unwrap();
    assert_eq!((minted.id.as_str(), minted.secret.expose(), minted.name.as_str()), ("cl_1", "s1", ""));
    let key = json!({ "key_id": "k_1", "api_key": "tk_1", "scopes": "usage:read" });
    let minted = parse_minted(CredentialKind::ApiKey, "create", key).unwrap();
    assert_eq!((minted.id.as_str(), minted.secret.expose()), ("k_1", "tk_1"));
    let e = parse_minted(CredentialKind::ApiKey, "create", json!({ "id": "k_2", "key": "" })).unwrap_err();
    assert!(e.to_string().contains("no secret in the create response of k_2"), "{e}");

    let item = json!({
        "id": "k_3", "name": "n", "scopes": ["a", 1, "b"], "created_at": "2026-01-02T03:04:05Z", "last_used_at": 17
    });
    let listed = parse_listed(CredentialKind::ApiKey, &item).unwrap();
    assert_eq!((listed.id.as_str(), listed.scopes.clone()), ("k_3", vec!["a".to_string(), "b".to_string()]));
    assert!(listed.created_at.is_some() && listed.last_used_at.is_none());
    assert!(parse_listed(CredentialKind::OauthClient, &json!({ "name": "no id" })).is_none());
    assert!(parse_listed(CredentialKind::OauthClient, &json!("not an object")).is_none());
}

#[test]
fn a_reason_does_not_repeat_the_call() {
    let e = Error::Api { what: "list oauth_clients".into(), status: 401, code: "unauthorized".into(), message: None };
    assert_eq!(e.to_string(), "list oauth_clients: toktra answered 401 unauthorized");
    assert_eq!(e.reason(), "toktra answered 401 unauthorized");
}

#[test]
fn token_lifetimes() {
    let lifetime = |v: Value| token_lifetime(Some(&v));
    let hour = Duration::from_secs(3_600);
    assert_eq!(lifetime(serde_json::json!(120)), Duration::from_secs(120));
    assert_eq!(lifetime(serde_json::json!(90.5)), Duration::from_secs_f64(90.5));
    assert_eq!(lifetime(serde_json::json!("120")), Duration::from_secs(120));
    assert_eq!(lifetime(serde_json::json!(u64::MAX)), MAX_TOKEN_LIFETIME);
    assert_eq!(lifetime(serde_json::json!(1e300)), MAX_TOKEN_LIFETIME);
    assert_eq!(lifetime(serde_json::json!("18446744073709551616000")), MAX_TOKEN_LIFETIME);
    for unusable in [
        serde_json::json!(0),
        serde_json::json!(-5),
        serde_json::json!(i64::MIN),
        serde_json::json!(0.5),
        serde_json::json!("soon"),
        serde_json::json!("NaN"),
        serde_json::json!("inf"),
        serde_json::json!(null),
        serde_json::json!([3600]),
    ] {
        assert_eq!(lifetime(unusable.clone()), hour, "{unusable}");
    }
    assert_eq!(token_lifetime(None), hour);
}

#[test]
fn error_bodies_are_printable_and_bounded_after_the_echo_check() {
    let body = serde_json::json!({
        "error": format!("bad\u{1b}[31m\n{}", "c".repeat(100_000)),
        "message": format!("line\r\nERROR forged\u{202e}{}", "m".repeat(100_000)),
    });
    let (code, message) = error_body(body.to_string().as_bytes());
    let (code, message) = (code.unwrap(), message.unwrap());
    assert!(code.starts_with("bad[31m") && code.len() == 100_007, "whole until checked");
    assert!(message.starts_with("lineERROR forged") && !message.chars().any(char::is_control));
    assert_eq!(shorten(&code, MAX_CODE).chars().count(), MAX_CODE + 1);
    assert!(shorten(&code, MAX_CODE).ends_with('…'));
    assert_eq!(shorten("short", MAX_CODE), "short");
    assert_eq!(shorten("ééé", 2), "éé…");
    // Control characters between the characters of an echoed secret do not hide it.
    let secret = "tcs_0123456789abcdefghij";
    let hidden: String = secret.chars().flat_map(|c| [c, '\u{0}']).collect();
    let (code, _) = error_body(serde_json::json!({ "error": hidden }).to_string().as_bytes());
    assert!(echoes(&code.unwrap(), secret));
    assert_eq!(error_body(b"{\"error\": \"\\u0007\"}"), (None, None));
    assert_eq!(error_body(b"not json"), (None, None));
}

#[test]
fn revoked_list_items_are_recognised_in_every_shape_vendors_use() {
    let active = [
        json!({"id": "k"}),
        json!({"id": "k", "revoked_at": null}),
        json!({"id": "k", "revoked_at": ""}),
        json!({"id": "k", "status": "active"}),
        json!({"id": "k", "state": "ACTIVE", "revoked": false, "active": true, "enabled": true}),
    ];
    let revoked = [
        json!({"id": "k", "revoked_at": "2026-12-01T00:00:00Z"}),
        json!({"id": "k", "deleted_at": "2026-12-01T00:00:00Z"}),
        json!({"id": "k", "status": "revoked"}),
        json!({"id": "k", "state": "Inactive"}),
        json!({"id": "k", "status": "disabled"}),
        json!({"id": "k", "revoked": true}),
        json!({"id": "k", "active": false}),
        json!({"id": "k", "enabled": false}),
    ];
    for item in &active {
        assert!(!is_revoked(item), "active: {item}");
    }
    for item in &revoked {
        assert!(is_revoked(item), "revoked: {item}");
    }
}
