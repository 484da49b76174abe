//! Integers and strings whose bounds are part of their type, so the same
//! bound is enforced by serde when Rust decodes a message and written into
//! the JSON schema the TypeScript validators are generated from.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! bounded_int {
    ($(#[$doc:meta])* $name:ident, $t:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name<const MIN: $t, const MAX: $t>($t);

        impl<const MIN: $t, const MAX: $t> $name<MIN, MAX> {
            /// `None` when `v` is outside `MIN..=MAX`.
            pub const fn new(v: $t) -> Option<Self> {
                if v >= MIN && v <= MAX {
                    Some(Self(v))
                } else {
                    None
                }
            }

            /// `v` clamped into `MIN..=MAX`, for values we compose ourselves.
            pub const fn saturating(v: $t) -> Self {
                if v < MIN {
                    Self(MIN)
                } else if v > MAX {
                    Self(MAX)
                } else {
                    Self(v)
                }
            }

            pub const fn get(self) -> $t {
                self.0
            }
        }

        impl<const MIN: $t, const MAX: $t> fmt::Debug for $name<MIN, MAX> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl<const MIN: $t, const MAX: $t> fmt::Display for $name<MIN, MAX> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl<const MIN: $t, const MAX: $t> Serialize for $name<MIN, MAX> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }

        impl<'de, const MIN: $t, const MAX: $t> Deserialize<'de> for $name<MIN, MAX> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <$t>::deserialize(d)?;
                Self::new(v).ok_or_else(|| serde::de::Error::custom(format_args!("{v} is outside {MIN}..={MAX}")))
            }
        }

        #[cfg(feature = "schema")]
        impl<const MIN: $t, const MAX: $t> schemars::JsonSchema for $name<MIN, MAX> {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Owned(format!("{}_{}_{}", stringify!($name), MIN, MAX))
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "integer", "minimum": MIN, "maximum": MAX })
            }
        }
    };
}

bounded_int!(
    /// A `u16` in `MIN..=MAX`.
    U16In,
    u16
);
bounded_int!(
    /// A `u32` in `MIN..=MAX`.
    U32In,
    u32
);
bounded_int!(
    /// An `i32` in `MIN..=MAX`.
    I32In,
    i32
);
bounded_int!(
    /// A `u64` in `MIN..=MAX`.
    U64In,
    u64
);

/// The largest integer a JavaScript number holds exactly (2^53 - 1).
pub const JS_SAFE_MAX: u64 = (1 << 53) - 1;

/// A `u64` that survives the trip through a JavaScript number.
pub type JsU64 = U64In<0, JS_SAFE_MAX>;

/// A string of at most `MAX` bytes. The schema states `MAX` as `maxLength`
/// (counted in characters), so the Rust check is the stricter of the two.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    /// `None` when `s` is longer than `MAX` bytes.
    pub fn new(s: impl Into<String>) -> Option<Self> {
        let s = s.into();
        (s.len() <= MAX).then_some(Self(s))
    }

    /// Cuts `s` to at most `MAX` bytes on a character boundary (for messages we compose).
    pub fn truncated(s: impl Into<String>) -> Self {
        let mut s = s.into();
        if s.len() > MAX {
            let mut end = MAX;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl<const MAX: usize> std::ops::Deref for Text<MAX> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> AsRef<str> for Text<MAX> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> AsRef<std::path::Path> for Text<MAX> {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl<const MAX: usize> AsRef<std::ffi::OsStr> for Text<MAX> {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl<const MAX: usize> fmt::Debug for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const MAX: usize> fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const MAX: usize> Serialize for Text<MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let len = s.len();
        Self::new(s).ok_or_else(|| serde::de::Error::custom(format_args!("a string of {len} bytes is longer than {MAX}")))
    }
}

#[cfg(feature = "schema")]
impl<const MAX: usize> schemars::JsonSchema for Text<MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Owned(format!("Text_{MAX}"))
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "maxLength": MAX })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced_when_decoding() {
        assert_eq!(serde_json::from_str::<U32In<1, 64>>("64").unwrap().get(), 64);
        for bad in ["0", "65", "-1", "1.5", "\"3\"", "null"] {
            assert!(serde_json::from_str::<U32In<1, 64>>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<JsU64>("9007199254740992").is_err());
        assert!(serde_json::from_str::<Text<3>>("\"abcd\"").is_err());
        assert_eq!(serde_json::from_str::<Text<3>>("\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(Text::<4>::truncated("aéé").as_str(), "aé");
    }
}
