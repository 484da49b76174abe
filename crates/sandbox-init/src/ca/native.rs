//! What Debian's `update-ca-certificates` does for one local certificate, done
//! in-process: the anchor under /usr/local/share/ca-certificates, its `.pem`
//! link in /etc/ssl/certs, its block in the bundle and its subject-hash link.
//!
//! Why: the script forks per certificate and takes 35–60 s under software
//! emulation; this takes milliseconds and leaves the same files, so a later
//! `update-ca-certificates` (an apt trigger, say) keeps the CA and agrees with
//! what we wrote. The hash comes from the image's own `openssl x509 -hash`, so
//! the link name is exactly what `openssl rehash` would pick.

use super::{read_bounded, within, write_err, CaError, Runner, ANCHOR, SYSTEM_BUNDLE};
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

const CERTS_DIR: &str = "/etc/ssl/certs";
/// The link update-ca-certificates makes for the anchor (named after the file).
const PEM_LINK: &str = "torkbot-sandbox.pem";
const ANCHOR_ABS: &str = "/usr/local/share/ca-certificates/torkbot-sandbox.crt";
const OPENSSL: [&str; 2] = ["usr/bin/openssl", "bin/openssl"];

/// True when the root has the layout this module reproduces: a Debian-style
/// bundle in /etc/ssl/certs.
pub fn recognised(root: &Path) -> bool {
    within(root, SYSTEM_BUNDLE).is_file() && within(root, CERTS_DIR).is_dir()
}

/// Installs `pem` (normalised, one certificate) as the sandbox CA, replacing
/// one a previous boot installed.
pub fn install(root: &Path, pem: &str, run: Runner) -> Result<(), CaError> {
    remove(root)?;
    let anchor = root.join(ANCHOR);
    if let Some(dir) = anchor.parent() {
        fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    }
    fs::write(&anchor, pem).map_err(|e| write_err(&anchor, e))?;
    let certs = within(root, CERTS_DIR);
    let link = certs.join(PEM_LINK);
    symlink(ANCHOR_ABS, &link).map_err(|e| write_err(&link, e))?;
    edit_bundle(root, |text| {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(pem);
        out
    })?;
    if let Some(hash) = subject_hash(root, &anchor, run) {
        link_hash(&certs, &hash)?;
    }
    Ok(())
}

/// Removes what `install` (or update-ca-certificates) left for the sandbox CA.
pub fn remove(root: &Path) -> Result<(), CaError> {
    let anchor = root.join(ANCHOR);
    let old = fs::read_to_string(&anchor).ok();
    let certs = within(root, CERTS_DIR);
    if let Ok(entries) = fs::read_dir(&certs) {
        for e in entries.flatten() {
            let target = fs::read_link(e.path()).ok();
            let ours = target.as_deref().is_some_and(|t| t == Path::new(PEM_LINK) || t == Path::new(ANCHOR_ABS));
            if ours {
                remove_file(&e.path())?;
            }
        }
    }
    if let Some(old) = old {
        edit_bundle(root, |text| text.replacen(&old, "", 1))?;
        remove_file(&anchor)?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), CaError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(write_err(path, e)),
        _ => Ok(()),
    }
}

/// Rewrites the bundle through a temporary file and a rename, as the script
/// does, so readers never see half a bundle.
fn edit_bundle(root: &Path, f: impl FnOnce(&str) -> String) -> Result<(), CaError> {
    let bundle = within(root, SYSTEM_BUNDLE);
    let text = read_bounded(&bundle).map_err(|e| write_err(&bundle, e))?;
    let next = f(&text);
    if next == text {
        return Ok(());
    }
    let tmp = bundle.with_extension("crt.sandbox-tmp");
    fs::write(&tmp, next).map_err(|e| write_err(&tmp, e))?;
    fs::rename(&tmp, &bundle).map_err(|e| write_err(&bundle, e))
}

/// `openssl x509 -hash` of the anchor, if the image has openssl (Debian's
/// ca-certificates depends on it). Without it the bundle still carries the CA;
/// only CApath lookups miss it.
fn subject_hash(root: &Path, anchor: &Path, run: Runner) -> Option<String> {
    let openssl = OPENSSL.iter().map(|p| root.join(p)).find(|p| p.is_file())?;
    let anchor_guest = format!("/{}", anchor.strip_prefix(root).ok()?.display());
    let out = run(&openssl, &["x509", "-hash", "-noout", "-in", &anchor_guest]).ok()?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// `<hash>.<n>` with the first free `n`, as `openssl rehash` numbers collisions.
fn link_hash(certs: &Path, hash: &str) -> Result<(), CaError> {
    for n in 0..16 {
        let link = certs.join(format!("{hash}.{n}"));
        if fs::symlink_metadata(&link).is_err() {
            return symlink(PEM_LINK, &link).map_err(|e| write_err(&link, e));
        }
    }
    Ok(())
}
