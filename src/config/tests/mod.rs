//! Configuration tests, one file per concern; the helpers they share are
//! here.

use super::*;
use clap::CommandFactory;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Tests that parse with clap read `CORECHAT_*` from the process
/// environment, so they hold this lock; env tests set variables under it.
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets env vars for the guard's lifetime (the caller holds ENV_LOCK).
struct EnvVars(Vec<&'static str>);
impl EnvVars {
    fn set(vars: &[(&'static str, &str)]) -> Self {
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        EnvVars(vars.iter().map(|(k, _)| *k).collect())
    }
}
impl Drop for EnvVars {
    fn drop(&mut self) {
        for k in &self.0 {
            std::env::remove_var(k);
        }
    }
}

/// A temp file removed on drop.
struct TempFile(PathBuf);
impl TempFile {
    fn new(contents: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "corechat-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    let argv = std::iter::once("corechat").chain(args.iter().copied());
    Cli::try_parse_from(argv).map(Cli::into_command)
}

fn serve_args(args: &[&str]) -> ServeArgs {
    match parse(args).unwrap() {
        Command::Serve(s) => s,
        other => panic!("expected serve, got {other:?}"),
    }
}

fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
    let _g = env_lock();
    Config::resolve(&serve_args(args))
}

fn err(args: &[&str]) -> String {
    resolve(args).unwrap_err().to_string()
}

mod commands;
mod dev_mode;
mod flags;
mod layers;
mod options;
