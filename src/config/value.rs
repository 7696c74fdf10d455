//! How one option value is read: from the text of a flag or a `CORECHAT_*`
//! variable, or from a TOML value. One implementation per type, so a type
//! reads (and fails) the same way from all three sources, with errors in
//! words a user knows ("expected a whole number", not "expected usize").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use super::{Durability, LogFormat, StoreKind};

/// How an option is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `--opt VALUE`
    Single,
    /// `--opt`, `--opt=false`: the value is optional and defaults to true.
    Bool,
    /// `--opt A --opt B,C`: repeatable and comma-separated.
    List,
}

/// A type an option can have.
pub trait OptValue: Sized + Clone + std::fmt::Debug + 'static {
    const SHAPE: Shape = Shape::Single;

    /// What a valid value looks like, for errors: "a whole number".
    fn expected() -> String;

    /// Parses one flag or environment value.
    fn parse_text(s: &str) -> Result<Self, String>;

    /// Parses every value given for the option (several only for lists):
    /// the last one wins.
    fn from_texts(texts: &[String]) -> Result<Self, String> {
        Self::parse_text(texts.last().map_or("", String::as_str))
    }

    /// Reads a TOML value; by default a TOML string read like a flag.
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Self::parse_text(s),
            other => Err(format!(
                "expected {}, got {}",
                Self::expected(),
                describe(other)
            )),
        }
    }

    /// The value as shown after `[default: ...]` in `--help`.
    fn show(&self) -> Option<String>;

    /// False for an unset `Option` (used to redact secrets in `Debug`).
    fn is_set(&self) -> bool {
        true
    }
}

/// A TOML value in words, for "expected X, got Y".
fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the text {s:?}"),
        toml::Value::Integer(i) => format!("the number {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "a list".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

macro_rules! whole_number {
    ($($t:ty),*) => {$(
        impl OptValue for $t {
            fn expected() -> String {
                "a whole number".into()
            }
            fn parse_text(s: &str) -> Result<Self, String> {
                let t = s.trim();
                t.parse::<$t>().map_err(|_| match t.parse::<i128>() {
                    Ok(_) => out_of_range::<$t>(t),
                    Err(_) => format!("expected a whole number, got {t:?}"),
                })
            }
            fn from_toml(v: &toml::Value) -> Result<Self, String> {
                match v {
                    toml::Value::Integer(i) => {
                        <$t>::try_from(*i).map_err(|_| out_of_range::<$t>(&i.to_string()))
                    }
                    other => Err(format!("expected a whole number, got {}", describe(other))),
                }
            }
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

whole_number!(usize, u32, u64, i32);

fn out_of_range<T: Bounded>(got: &str) -> String {
    format!(
        "expected a whole number from {} to {}, got {got}",
        T::MIN_TEXT,
        T::max_text()
    )
}

trait Bounded {
    const MIN_TEXT: &'static str;
    fn max_text() -> String;
}
macro_rules! bounded {
    ($($t:ty: $min:literal),*) => {$(
        impl Bounded for $t {
            const MIN_TEXT: &'static str = $min;
            fn max_text() -> String {
                <$t>::MAX.to_string()
            }
        }
    )*};
}
bounded!(usize: "0", u32: "0", u64: "0", i32: "-2147483648");

impl OptValue for bool {
    const SHAPE: Shape = Shape::Bool;
    fn expected() -> String {
        "true or false".into()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "on" | "1" => Ok(true),
            "false" | "f" | "no" | "n" | "off" | "0" => Ok(false),
            _ => Err(format!("expected true or false, got {s:?}")),
        }
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(format!("expected true or false, got {}", describe(other))),
        }
    }
    fn show(&self) -> Option<String> {
        // A switch: its help text says what turning it on does.
        None
    }
}

impl OptValue for String {
    fn expected() -> String {
        "text".into()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        Ok(s.to_owned())
    }
    fn show(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl OptValue for PathBuf {
    fn expected() -> String {
        "a path".into()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("expected a path, got nothing".into());
        }
        Ok(PathBuf::from(s))
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            // An empty path is refused by validation, which names the option.
            toml::Value::String(s) => Ok(PathBuf::from(s)),
            other => Err(format!("expected a path, got {}", describe(other))),
        }
    }
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl OptValue for SocketAddr {
    fn expected() -> String {
        "an address and port like 0.0.0.0:8080 or [::1]:8080".into()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("expected {}, got {s:?}", Self::expected()))
    }
    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl OptValue for Duration {
    fn expected() -> String {
        "a duration like 90s, 30m, 12h or 7d".into()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        super::parse_duration(s)
    }
    fn show(&self) -> Option<String> {
        Some(format!("{}s", self.as_secs()))
    }
}

/// Lists: each entry is trimmed and empty entries are dropped, so that
/// `CORECHAT_ALLOWED_ORIGIN="https://a, https://b"` works.
impl OptValue for Vec<String> {
    const SHAPE: Shape = Shape::List;
    fn expected() -> String {
        "a list of text".into()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        Self::from_texts(&[s.to_owned()])
    }
    fn from_texts(texts: &[String]) -> Result<Self, String> {
        Ok(texts
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect())
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        let items = match v {
            toml::Value::Array(items) => items,
            toml::Value::String(s) => return Self::parse_text(s),
            other => {
                return Err(format!(
                    "expected a list of text like [\"a\", \"b\"], got {}",
                    describe(other)
                ))
            }
        };
        let texts = items
            .iter()
            .map(|i| match i {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "expected a list of text like [\"a\", \"b\"], got {} in the list",
                    describe(other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_texts(&texts)
    }
    fn show(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.join(","))
    }
}

/// An option with no default: absent means `None`.
impl<T: OptValue> OptValue for Option<T> {
    const SHAPE: Shape = T::SHAPE;
    fn expected() -> String {
        T::expected()
    }
    fn parse_text(s: &str) -> Result<Self, String> {
        T::parse_text(s).map(Some)
    }
    fn from_texts(texts: &[String]) -> Result<Self, String> {
        T::from_texts(texts).map(Some)
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        T::from_toml(v).map(Some)
    }
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(T::show)
    }
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

/// "a, b or c"
fn one_of(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

fn choice_names<T: ValueEnum>() -> Vec<String> {
    T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_owned())
        .collect()
}

macro_rules! choice {
    ($($t:ty),*) => {$(
        impl OptValue for $t {
            fn expected() -> String {
                one_of(&choice_names::<$t>())
            }
            fn parse_text(s: &str) -> Result<Self, String> {
                <$t as ValueEnum>::from_str(s.trim(), true)
                    .map_err(|_| format!("expected {}, got {s:?}", Self::expected()))
            }
            fn show(&self) -> Option<String> {
                self.to_possible_value().map(|p| p.get_name().to_owned())
            }
        }
    )*};
}
choice!(StoreKind, Durability, LogFormat);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_words() {
        assert_eq!(usize::parse_text(" 12 "), Ok(12));
        assert_eq!(
            usize::parse_text("1e6").unwrap_err(),
            "expected a whole number, got \"1e6\""
        );
        assert_eq!(
            u32::parse_text("-1").unwrap_err(),
            "expected a whole number from 0 to 4294967295, got -1"
        );
        assert_eq!(i32::parse_text("-5"), Ok(-5));
        let v = toml::Value::String("four".into());
        assert_eq!(
            usize::from_toml(&v).unwrap_err(),
            "expected a whole number, got the text \"four\""
        );
        assert_eq!(
            u32::from_toml(&toml::Value::Integer(1 << 40)).unwrap_err(),
            "expected a whole number from 0 to 4294967295, got 1099511627776"
        );
    }

    #[test]
    fn other_types_in_words() {
        assert_eq!(bool::parse_text("Yes"), Ok(true));
        assert_eq!(bool::parse_text("off"), Ok(false));
        assert_eq!(
            bool::parse_text("perhaps").unwrap_err(),
            "expected true or false, got \"perhaps\""
        );
        assert_eq!(
            StoreKind::parse_text("postgres").unwrap_err(),
            "expected sqlite or memory, got \"postgres\""
        );
        assert_eq!(LogFormat::parse_text("JSON"), Ok(LogFormat::Json));
        assert!(SocketAddr::parse_text("nope")
            .unwrap_err()
            .starts_with("expected an address and port like 0.0.0.0:8080"));
        assert!(PathBuf::parse_text("").is_err());
        assert_eq!(
            Vec::<String>::from_texts(&["a, b".into(), "".into(), "c".into()]),
            Ok(vec!["a".to_string(), "b".into(), "c".into()])
        );
        assert_eq!(
            Option::<u64>::from_toml(&toml::Value::Integer(3)),
            Ok(Some(3))
        );
        assert_eq!(Duration::from_secs(60).show().as_deref(), Some("60s"));
    }
}
