//! Column values to typed JSON, by type OID.
//!
//! uuid and text stay strings, int2/4/8 become numbers, bool a boolean,
//! timestamptz an RFC 3339 string, json/jsonb embedded JSON; numeric and any
//! other type are passed as their text form (exact, never rounded).

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use super::Datum;

const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const VARCHAR: u32 = 1043;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;

/// Microseconds since 2000-01-01 (Postgres's epoch) to a UTC time.
pub fn pg_timestamp(micros: i64) -> DateTime<Utc> {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let secs = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
    Utc.timestamp_opt(secs, nanos).single().unwrap_or_default()
}

/// One value as JSON.
pub fn datum_to_json(type_oid: u32, datum: &Datum) -> Value {
    match datum {
        Datum::Null | Datum::Unchanged => Value::Null,
        Datum::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text_to_json(type_oid, text),
            // The connection asks for UTF8; anything else is passed on lossily.
            Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        },
        Datum::Binary(bytes) => binary_to_json(type_oid, bytes),
    }
}

/// One value in Postgres's text format as JSON.
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    let as_string = || Value::String(text.to_string());
    match type_oid {
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| as_string()),
        BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => as_string(),
        },
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            // NaN and infinities have no JSON number: keep Postgres's spelling.
            .unwrap_or_else(as_string),
        JSON | JSONB => serde_json::from_str(text).unwrap_or_else(|_| as_string()),
        TIMESTAMPTZ => timestamptz(text).map(Value::String).unwrap_or_else(as_string),
        TIMESTAMP => NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
            .map(|t| Value::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()))
            .unwrap_or_else(|_| as_string()),
        _ => as_string(),
    }
}

/// `2026-11-25 12:55:03.123456+00` (DateStyle ISO) to RFC 3339.
fn timestamptz(text: &str) -> Option<String> {
    // The offset may be +HH, +HH:MM or +HH:MM:SS; normalise to +HH:MM.
    let split = text.rfind(['+', '-']).filter(|i| *i > 10)?;
    let (stamp, offset) = text.split_at(split);
    let mut parts = offset[1..].split(':');
    let h: i32 = parts.next()?.parse().ok()?;
    let m: i32 = parts.next().map(|m| m.parse().ok()).unwrap_or(Some(0))?;
    let s: i32 = parts.next().map(|s| s.parse().ok()).unwrap_or(Some(0))?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let tz = chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60 + s))?;
    let naive = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    let t = tz.from_local_datetime(&naive).single()?.with_timezone(&Utc);
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

fn binary_to_json(type_oid: u32, b: &[u8]) -> Value {
    let fixed = |n: usize| (b.len() == n).then_some(b);
    let hex = || {
        let mut s = String::with_capacity(2 + b.len() * 2);
        s.push_str("\\x");
        for byte in b {
            s.push_str(&format!("{byte:02x}"));
        }
        Value::String(s)
    };
    match type_oid {
        BOOL => fixed(1).map(|b| Value::Bool(b[0] != 0)),
        INT2 => fixed(2).map(|b| Value::from(i16::from_be_bytes([b[0], b[1]]))),
        INT4 => fixed(4).map(|b| Value::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        INT8 => fixed(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Value::from(i64::from_be_bytes(a))
        }),
        UUID => fixed(16).map(|b| {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Value::String(uuid::Uuid::from_bytes(a).to_string())
        }),
        TEXT | VARCHAR => std::str::from_utf8(b).ok().map(|s| Value::String(s.to_string())),
        TIMESTAMPTZ => fixed(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Value::String(pg_timestamp(i64::from_be_bytes(a)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }),
        JSONB => b.split_first().filter(|(v, _)| **v == 1).and_then(|(_, j)| serde_json::from_slice(j).ok()),
        JSON => serde_json::from_slice(b).ok(),
        _ => None,
    }
    .unwrap_or_else(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn t(oid: u32, s: &'static str) -> Value {
        datum_to_json(oid, &Datum::Text(Bytes::from_static(s.as_bytes())))
    }

    #[test]
    fn text_values_are_typed() {
        assert_eq!(t(INT8, "9007199254740993"), json!(9007199254740993i64));
        assert_eq!(t(INT4, "-5"), json!(-5));
        assert_eq!(t(BOOL, "t"), json!(true));
        assert_eq!(t(UUID, "0b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11"), json!("0b7c1a52-5f0e-4a65-9d9c-6b1a2f0a9b11"));
        assert_eq!(t(JSONB, r#"{"a": [1, 2]}"#), json!({"a": [1, 2]}));
        assert_eq!(t(1700, "12.3400"), json!("12.3400"));
        assert_eq!(t(FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(t(FLOAT8, "1.5"), json!(1.5));
        assert_eq!(datum_to_json(TEXT, &Datum::Null), Value::Null);
    }

    #[test]
    fn timestamptz_becomes_rfc3339() {
        assert_eq!(t(TIMESTAMPTZ, "2026-11-25 12:55:03.123456+00"), json!("2026-11-25T12:55:03.123456Z"));
        assert_eq!(t(TIMESTAMPTZ, "2026-11-25 12:55:03+00"), json!("2026-11-25T12:55:03Z"));
        assert_eq!(t(TIMESTAMPTZ, "2026-11-25 14:55:03.5+02"), json!("2026-11-25T12:55:03.500Z"));
        assert_eq!(t(TIMESTAMPTZ, "2026-11-25 07:25:03-05:30"), json!("2026-11-25T12:55:03Z"));
        // Not representable: kept as Postgres wrote it.
        assert_eq!(t(TIMESTAMPTZ, "infinity"), json!("infinity"));
    }

    #[test]
    fn binary_values_are_typed() {
        let b = |oid, v: &[u8]| datum_to_json(oid, &Datum::Binary(Bytes::copy_from_slice(v)));
        assert_eq!(b(INT4, &7i32.to_be_bytes()), json!(7));
        assert_eq!(b(INT8, &(-2i64).to_be_bytes()), json!(-2));
        assert_eq!(b(BOOL, &[1]), json!(true));
        assert_eq!(b(UUID, &[0u8; 16]), json!("00000000-0000-0000-0000-000000000000"));
        assert_eq!(b(TIMESTAMPTZ, &0i64.to_be_bytes()), json!("2000-01-01T00:00:00Z"));
        // A wrong length never panics; it falls back to hex.
        assert_eq!(b(INT4, &[1, 2]), json!("\\x0102"));
    }

    #[test]
    fn pg_epoch() {
        assert_eq!(pg_timestamp(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
        assert_eq!(pg_timestamp(-1).timestamp_subsec_micros(), 999_999);
    }
}
