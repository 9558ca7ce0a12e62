//! Timestamps on the wire: RFC 3339, UTC, milliseconds, `Z` suffix
//! (`2026-11-22T10:00:00.123Z`), as the contract shows.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

pub type Timestamp = DateTime<Utc>;

pub fn format(ts: &Timestamp) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(ts))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let raw = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| serde::de::Error::custom(format!("bad timestamp {raw:?}: {e}")))
}

/// Same format for `Option<Timestamp>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => super::serialize(ts, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super")] Timestamp);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

/// Parses a duration such as `0s`, `30s`, `5m`, `2h`, `1d`, or a sum `1h30m`.
pub fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in raw.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => {
                return Err(format!(
                    "bad duration {raw:?}: unit {c:?}, use s, m, h or d"
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("bad duration {raw:?}: a number must come before {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {raw:?} is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "bad duration {raw:?}: a unit (s, m, h, d) must follow {digits}"
        ));
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(input: &str, expected: Result<u64, ()>) {
        assert_eq!(
            parse_duration(input).map(|d| d.as_secs()).map_err(|_| ()),
            expected,
            "{input:?}"
        );
    }

    #[test]
    fn durations() {
        check("0s", Ok(0));
        check("30s", Ok(30));
        check("5m", Ok(300));
        check("1h30m", Ok(5400));
        check("1d", Ok(86400));
        check("", Err(()));
        check("30", Err(()));
        check("s", Err(()));
        check("3x", Err(()));
        check("-1s", Err(()));
        let _ = Duration::ZERO;
    }

    #[test]
    fn timestamps_have_millis_and_z() {
        let ts: Timestamp = "2026-11-22T10:00:00.123456Z".parse().unwrap();
        assert_eq!(format(&ts), "2026-11-22T10:00:00.123Z");
    }
}
