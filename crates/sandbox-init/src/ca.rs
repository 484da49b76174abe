//! The sandbox's HTTP interception CA inside the guest.
//!
//! The host sends only the public CA certificate. It is always written to
//! `/run/sandbox/ca.crt` (init's tmpfs). Then:
//! - read-only root: the image's trust store is left alone; a combined bundle
//!   (the image's CA bundle + ours) is written to `/run/sandbox/ca-bundle.crt`;
//! - writable root: the certificate is installed with the image's own
//!   mechanism (`update-ca-certificates`, as on Debian, Ubuntu and Alpine; on the
//!   Debian layout its steps are done in-process, see `native`); a
//!   writable root without it fails boot (closed), rather than leaving tools
//!   half-configured.
//!
//! Either way the usual environment variables point curl, git, Python and
//! Node at the right files.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Our files on init's /run tmpfs (paths inside the guest).
pub const CA_FILE: &str = "/run/sandbox/ca.crt";
pub const BUNDLE_FILE: &str = "/run/sandbox/ca-bundle.crt";
/// Where `update-ca-certificates` picks up local CAs; one fixed name, so a
/// persistent root holds at most one (the latest) sandbox CA.
const ANCHOR: &str = "usr/local/share/ca-certificates/torkbot-sandbox.crt";
/// The bundle `update-ca-certificates` writes.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const INSTALLERS: [&str; 4] = [
    "usr/sbin/update-ca-certificates",
    "usr/bin/update-ca-certificates",
    "sbin/update-ca-certificates",
    "bin/update-ca-certificates",
];
/// CA bundles of common distributions, first match wins (read-only roots).
const IMAGE_BUNDLES: [&str; 4] = [
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
    "etc/ssl/cert.pem",
    "etc/ssl/ca-bundle.pem",
];
const MAX_CERT_PEM: usize = 64 * 1024;
const MAX_BUNDLE: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CA certificate from the host is not a single PEM certificate: {0}")]
    BadCertificate(&'static str),
    #[error("write {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error(
        "the writable root filesystem has no supported trust-store installer (looked for update-ca-certificates in \
         /usr/sbin, /usr/bin, /sbin and /bin), so the sandbox CA cannot be installed; install the image's \
         ca-certificates package, or boot the image read-only (the CA then stays under /run/sandbox)"
    )]
    NoInstaller,
    #[error("{installer} failed ({status}): {output}")]
    InstallerFailed { installer: String, status: String, output: String },
    #[error("{installer} ran but {bundle} does not contain the sandbox CA")]
    NotInBundle { installer: String, bundle: String },
}

/// Runs a program of the root (absolute path inside it) with arguments and returns its output.
pub type Runner<'a> = &'a dyn Fn(&Path, &[&str]) -> io::Result<Output>;

mod native;

/// Checks that `pem` is exactly one PEM certificate: bounded, ASCII, no key material.
pub fn validate_pem(pem: &str) -> Result<(), CaError> {
    if pem.len() > MAX_CERT_PEM {
        return Err(CaError::BadCertificate("larger than 64 KiB"));
    }
    if !pem.bytes().all(|b| b == b'\n' || b == b'\r' || (0x20..0x7f).contains(&b)) {
        return Err(CaError::BadCertificate("not printable ASCII"));
    }
    if pem.contains("PRIVATE KEY") {
        return Err(CaError::BadCertificate("it contains a private key, which must never enter the guest"));
    }
    let trimmed = pem.trim();
    if !trimmed.starts_with("-----BEGIN CERTIFICATE-----")
        || !trimmed.ends_with("-----END CERTIFICATE-----")
        || trimmed.matches("-----BEGIN").count() != 1
    {
        return Err(CaError::BadCertificate("expected one -----BEGIN CERTIFICATE----- block"));
    }
    Ok(())
}

/// Installs or stages the CA under `root` (`/` in the guest); returns the
/// environment variables every process should get.
pub fn setup(root: &Path, pem: &str, writable: bool, run: Runner) -> Result<Vec<(String, String)>, CaError> {
    validate_pem(pem)?;
    let pem = format!("{}\n", pem.trim().replace("\r\n", "\n"));
    let run_dir = within(root, "/run/sandbox");
    fs::create_dir_all(&run_dir).map_err(|e| write_err(&run_dir, e))?;
    write(&within(root, CA_FILE), pem.as_bytes())?;

    let bundle = if writable {
        let installer = INSTALLERS.iter().map(|p| root.join(p)).find(|p| p.is_file()).ok_or(CaError::NoInstaller)?;
        if native::recognised(root) {
            native::install(root, &pem, run)?;
        } else {
            let anchor = root.join(ANCHOR);
            if let Some(dir) = anchor.parent() {
                fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
            }
            write(&anchor, pem.as_bytes())?;
            run_installer(root, &installer, run)?;
        }
        let system = within(root, SYSTEM_BUNDLE);
        let name = guest_path(root, &installer);
        let body = pem_body(&pem);
        match read_bounded(&system) {
            Ok(text) if text.contains(&body) => {}
            _ => return Err(CaError::NotInBundle { installer: name, bundle: SYSTEM_BUNDLE.into() }),
        }
        SYSTEM_BUNDLE
    } else {
        let mut combined = IMAGE_BUNDLES
            .iter()
            .map(|p| root.join(p))
            .find_map(|p| read_bounded(&p).ok())
            .unwrap_or_default();
        if !combined.is_empty() && !combined.ends_with('\n') {
            combined.push('\n');
        }
        combined.push_str(&pem);
        write(&within(root, BUNDLE_FILE), combined.as_bytes())?;
        BUNDLE_FILE
    };
    Ok(env_for(bundle))
}

/// On a writable root booted without interception, removes a CA a previous
/// boot installed (its key died with that boot). Best effort: a stale CA
/// whose key no longer exists signs nothing.
pub fn remove_stale(root: &Path, run: Runner) {
    if native::recognised(root) {
        let _ = native::remove(root);
        return;
    }
    let anchor = root.join(ANCHOR);
    if !anchor.is_file() || fs::remove_file(&anchor).is_err() {
        return;
    }
    if let Some(installer) = INSTALLERS.iter().map(|p| root.join(p)).find(|p| p.is_file()) {
        let _ = run_installer(root, &installer, run);
    }
}

/// The variables pointing TLS clients at `bundle` (and Node at our CA alone,
/// since NODE_EXTRA_CA_CERTS adds to Node's own roots).
pub fn env_for(bundle: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"]
        .iter()
        .map(|k| (k.to_string(), bundle.to_string()))
        .collect();
    env.push(("NODE_EXTRA_CA_CERTS".into(), CA_FILE.into()));
    env
}

fn run_installer(root: &Path, installer: &Path, run: Runner) -> Result<(), CaError> {
    let name = guest_path(root, installer);
    let out = run(installer, &[]).map_err(|e| CaError::InstallerFailed {
        installer: name.clone(),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        // Bounded: this ends up in a host-side error message.
        let tail: String = text.chars().rev().take(800).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(CaError::InstallerFailed { installer: name, status: out.status.to_string(), output: tail });
    }
    Ok(())
}

/// The base64 body of a PEM certificate, one line, to find it in a bundle.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect::<Vec<_>>().join("\n")
}

fn within(root: &Path, guest_abs: &str) -> PathBuf {
    root.join(guest_abs.trim_start_matches('/'))
}

fn guest_path(root: &Path, p: &Path) -> String {
    format!("/{}", p.strip_prefix(root).unwrap_or(p).display())
}

fn read_bounded(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    fs::File::open(path)?.take(MAX_BUNDLE).read_to_string(&mut text)?;
    Ok(text)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    fs::write(path, bytes).map_err(|e| write_err(path, e))
}

fn write_err(path: &Path, source: io::Error) -> CaError {
    CaError::Write { path: path.display().to_string(), source }
}

#[cfg(test)]
mod tests;
