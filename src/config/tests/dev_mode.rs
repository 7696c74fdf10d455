//! Development mode: loopback and the kept secret.

use super::*;

#[test]
fn development_mode_listens_on_loopback_unless_told() {
    let cfg = resolve(&[]).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(!cfg.listen_explicit && cfg.random_secret);
    // A secret or a public key: the documented default.
    let cfg = resolve(&["--jwt-secret", "k"]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
    let key = TempFile::new("-----BEGIN PUBLIC KEY-----\n");
    let cfg = resolve(&["--jwt-public-key", key.0.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
    // An explicit listen address is kept, from any source.
    let cfg = resolve(&["--listen", "0.0.0.0:9000"]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:9000".parse().unwrap());
    assert!(cfg.listen_explicit && cfg.random_secret);
    let f = TempFile::new("listen = \"0.0.0.0:8080\"\n");
    let cfg = resolve(&["--config", f.0.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
    assert!(cfg.listen_explicit);
    let _g = env_lock();
    let _env = EnvVars::set(&[("CORECHAT_LISTEN", "0.0.0.0:8080")]);
    let cfg = Config::resolve(&serve_args(&[])).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8080".parse().unwrap());
}

#[test]
fn dev_secret_is_kept_in_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let dir_arg = dir.to_str().unwrap();
    let mut first = resolve(&["--data-dir", dir_arg]).unwrap();
    let per_process = first.jwt_secret.clone();
    let path = dir.join(secret::FILE_NAME);
    assert_eq!(
        first.keep_dev_secret().unwrap(),
        DevSecret::Kept(SecretFile::Created(path.clone()))
    );
    assert_ne!(first.jwt_secret, per_process);
    assert!(first.random_secret && first.guest);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The next start reads the same secret.
    let mut second = resolve(&["--data-dir", dir_arg, "--store", "memory"]).unwrap();
    assert_eq!(
        second.keep_dev_secret().unwrap(),
        DevSecret::Kept(SecretFile::Read(path.clone()))
    );
    assert_eq!(second.jwt_secret, first.jwt_secret);
    // An empty file is replaced, and says so.
    fs::write(&path, "").unwrap();
    let mut third = resolve(&["--data-dir", dir_arg]).unwrap();
    match third.keep_dev_secret().unwrap() {
        DevSecret::Kept(SecretFile::Replaced { reason, .. }) => assert_eq!(reason, "it was empty"),
        other => panic!("{other:?}"),
    }
    assert_ne!(third.jwt_secret, first.jwt_secret);
    assert_eq!(third.jwt_secret.as_ref().unwrap().len(), 64);
    // A configured secret leaves the file alone.
    let mut cfg = resolve(&["--data-dir", dir_arg, "--jwt-secret", "mine"]).unwrap();
    assert_eq!(cfg.keep_dev_secret().unwrap(), DevSecret::NotNeeded);
    assert_eq!(cfg.jwt_secret.as_deref(), Some("mine"));
}

#[test]
fn unusable_data_dir_falls_back_only_for_the_memory_store() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    fs::write(&blocker, "x").unwrap();
    let dir = blocker.join("data");
    let dir_arg = dir.to_str().unwrap();
    let mut cfg = resolve(&["--data-dir", dir_arg, "--store", "memory"]).unwrap();
    let random = cfg.jwt_secret.clone();
    match cfg.keep_dev_secret().unwrap() {
        DevSecret::Random { dir: d, reason } => {
            assert_eq!(d, dir);
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cfg.jwt_secret, random, "the per-process secret stays");
    let mut cfg = resolve(&["--data-dir", dir_arg]).unwrap();
    let e = cfg.keep_dev_secret().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "cannot keep the development JWT secret in {dir_arg}: "
        )),
        "{e}"
    );
    assert!(!e.contains('\n'));
}
