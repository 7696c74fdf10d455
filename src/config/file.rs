//! The `--config` TOML file, read as plain key/value pairs with their line
//! numbers; the option table (`super::options`) says which keys exist and
//! how each value is read.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::ConfigError;

/// The keys of a config file, each with its value and line.
#[derive(Debug, Default)]
pub(crate) struct FileValues {
    path: PathBuf,
    /// key -> (line of the key, value)
    entries: BTreeMap<String, (usize, toml::Value)>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl FileValues {
    pub(crate) fn load(path: &Path) -> Result<FileValues, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Result<FileValues, ConfigError> {
        let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| {
                // toml's Display is a multi-line snippet; keep errors to one line.
                let message = match e.span() {
                    Some(s) => format!("line {}: {}", line_of(text, s.start), e.message().trim()),
                    None => e.message().trim().to_owned(),
                };
                ConfigError::ParseFile {
                    path: path.to_owned(),
                    message: message.replace('\n', " "),
                }
            })?;
        let entries = table
            .into_iter()
            .map(|(k, v)| {
                let line = line_of(text, k.span().start);
                (k.into_inner(), (line, v.into_inner()))
            })
            .collect();
        Ok(FileValues {
            path: path.to_owned(),
            entries,
        })
    }

    /// The error for something wrong at `line`.
    pub(crate) fn error(&self, line: usize, message: String) -> ConfigError {
        ConfigError::ParseFile {
            path: self.path.clone(),
            message: format!("line {line}: {message}"),
        }
    }

    /// Refuses keys that are not options (typos would otherwise be ignored).
    pub(crate) fn check_keys<'a>(
        &self,
        known: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), ConfigError> {
        let mut unknown = self
            .entries
            .iter()
            .filter(|(k, _)| !known.clone().any(|n| n == k.as_str()))
            .map(|(k, (line, _))| (*line, k))
            .collect::<Vec<_>>();
        unknown.sort();
        match unknown.first() {
            Some((line, key)) => Err(self.error(
                *line,
                format!("unknown option {key:?} (keys are the option names in snake_case, e.g. max_frame_bytes)"),
            )),
            None => Ok(()),
        }
    }

    /// The value of `key` and its line.
    pub(crate) fn get(&self, key: &str) -> Option<(usize, &toml::Value)> {
        self.entries.get(key).map(|(line, v)| (*line, v))
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}
