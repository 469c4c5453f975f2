//! One JSON object written field by field into a byte buffer, for the access log's hot path.
//!
//! Through serde every key went through the string escaper and every value through the
//! serializer's machinery: about 4.6k instructions per access-log line (callgrind), most of it
//! scanning constant keys for characters to escape. Here a key is one constant fragment
//! ([`json_key!`]), a value is copied in one piece unless it holds a character JSON must escape
//! (then serde_json escapes it), and milliseconds are written from integer microseconds. The
//! output is byte for byte what `serde_json` writes for the same fields (the access log's tests
//! compare them).

use std::net::IpAddr;

use crate::limits::client_ip::write_ip;

/// A key as [`JsonObject`] takes it: `,"name":` (the comma is left out before the first).
macro_rules! json_key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}
pub(crate) use json_key;

/// Writes `{"key":value,...}` into a `Vec<u8>`.
pub struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    pub fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    pub fn end(self) {
        self.out.push(b'}');
    }

    /// `key` from [`json_key!`]: a constant of ours, with nothing JSON must escape.
    fn key(&mut self, key: &'static str) {
        let key = if self.first {
            self.first = false;
            &key[1..]
        } else {
            key
        };
        self.out.extend_from_slice(key.as_bytes());
    }

    pub fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        write_str(self.out, value);
    }

    /// A value of ours known to hold nothing JSON escapes (a timestamp, a protocol name).
    pub fn plain_str(&mut self, key: &'static str, value: &str) {
        debug_assert!(!needs_escape(value), "{value:?}");
        self.key(key);
        write_quoted(self.out, value);
    }

    /// `null` for `None`.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    pub fn uint(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// `micros` / 1000 as the JSON number serde_json writes for that `f64`: the shortest form
    /// that reads back the same, which for a whole number of microseconds is the milliseconds
    /// with up to three decimals, trailing zeros dropped (`12.0`, `12.5`, `0.005`).
    pub fn millis(&mut self, key: &'static str, micros: u64) {
        self.key(key);
        write_millis(self.out, micros);
    }

    pub fn opt_millis(&mut self, key: &'static str, micros: Option<u64>) {
        match micros {
            Some(v) => self.millis(key, v),
            None => self.null(key),
        }
    }

    /// The address as a string, as `Display` writes it; `null` for `None`.
    pub fn opt_ip(&mut self, key: &'static str, value: Option<IpAddr>) {
        let Some(ip) = value else {
            return self.null(key);
        };
        self.key(key);
        self.out.push(b'"');
        write_ip(&mut Utf8Sink(self.out), ip);
        self.out.push(b'"');
    }

    fn null(&mut self, key: &'static str) {
        self.key(key);
        self.out.extend_from_slice(b"null");
    }
}

/// `fmt::Write` into the buffer (an address has nothing to escape).
struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What JSON requires escaping in a string: control characters, `"` and `\`.
fn needs_escape(value: &str) -> bool {
    value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `value` as a JSON string: copied whole when it needs no escape, else through serde_json.
fn write_str(out: &mut Vec<u8>, value: &str) {
    if needs_escape(value) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        write_quoted(out, value);
    }
}

/// `"value"`, for a value with nothing to escape.
fn write_quoted(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// Below this many milliseconds (about 35 years) an `f64`'s spacing is under a quarter of a
/// thousandth, so the thousandths written here are its shortest form; beyond, serde_json
/// writes it.
const EXACT_MILLIS: u64 = 1 << 40;

fn write_millis(out: &mut Vec<u8>, micros: u64) {
    let (whole, frac) = (micros / 1000, micros % 1000);
    if whole >= EXACT_MILLIS {
        let _ = serde_json::to_writer(&mut *out, &(micros as f64 / 1000.0));
        return;
    }
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    out.push(b'.');
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&digits[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        for s in [
            "",
            "/plain/path?q=1",
            "caf\u{e9} \u{1f600}",
            "quote \" and backslash \\",
            "control \u{1} \n \t \u{1f} end",
            "\u{7f} is not escaped",
        ] {
            let mut ours = Vec::new();
            write_str(&mut ours, s);
            assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn milliseconds_read_as_serde_json_writes_the_f64() {
        let mut samples: Vec<u64> = vec![0, 1, 5, 10, 50, 99, 100, 101, 110, 500, 999, 1000, 1001];
        samples.extend([
            1010,
            1100,
            12_345,
            120_000,
            999_999,
            1_000_000,
            86_400_000_123,
        ]);
        samples.extend([(1 << 40) * 1000 - 1, (1 << 40) * 1000 + 7, u64::MAX / 3]);
        // A deterministic spread over every magnitude.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x >> (x % 64));
        }
        for micros in samples {
            let mut ours = Vec::new();
            write_millis(&mut ours, micros);
            let serde = serde_json::to_string(&(micros as f64 / 1000.0)).unwrap();
            assert_eq!(String::from_utf8_lossy(&ours), serde, "{micros} µs");
        }
    }

    #[test]
    fn an_object_reads_back_with_every_field() {
        let mut buf = Vec::new();
        let mut o = JsonObject::begin(&mut buf);
        o.str(json_key!("a"), "x\"y");
        o.opt_str(json_key!("b"), None);
        o.uint(json_key!("c"), 42);
        o.millis(json_key!("d"), 1500);
        o.opt_millis(json_key!("e"), None);
        o.opt_ip(json_key!("f"), Some("::1".parse().unwrap()));
        o.opt_ip(json_key!("g"), Some("10.0.0.255".parse().unwrap()));
        o.plain_str(json_key!("h"), "HTTP/1.1");
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": "x\"y", "b": null, "c": 42, "d": 1.5, "e": null,
                               "f": "::1", "g": "10.0.0.255", "h": "HTTP/1.1"})
        );
    }
}
