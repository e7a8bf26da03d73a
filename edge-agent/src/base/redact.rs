//! The one redaction every output goes through: logs, pages, API answers, status, acks and error
//! messages show no URL password, no secret-named value. Add a new kind of secret here, not at the
//! place that prints it.

use serde_json::Value;

/// Replaces the password of every `scheme://user:password@` in `text` with `***`, for text that may
/// quote a config line or a URL.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '"', '\'', ' ', '?', '#']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at_sign) => {
                let userinfo = &authority[..at_sign];
                let user = userinfo.split(':').next().unwrap_or_default();
                out.push_str(user);
                if userinfo.contains(':') {
                    out.push_str(":***");
                }
                out.push_str(&authority[at_sign..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// Keys whose values never leave the box through the page: passwords, hashes, tokens, keys.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential"].iter().any(|word| key.contains(word)) || key.ends_with("key")
}

pub const REDACTED: &str = "*** redacted ***";

/// Hides every secret in a JSON document: the values of secret-named keys, and the password of
/// every URL in any string (camera URLs keep `user:password@`).
pub fn redact_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if is_secret_key(key) && !value.is_null() {
                    *value = Value::String(REDACTED.into());
                } else {
                    redact_json(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::String(text) if text.contains("://") => *text = redact_userinfo(text),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_urls_inside_any_text() {
        assert_eq!(
            redact_userinfo(r#"source = { url = "rtsp://u:p@h:1/x", other = "rtsp://h/y" }"#),
            r#"source = { url = "rtsp://u:***@h:1/x", other = "rtsp://h/y" }"#
        );
        assert_eq!(redact_userinfo("rtsp://only-user@h/x"), "rtsp://only-user@h/x");
    }

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let mut config = serde_json::json!({
            "device_id": "box",
            "mqtt": { "url": "mqtts://b", "password": "p", "client_key": "/etc/k.pem" },
            "web": { "users": [{ "name": "li", "password_hash": "$argon2id$...", "role": "admin" }], "metrics_token": "t" }
        });
        redact_json(&mut config);
        let text = config.to_string();
        for secret in ["\"p\"", "$argon2id$", "/etc/k.pem", "\"t\""] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(config["web"]["users"][0]["name"], "li");
        assert_eq!(config["mqtt"]["url"], "mqtts://b");
    }

    #[test]
    fn camera_urls_inside_json_lose_their_password() {
        let mut config =
            serde_json::json!({ "cameras": [{ "source": { "url": "rtsp://admin:s3cret@10.0.0.9/live" } }] });
        redact_json(&mut config);
        assert_eq!(config["cameras"][0]["source"]["url"], "rtsp://admin:***@10.0.0.9/live");
    }
}
