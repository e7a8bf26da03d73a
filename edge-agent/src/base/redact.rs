//! The one redaction every output goes through: logs, pages, API answers, status, acks and error
//! messages show no URL password, no secret-named value. Add a new kind of secret here, not at the
//! place that prints it.

use serde_json::Value;

/// Replaces the password of every `scheme://user:password@` in `text` with `***`, for text that may
/// quote a config line or a URL. The userinfo ends at the last `@` before the path, so a password
/// with spaces, quotes or `@` in it is hidden whole.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority surely ends at the path, query, fragment or line; a space or a quote ends
        // it only when no `@` follows before that (it then held no userinfo).
        let hard_end = tail.find(['/', '?', '#', '\n']).unwrap_or(tail.len());
        let (authority_end, at_sign) = match tail[..hard_end].rfind('@') {
            Some(at_sign) => (hard_end, Some(at_sign)),
            None => (tail[..hard_end].find(['"', '\'', ' ', '\t']).unwrap_or(hard_end), None),
        };
        let authority = &tail[..authority_end];
        match at_sign {
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

/// [`redact_userinfo`], and the value of every assignment to a secret-named key (`password = …`,
/// `"metrics_token": …`, quoted or not, up to the end of the line, a comma or a brace) replaced by
/// [`REDACTED`]: for free text that may quote a config line or a JSON object.
pub fn redact_text(text: &str) -> String {
    let text = redact_userinfo(text);
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (sign, _) in text.match_indices(['=', ':']) {
        if sign < copied {
            continue;
        }
        // The name before the sign, past spaces and a closing quote.
        let before = text[..sign].trim_end_matches([' ', '\t', '"', '\'']);
        let name_start = before.rfind(|c: char| !is_name_char(c)).map_or(0, |i| i + 1);
        let name = before[name_start..].rsplit('.').next().unwrap_or_default();
        if name.is_empty() || !is_secret_key(name) {
            continue;
        }
        let value = text[sign + 1..].trim_start_matches([' ', '\t']);
        let value_start = text.len() - value.len();
        let value_len = match value.chars().next() {
            Some(quote @ ('"' | '\'')) => value[1..].find(quote).map_or(value.len(), |i| i + 2),
            _ => value.find([',', '}', '\n']).unwrap_or(value.len()),
        };
        if value_len == 0 {
            continue;
        }
        out.push_str(&text[copied..value_start]);
        out.push_str(REDACTED);
        copied = value_start + value_len;
    }
    out.push_str(&text[copied..]);
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
    fn a_password_with_spaces_quotes_or_at_signs_is_hidden_whole() {
        assert_eq!(redact_userinfo("rtsp://user:S3cret PW@host/x"), "rtsp://user:***@host/x");
        assert_eq!(redact_userinfo(r#"rtsp://user:a"b'c@d@host:554/x"#), "rtsp://user:***@host:554/x");
        assert_eq!(redact_userinfo("url rtsp://host:554/x and mail a@b"), "url rtsp://host:554/x and mail a@b");
        // Without a path, an `@` further on may belong to the URL: hiding too much is the safe side.
        assert!(!redact_userinfo("rtsp://u:p w@host").contains("p w"));
        assert_eq!(redact_userinfo(r#"url = "rtsp://host/a@b""#), r#"url = "rtsp://host/a@b""#);
    }

    #[test]
    fn secret_assignments_in_free_text_lose_their_values() {
        for (text, secret) in [
            ("password = MqttS3cretPW", "MqttS3cretPW"),
            ("mqtt.password = \"quoted secret\" # note", "quoted secret"),
            (r#"{"metrics_token": "t0k3n", "id": 1}"#, "t0k3n"),
            ("client_key: /etc/box.key, next", "/etc/box.key"),
            ("SECRET=abc\nother = 1", "abc"),
        ] {
            let shown = redact_text(text);
            assert!(!shown.contains(secret) && shown.contains(REDACTED), "{text} → {shown}");
        }
        assert_eq!(redact_text("the key folder is missing"), "the key folder is missing");
        assert_eq!(redact_text("keyframes = 4, id = 2"), "keyframes = 4, id = 2");
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
