//! The `serve` options as flags and `CORECHAT_*` variables: the clap
//! arguments generated from the option table, what clap found, and clap's
//! value errors as one line.

use super::options;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The `serve` options given as flags or `CORECHAT_*` variables, as text
/// (checked by clap against each option's type); `Config::resolve` merges
/// them with the file and the defaults. The clap arguments are generated
/// from the option table.
#[derive(Clone, Default)]
pub struct ServeArgs {
    /// TOML config file; keys are the option names in snake_case.
    pub config: Option<PathBuf>,
    pub(super) given: BTreeMap<&'static str, Given>,
}

#[derive(Clone)]
pub(super) struct Given {
    texts: Vec<String>,
    from_env: bool,
    secret: bool,
}

impl ServeArgs {
    /// The texts given for the option with this `Config` field name.
    pub(super) fn texts(&self, field: &str) -> Option<&[String]> {
        self.given.get(field).map(|g| g.texts.as_slice())
    }

    /// Whether the option with this `Config` field name was given as a
    /// flag or an environment variable.
    pub fn is_given(&self, field: &str) -> bool {
        self.given.contains_key(field)
    }
}

impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ServeArgs");
        s.field("config", &self.config);
        for (field, g) in &self.given {
            let source = if g.from_env { "env" } else { "flag" };
            if g.secret {
                s.field(field, &(source, "<redacted>"));
            } else {
                s.field(field, &(source, &g.texts));
            }
        }
        s.finish()
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs::default();
        args.update_from_arg_matches(m)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = m.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        for info in options() {
            if let Some(values) = m.get_many::<String>(info.field) {
                let given = Given {
                    texts: values.cloned().collect(),
                    from_env: m.value_source(info.field) == Some(ValueSource::EnvVariable),
                    secret: info.secret,
                };
                self.given.insert(info.field, given);
            }
        }
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = Arg::new("config")
            .long("config")
            .env("CORECHAT_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML config file; keys are the option names in snake_case");
        options()
            .iter()
            .fold(cmd.arg(config), |cmd, info| cmd.arg(info.arg()))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// A bad option value found by clap (a flag or `CORECHAT_*` variable that
/// is not a valid value of its type) as one line: `invalid --shards:
/// expected a whole number, got "four"`. None for other clap errors
/// (unknown flags, `--help`), which clap prints itself.
pub fn clap_error_line(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s
            .split([' ', '[', '=', '<'])
            .next()
            .unwrap_or_default()
            .to_owned(),
        _ => return None,
    };
    let reason = match std::error::Error::source(e) {
        Some(source) => source.to_string(),
        None => match e.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(v)) if v.is_empty() => "a value is required".to_owned(),
            Some(ContextValue::String(v)) => format!("{v:?} is not accepted"),
            _ => return None,
        },
    };
    Some(format!("invalid {arg}: {reason}"))
}
