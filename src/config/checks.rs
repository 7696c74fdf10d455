//! Checks of single options, named in the `options!` table. Each takes
//! `&T` for the option's exact type `T` (a `Check<T>`), hence `&PathBuf` and
//! `&String`; the error is the reason, without the option's name.

use super::*;

pub(super) fn shard_count(n: &usize) -> Result<(), String> {
    if (1..=MAX_SHARDS).contains(n) {
        Ok(())
    } else {
        Err(format!("must be between 1 and {MAX_SHARDS}"))
    }
}

#[allow(clippy::ptr_arg)]
pub(super) fn non_empty_path(p: &PathBuf) -> Result<(), String> {
    if p.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

pub(super) fn non_empty_secret(s: &Option<String>) -> Result<(), String> {
    if s.as_deref() == Some("") {
        return Err("must not be empty".into());
    }
    Ok(())
}

#[allow(clippy::ptr_arg)]
pub(super) fn non_blank(s: &String) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

pub(super) fn readable_file(p: &Option<PathBuf>) -> Result<(), String> {
    if let Some(path) = p {
        fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `--tls-cert` and `--tls-key` come together or not at all.
pub(super) fn tls_pair(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<(), ConfigError> {
    match (cert, key) {
        (Some(_), None) => Err(invalid("tls-key", "is required with --tls-cert")),
        (None, Some(_)) => Err(invalid("tls-cert", "is required with --tls-key")),
        _ => Ok(()),
    }
}

#[allow(clippy::ptr_arg)]
pub(super) fn node_id(id: &String) -> Result<(), String> {
    if valid_node_id(id) {
        Ok(())
    } else {
        Err("must be 1 to 64 characters of A-Z a-z 0-9 _ . -".into())
    }
}

#[allow(clippy::ptr_arg)]
pub(super) fn origins(origins: &Vec<String>) -> Result<(), String> {
    for origin in origins {
        // Browsers send `scheme://host[:port]`, never a path or trailing slash.
        if !origin.contains("://")
            || origin.ends_with('/')
            || origin.chars().any(char::is_whitespace)
        {
            return Err(format!(
                "{origin:?} is not an origin like https://chat.example.com"
            ));
        }
    }
    Ok(())
}

/// Values that must be greater than zero when set.
pub(super) trait Positive {
    fn positive(&self) -> bool;
}
macro_rules! positive_int {
    ($($t:ty),*) => {$(
        impl Positive for $t {
            fn positive(&self) -> bool {
                *self > 0
            }
        }
    )*};
}
positive_int!(usize, u32, u64, i32);
impl Positive for Duration {
    fn positive(&self) -> bool {
        !self.is_zero()
    }
}
impl<T: Positive> Positive for Option<T> {
    fn positive(&self) -> bool {
        self.as_ref().is_none_or(T::positive)
    }
}

pub(super) fn positive<T: Positive>(v: &T) -> Result<(), String> {
    if v.positive() {
        Ok(())
    } else {
        Err("must be greater than zero".into())
    }
}
