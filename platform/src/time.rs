//! Times as the store keeps them: RFC 3339 in UTC with microseconds, so text order is time order
//! in both stores.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn now_text() -> String {
    text(Utc::now())
}

/// A time as a box wrote it, in the store's form; None when it is not RFC 3339.
pub fn normalized(time: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(time).ok().map(|t| text(t.with_timezone(&Utc)))
}

/// The store's time one microsecond after `time` (None when it is not RFC 3339).
pub fn just_after(time: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(time).ok().map(|t| text(t.with_timezone(&Utc) + chrono::Duration::microseconds(1)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_of_any_offset_and_precision_sort_as_text() {
        let a = super::normalized("2026-12-06T10:00:00+08:00").unwrap();
        let b = super::normalized("2026-12-06T02:00:00.5Z").unwrap();
        assert_eq!(a, "2026-12-06T02:00:00.000000Z");
        assert!(a < b);
        assert!(super::normalized("yesterday").is_none());
    }
}
