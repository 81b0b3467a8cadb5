//! What of a resolved configuration can only be checked on the machine:
//! the command is on PATH, the admin token file holds a token, the
//! certificate and key load. `corral run` (and `--check-config`) runs these
//! before anything binds, so a bad file exits 2 naming its setting and
//! starts nothing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, TlsFiles, invalid};
use crate::http::tls::{self, TlsError};

/// The shortest admin token accepted: a guessable one is no lock.
const MIN_TOKEN_LEN: usize = 16;

/// What the checks read and the manager keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The admin API's bearer token, when PUT/POST are allowed.
    pub token: Option<Vec<u8>>,
}

impl Config {
    /// Runs every check that reads the machine; `path_var` is `PATH`.
    pub fn check(&self, path_var: Option<&OsStr>) -> Result<Checked, ConfigError> {
        if let Some(cmd) = &self.command
            && resolve_program(&cmd[0], path_var).is_none()
        {
            return Err(invalid(
                "command",
                format!("`{}` not found in PATH", cmd[0]),
            ));
        }
        if let Some(files) = self.tls() {
            tls::load(files).map_err(|e| invalid(tls_field(&e, files), e.to_string()))?;
        }
        let token = self
            .admin_token_file
            .as_deref()
            .map(read_token)
            .transpose()?;
        Ok(Checked { token })
    }
}

fn read_token(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("admin-token-file", format!("{}: {e}", path.display())))?;
    let token = text.trim().as_bytes().to_vec();
    if token.len() < MIN_TOKEN_LEN {
        return Err(invalid(
            "admin-token-file",
            format!("the token needs at least {MIN_TOKEN_LEN} characters"),
        ));
    }
    Ok(token)
}

/// The setting whose file a TLS error is about.
fn tls_field(e: &TlsError, files: &TlsFiles) -> &'static str {
    let path = match e {
        TlsError::Read { path, .. }
        | TlsError::NoCertificate { path }
        | TlsError::Pem { path, .. } => Some(path),
        TlsError::Config(_) | TlsError::Verifier(_) => None,
    };
    match path {
        Some(p) if *p == files.certfile => "certfile",
        Some(p) if *p == files.keyfile => "keyfile",
        Some(_) => "ca-certs",
        None if matches!(e, TlsError::Verifier(_)) => "ca-certs",
        None => "keyfile",
    }
}

/// Finds `program` as `execvp` would, so a missing command is reported at
/// start-up rather than as a crash loop.
pub fn resolve_program(program: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_through_path() {
        assert_eq!(
            resolve_program("sh", Some(OsStr::new("/nonexistent:/bin"))),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("no-such-program-here", Some(OsStr::new("/bin"))),
            None
        );
        assert_eq!(
            resolve_program("/bin/sh", None),
            Some(PathBuf::from("/bin/sh"))
        );
        let plain =
            std::env::temp_dir().join(format!("corral-not-executable-{}", std::process::id()));
        std::fs::write(&plain, "data").unwrap();
        let found = resolve_program(plain.to_str().unwrap(), None);
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(found, None);
    }

    #[test]
    fn a_tls_error_names_the_file_it_is_about() {
        let files = TlsFiles {
            certfile: "/c.pem".into(),
            keyfile: "/k.pem".into(),
            ca_certs: Some("/ca.pem".into()),
            cert_reqs: crate::values::CertReqs::Required,
        };
        let about = |path: &str| {
            let e = TlsError::NoCertificate { path: path.into() };
            tls_field(&e, &files)
        };
        assert_eq!(about("/c.pem"), "certfile");
        assert_eq!(about("/k.pem"), "keyfile");
        assert_eq!(about("/ca.pem"), "ca-certs");
    }
}
