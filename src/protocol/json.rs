//! A JSON tree that borrows from the body it was read from.
//!
//! Why not `serde_json::Value`: that allocates a `String` for every key and string value and
//! a B-tree node per object, and reading a 1 KB chat completion that way was most of the
//! parsing thread's time per exchange. Here strings without escapes are slices of the body,
//! objects are small vectors searched from the end (so a repeated key reads as its last
//! value, as with `serde_json::Value`), and the accessors have `serde_json::Value`'s names
//! and meaning, so the readers in this module's siblings read the same either way.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A JSON number as it was written: unsigned, negative integer or float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    U(u64),
    I(i64),
    F(f64),
}

impl fmt::Display for Number {
    /// As `serde_json` writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Number::U(n) => serde_json::Number::from(*n).to_string(),
            Number::I(n) => serde_json::Number::from(*n).to_string(),
            Number::F(x) => serde_json::Number::from_f64(*x)
                .map(|n| n.to_string())
                .unwrap_or_else(|| "null".to_string()),
        };
        f.write_str(&text)
    }
}

/// A parsed JSON value borrowing its strings from the input where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members in document order (repeats kept; lookups take the last).
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// Parses `bytes` (errors as `serde_json` reports them, nesting limit included).
    pub fn parse(bytes: &'a [u8]) -> Result<Value<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The member `key` of an object (the last one if repeated); `None` for other values.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(members) => members
                .iter()
                .rev()
                .find(|(k, _)| k.as_ref() == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Value<'a>>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// An integer that fits `u64` (floats are `None`, as with `serde_json`).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(Number::U(n)) => Some(*n),
            Value::Number(Number::I(n)) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// An integer that fits `i64` (floats are `None`, as with `serde_json`).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(Number::U(n)) => i64::try_from(*n).ok(),
            Value::Number(Number::I(n)) => Some(*n),
            _ => None,
        }
    }

    /// Any number as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(Number::U(n)) => Some(*n as f64),
            Value::Number(Number::I(n)) => Some(*n as f64),
            Value::Number(Number::F(x)) => Some(*x),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Display for Value<'_> {
    /// Compact JSON, members in document order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(Number::U(n)) => s.serialize_u64(*n),
            Value::Number(Number::I(n)) => s.serialize_i64(*n),
            Value::Number(Number::F(x)) => s.serialize_f64(*x),
            Value::String(t) => s.serialize_str(t),
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Object(members) => {
                // A repeated key is written once, with its last value (what `get` reads).
                let kept = |i: usize| !members[i + 1..].iter().any(|(k, _)| *k == members[i].0);
                let mut map = s.serialize_map(None)?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if kept(i) {
                        map.serialize_entry(k.as_ref(), v)?;
                    }
                }
                map.end()
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Value<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Value<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value<'a>, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value<'a>, E> {
                Ok(Value::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Value<'a>, D2::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value<'a>, E> {
                Ok(Value::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value<'a>, E> {
                Ok(Value::Number(Number::U(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value<'a>, E> {
                // serde_json reports non-negative integers as u64; keep one form per value.
                Ok(Value::Number(match u64::try_from(v) {
                    Ok(u) => Number::U(u),
                    Err(_) => Number::I(v),
                }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value<'a>, E> {
                Ok(Value::Number(Number::F(v)))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value<'a>, E> {
                Ok(Value::String(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value<'a>, E> {
                Ok(Value::String(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value<'a>, E> {
                Ok(Value::String(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'a>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(v) = seq.next_element::<Value<'a>>()? {
                    out.push(v);
                }
                Ok(Value::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'a>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                // JSON keys are strings; read as values, they borrow the same way.
                while let Some(k) = map.next_key::<Value<'a>>()? {
                    let Value::String(k) = k else {
                        return Err(de::Error::custom("object key is not a string"));
                    };
                    let v = map.next_value::<Value<'a>>()?;
                    out.push((k, v));
                }
                Ok(Value::Object(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::Value;

    /// Reads every accessor of both trees at `path` and compares.
    fn same_reading(a: &Value<'_>, b: &serde_json::Value, path: &str) {
        assert_eq!(a.as_str(), b.as_str(), "{path}: as_str");
        assert_eq!(a.as_bool(), b.as_bool(), "{path}: as_bool");
        assert_eq!(a.as_u64(), b.as_u64(), "{path}: as_u64");
        assert_eq!(a.as_i64(), b.as_i64(), "{path}: as_i64");
        assert_eq!(a.as_f64(), b.as_f64(), "{path}: as_f64");
        assert_eq!(a.is_object(), b.is_object(), "{path}: is_object");
        assert_eq!(a.is_null(), b.is_null(), "{path}: is_null");
        match (a, b) {
            (Value::Array(x), serde_json::Value::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}: len");
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    same_reading(x, y, &format!("{path}[{i}]"));
                }
            }
            (Value::Object(_), serde_json::Value::Object(m)) => {
                for (k, y) in m {
                    let x = a.get(k).unwrap_or(&Value::Null);
                    same_reading(x, y, &format!("{path}.{k}"));
                }
                assert!(a.get("no-such-key").is_none());
            }
            _ => {}
        }
    }

    #[test]
    fn reads_the_same_as_serde_json_value() {
        let texts = [
            r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"caf\u00e9 \"q\"\n","tool_calls":[{"id":"c1","function":{"name":"f","arguments":{"b":1,"a":[true,null,-3,2.5e3]}}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":18446744073709551615}}"#,
            r#"[1, -1, 1.0, -9223372036854775808, 18446744073709551616, "", {}, []]"#,
            r#"{"k":1,"k":"last"}"#,
            r#""just a string""#,
            "null",
        ];
        for t in texts {
            let ours = Value::parse(t.as_bytes()).expect("parses");
            let theirs: serde_json::Value = serde_json::from_str(t).expect("parses");
            same_reading(&ours, &theirs, "$");
        }
    }

    #[test]
    fn strings_without_escapes_borrow_from_the_body() {
        let body = br#"{"content":"plain text","escaped":"a\nb"}"#;
        let v = Value::parse(body).expect("parses");
        assert!(matches!(
            v.get("content"),
            Some(Value::String(std::borrow::Cow::Borrowed("plain text")))
        ));
        assert_eq!(v.get("escaped").and_then(Value::as_str), Some("a\nb"));
        let Value::Object(members) = &v else {
            panic!("an object")
        };
        assert!(matches!(
            members[0].0,
            std::borrow::Cow::Borrowed("content")
        ));
    }

    #[test]
    fn writes_back_compact_json_in_document_order() {
        let v = Value::parse(br#"{ "b" : 1, "a" : [ 2.5, "x\"y", null ] }"#).expect("parses");
        assert_eq!(v.to_string(), r#"{"b":1,"a":[2.5,"x\"y",null]}"#);
        let repeated = Value::parse(br#"{"a":1,"b":2,"a":3}"#).expect("parses");
        assert_eq!(repeated.to_string(), r#"{"b":2,"a":3}"#);
    }

    #[test]
    fn malformed_and_too_deep_input_is_an_error_not_a_panic() {
        assert!(Value::parse(b"{\"a\":").is_err());
        assert!(Value::parse(b"{\"a\":1}}").is_err());
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(Value::parse(deep.as_bytes()).is_err());
    }
}
