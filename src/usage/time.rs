//! RFC 3339 timestamps without a date crate.

use std::time::SystemTime;

use crate::clients::shared::civil_from_days;

/// A record's time as RFC 3339, written only when the record is (the log writer, off the
/// request's path).
pub fn serialize<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*at))
}

/// `2024-05-01T12:34:56.789Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_067_200_123 + 3_723_000);
        assert_eq!(rfc3339(at), "2024-01-01T01:02:03.123Z");
    }
}
