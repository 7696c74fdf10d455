//! The development secret: with no `--jwt-secret` or `--jwt-public-key`,
//! the server signs guest tokens with a secret kept in
//! `<data_dir>/jwt-secret`, so that a restart does not log every guest out.
//! The file is created once (owner-only, written atomically) and reused.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the file in the data directory.
pub const FILE_NAME: &str = "jwt-secret";

/// Shortest secret accepted from the file (a generated one has 64 characters).
const MIN_LEN: usize = 32;

/// What happened to the secret file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFile {
    /// Read from an earlier run.
    Read(PathBuf),
    /// Created by this run.
    Created(PathBuf),
    /// The file was unusable (`reason`) and was replaced by a new secret.
    Replaced { path: PathBuf, reason: String },
}

impl SecretFile {
    pub fn path(&self) -> &Path {
        match self {
            SecretFile::Read(p) | SecretFile::Created(p) => p,
            SecretFile::Replaced { path, .. } => path,
        }
    }
}

/// Reads `<dir>/jwt-secret`, or creates it (and `dir`, owner-only) with a
/// fresh random secret. A file that is empty or not a usable secret is
/// replaced; group/other permission bits on it are removed.
pub fn load_or_create(dir: &Path) -> io::Result<(String, SecretFile)> {
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => {
            tighten_permissions(&path)?;
            match check(&bytes) {
                Ok(secret) => Ok((secret, SecretFile::Read(path))),
                Err(reason) => {
                    let secret = super::random_secret();
                    replace(dir, &path, &secret)?;
                    Ok((secret, SecretFile::Replaced { path, reason }))
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let secret = super::random_secret();
            match create_new(dir, &path, &secret) {
                Ok(()) => Ok((secret, SecretFile::Created(path))),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let bytes = fs::read(&path)?;
                    let secret = check(&bytes).map_err(io::Error::other)?;
                    Ok((secret, SecretFile::Read(path)))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The secret in the file, or why it cannot be used.
fn check(bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_string())?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err("it was empty".into());
    }
    if secret.len() < MIN_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "it does not hold a secret of at least {MIN_LEN} printable characters"
        ));
    }
    Ok(secret.to_owned())
}

fn tighten_permissions(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "development JWT secret was readable by others: setting its permissions to 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Writes `secret` to a new owner-only temporary file in `dir` and returns its path.
fn write_temp(dir: &Path, secret: &str) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f
        .write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn sync_dir(dir: &Path) {
    // Makes the new name durable; not all file systems allow it.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `path` atomically, failing with `AlreadyExists` if it exists:
/// a hard link never replaces an existing name, unlike a rename.
fn create_new(dir: &Path, path: &Path, secret: &str) -> io::Result<()> {
    let tmp = write_temp(dir, secret)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_dir(dir);
    Ok(())
}

/// Replaces `path` atomically.
fn replace(dir: &Path, path: &Path, secret: &str) -> io::Result<()> {
    let tmp = write_temp(dir, secret)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_once_then_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (a, first) = load_or_create(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        assert_eq!(first, SecretFile::Created(path.clone()));
        assert_eq!(a.len(), 64);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let (b, second) = load_or_create(&dir).unwrap();
        assert_eq!(a, b, "the same secret on the next start");
        assert_eq!(second, SecretFile::Read(path.clone()));
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{a}\n"));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn empty_or_corrupt_file_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        for (contents, reason) in [
            (&b""[..], "it was empty"),
            (b"  \n", "it was empty"),
            (b"short", "at least 32 printable"),
            (
                b"\xff\xfe not utf-8 at all, but long enough to count",
                "not text",
            ),
            (b"has spaces inside it so it is not a secret", "printable"),
        ] {
            fs::write(&path, contents).unwrap();
            let (secret, what) = load_or_create(tmp.path()).unwrap();
            match &what {
                SecretFile::Replaced { path: p, reason: r } => {
                    assert_eq!(p, &path);
                    assert!(r.contains(reason), "{r}");
                }
                other => panic!("expected Replaced, got {other:?}"),
            }
            assert_eq!(mode(&path), 0o600);
            let (again, what) = load_or_create(tmp.path()).unwrap();
            assert_eq!(again, secret);
            assert_eq!(what, SecretFile::Read(path.clone()));
        }
    }

    #[test]
    fn operator_written_file_is_kept_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let mine = "an-operator-chosen-secret-of-40-characters";
        fs::write(&path, format!("{mine}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (secret, what) = load_or_create(tmp.path()).unwrap();
        assert_eq!(secret, mine);
        assert_eq!(what, SecretFile::Read(path.clone()));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        assert!(load_or_create(&file.join("data")).is_err());
    }
}
