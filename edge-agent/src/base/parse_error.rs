//! What a parse error may say once it leaves the agent: where (file, line, column, key) and what
//! was expected, never what was found. serde's and toml's messages quote the offending value (a
//! password typed without quotes, the first line of a key file), so every parse error passes here.

/// Where in a text an error is: line and column from 1, and the dotted key written on that line
/// (its table header included) when the line has a plain one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
    pub key: Option<String>,
    /// The keys of an inline table on that line (`source = { kind = …, fps = … }`), where the
    /// error may lie in any of them.
    pub inner_keys: Vec<String>,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
            if !self.inner_keys.is_empty() {
                write!(f, " {{{}}}", self.inner_keys.join(", "))?;
            }
        }
        Ok(())
    }
}

/// The position of byte `offset` of a TOML text. The key is read from the line's left-hand side
/// and the last `[table]` header above it, and kept only when every part is a plain name.
pub fn position_in_toml(text: &str, offset: usize) -> Position {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text.get(line_start..offset).map_or(1, |s| s.chars().count() + 1);
    let this_line = text[line_start..].lines().next().unwrap_or_default();
    let header = before[..line_start].lines().rev().map(str::trim).find_map(|l| {
        let inner = l.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
        inner.or_else(|| l.strip_prefix('[').and_then(|l| l.strip_suffix(']'))).map(str::trim)
    });
    let left = this_line.split_once('=').map(|(k, _)| k.trim());
    let key = match (header, left) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        _ => None,
    };
    let inner_keys = match this_line.split_once('=') {
        Some((_, value)) if value.trim_start().starts_with('{') => inline_keys(value),
        _ => Vec::new(),
    };
    Position { line, column, key: key.filter(|k| is_plain_key(k)), inner_keys }
}

/// The plain names written before `=` in an inline table, skipping everything quoted.
fn inline_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                word.clear();
            }
            None if c == '=' => {
                let name = word.trim().to_string();
                if is_plain_key(&name) && !keys.contains(&name) {
                    keys.push(name);
                }
                word.clear();
            }
            None if c == '{' || c == ',' => word.clear(),
            None => word.push(c),
        }
    }
    keys
}

/// A dotted key of plain names (letters, digits, `_`, `-`), short enough to name in an error.
pub fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

/// A TOML parse error of `text` as it may be shown: "line 3, column 8, key `mqtt.port`: invalid
/// type: string, expected u16".
pub fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let position = position_in_toml(text, error.span().map_or(0, |span| span.start));
    format!("{position}: {}", without_values(error.message()))
}

/// A JSON parse error as it may be shown (serde_json's message names line and column itself).
pub fn describe_json_error(error: &serde_json::Error) -> String {
    without_values(&error.to_string())
}

/// A section's complaint without the value it refuses: complaints read "is <value>; expected …"
/// (or "is <value>, which …; expected …"), and the value may be a line of anything. The value goes,
/// what was expected stays; any other complaint loses what it quotes.
pub fn without_refused_value(problem: &str) -> String {
    let Some(rest) = problem.strip_prefix("is ") else {
        return strip_quoted(problem);
    };
    let end = rest.find("; ").unwrap_or(rest.len());
    let (found, after) = rest.split_at(end);
    match found.find(", which ") {
        Some(at) => format!("is a value which {}{after}", strip_quoted(&found[at + ", which ".len()..])),
        None if after.is_empty() => "is not accepted".to_string(),
        None => format!("is not accepted{after}"),
    }
}

/// serde's found-value words, kept when an error says which type it found instead.
const TYPE_WORDS: [&str; 16] = [
    "string",
    "integer",
    "floating point",
    "boolean",
    "map",
    "sequence",
    "unit value",
    "unit variant",
    "newtype struct",
    "character",
    "byte array",
    "option",
    "null",
    "enum",
    "table",
    "array",
];

/// `message` without what it quotes of the input: serde's "invalid type: string \"…\", expected
/// a number" keeps "invalid type: string, expected a number"; an unknown field keeps its name when
/// it is a plain name; any other quoted text that is not a single punctuation token is dropped.
pub fn without_values(message: &str) -> String {
    let message = message.trim();
    let (found, expected) = match message.find(", expected ").or_else(|| message.find("\nexpected ")) {
        Some(at) => (&message[..at], Some(message[at + 2..].trim_start_matches(['\n', ' ']))),
        None => (message, None),
    };
    let found = describe_found(found);
    // What was expected comes from the agent's own types, never from the input.
    let mut out = match expected {
        Some(expected) => format!("{found}, {expected}"),
        None => found,
    };
    out = out.replace('\n', "; ");
    if out.chars().count() > 300 {
        out = out.chars().take(300).collect::<String>() + "…";
    }
    out
}

fn describe_found(found: &str) -> String {
    let found = found.trim();
    if let Some(rest) = found.strip_prefix("invalid type: ") {
        let word = TYPE_WORDS.iter().find(|w| rest.starts_with(*w));
        return match word {
            Some(word) => format!("invalid type: {word}"),
            None => "invalid type".into(),
        };
    }
    for (prefix, named) in [
        ("unknown field ", true),
        ("missing field ", true),
        ("duplicate field ", true),
        ("duplicate key ", true),
        ("unknown variant ", false),
        ("invalid value: ", false),
        ("invalid length ", false),
    ] {
        if let Some(rest) = found.strip_prefix(prefix) {
            let name = rest.trim_matches(|c| c == '`' || c == '"' || c == '\'');
            return if named && is_plain_key(name) {
                format!("{}`{name}`", prefix)
            } else {
                prefix.trim_end_matches([' ', ':']).to_string()
            };
        }
    }
    strip_quoted(found)
}

/// Drops every quoted (`…`, "…", '…') segment that is not a plain name or a punctuation token.
fn strip_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(['`', '"', '\'']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        // A token that is itself a quote character: `"` or `'`.
        if after.len() >= 2 && after.starts_with(['"', '\'']) && after[1..].starts_with(quote) {
            out.push(quote);
            out.push_str(&after[..1]);
            out.push(quote);
            rest = &after[2..];
            continue;
        }
        match after.find(quote) {
            Some(close) => {
                let inner = &after[..close];
                let punctuation = inner.chars().count() <= 3 && inner.chars().all(|c| c.is_ascii_punctuation());
                if punctuation || (is_plain_key(inner) && inner.len() <= 40) {
                    out.push(quote);
                    out.push_str(inner);
                    out.push(quote);
                } else {
                    out.push('…');
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Mqtt {
        url: String,
        port: u16,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        mqtt: Mqtt,
    }

    fn toml_error(text: &str) -> (Position, String) {
        let e = toml::from_str::<File>(text).unwrap_err();
        let position = position_in_toml(text, e.span().map_or(0, |s| s.start));
        (position, without_values(e.message()))
    }

    #[test]
    fn a_password_typed_without_quotes_is_named_by_line_and_key_not_shown() {
        let (position, message) = toml_error("[mqtt]\nurl = \"mqtt://b\"\nport = MqttS3cretPW\n");
        assert_eq!(position.line, 3);
        assert_eq!(position.key.as_deref(), Some("mqtt.port"));
        let inline =
            position_in_toml("[[cameras]]\nsource = { kind = \"rtsp\", url = \"rtsp://u:p=w@h\", fps = 2 }\n", 20);
        assert_eq!(inline.inner_keys, vec!["kind", "url", "fps"]);
        assert_eq!(inline.to_string(), "line 2, column 9, key `cameras.source` {kind, url, fps}");
        assert!(!message.contains("MqttS3cretPW") && !message.is_empty(), "{message}");
    }

    #[test]
    fn wrong_types_and_unknown_fields_say_what_was_expected_without_the_value() {
        let (position, message) = toml_error("[mqtt]\nurl = \"mqtt://b\"\nport = \"S3cret value\"\n");
        assert_eq!(position.line, 3);
        assert!(message.starts_with("invalid type: string"), "{message}");
        assert!(message.contains("expected") && !message.contains("S3cret"), "{message}");
        let (_, message) = toml_error("[mqtt]\nurl = \"mqtt://b\"\nport = 1\npasswrd = \"x\"\n");
        assert!(message.contains("unknown field `passwrd`") && message.contains("`url`"), "{message}");
        let json = serde_json::from_str::<Mqtt>(r#"{"url": 5, "port": 1}"#).unwrap_err().to_string();
        assert_eq!(without_values(&json), "invalid type: integer, expected a string at line 1 column 9");
        let json = serde_json::from_str::<Mqtt>(r#"{"url": "x", "port": "the secret"}"#).unwrap_err().to_string();
        assert!(!without_values(&json).contains("secret"), "{json}");
    }

    #[test]
    fn a_key_file_read_as_toml_shows_nothing_of_it() {
        let seed = "d4a1f00dbeef0123456789abcdef0123456789abcdef0123456789abcdef0123\n";
        let e = toml::from_str::<File>(seed).unwrap_err();
        let position = position_in_toml(seed, e.span().map_or(0, |s| s.start));
        let message = without_values(e.message());
        let shown = format!("{position}: {message}");
        assert!(!shown.contains("d4a1f00d") && !shown.contains("0123456789"), "{shown}");
        assert_eq!(position.line, 1);
    }

    #[test]
    fn a_sections_complaint_keeps_what_was_expected_and_loses_the_value() {
        assert_eq!(without_refused_value("is 7; expected 1 to 100"), "is not accepted; expected 1 to 100");
        assert_eq!(
            without_refused_value("is \"S3cret PW\"; expected a topic prefix without wildcards"),
            "is not accepted; expected a topic prefix without wildcards"
        );
        assert_eq!(
            without_refused_value("is \"gate-2\", which no scene defines; expected the id of a zone"),
            "is a value which no scene defines; expected the id of a zone"
        );
        assert_eq!(without_refused_value("names no camera \"x y\""), "names no camera …");
    }

    #[test]
    fn quoted_text_goes_unless_it_is_a_name_or_a_token() {
        assert_eq!(strip_quoted("expected `=` or `\"`"), "expected `=` or `\"`");
        assert_eq!(strip_quoted("found \"rtsp://u:p w@h\" here"), "found … here");
        assert_eq!(strip_quoted("unterminated \"abc"), "unterminated …");
        assert_eq!(describe_found("unknown variant `s3cret`"), "unknown variant");
        assert_eq!(describe_found("unknown field `a b`"), "unknown field");
    }
}
