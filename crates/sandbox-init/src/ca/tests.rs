use super::*;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

const PEM: &str = "-----BEGIN CERTIFICATE-----\r\nMIIBszCCAVmgAwIBAgIUQUJD\r\nREVGR0g=\r\n-----END CERTIFICATE-----\r\n";

fn tmp_root(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sandbox-init-ca-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok_output() -> Output {
    Output { status: ExitStatus::from_raw(0), stdout: b"1 added".to_vec(), stderr: vec![] }
}

/// Stands in for update-ca-certificates: concatenates the local anchors into the system bundle.
fn fake_installer(root: &Path) -> impl Fn(&Path, &[&str]) -> io::Result<Output> + '_ {
    move |_installer, _args| {
        let mut bundle = String::from("-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n");
        let dir = root.join("usr/local/share/ca-certificates");
        for e in fs::read_dir(dir)?.flatten() {
            bundle.push_str(&fs::read_to_string(e.path())?);
        }
        fs::create_dir_all(root.join("etc/ssl/certs"))?;
        fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), bundle)?;
        Ok(ok_output())
    }
}

fn env_map(env: Vec<(String, String)>) -> std::collections::BTreeMap<String, String> {
    env.into_iter().collect()
}

#[test]
fn rejects_anything_but_one_certificate() {
    assert!(validate_pem(PEM).is_ok());
    assert!(validate_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    let with_key = format!("{PEM}-----BEGIN RSA PRIVATE KEY-----\nAA\n-----END RSA PRIVATE KEY-----\n");
    assert!(validate_pem(&with_key).is_err());
    assert!(validate_pem(&format!("{PEM}{PEM}")).is_err());
    assert!(validate_pem("hello").is_err());
    assert!(validate_pem(&"A".repeat(70 * 1024)).is_err());
    assert!(validate_pem("-----BEGIN CERTIFICATE-----\n\u{e9}\n-----END CERTIFICATE-----").is_err());
}

#[test]
fn read_only_root_gets_a_run_bundle_and_an_untouched_trust_store() {
    let root = tmp_root("ro");
    fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
    let system = "-----BEGIN CERTIFICATE-----\nIMAGEROOT\n-----END CERTIFICATE-----";
    fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), system).unwrap();
    let never = |_: &Path, _: &[&str]| -> io::Result<Output> { panic!("no installer runs on a read-only root") };
    let env = env_map(setup(&root, PEM, false, &never).unwrap());
    assert_eq!(env["SSL_CERT_FILE"], BUNDLE_FILE);
    assert_eq!(env["CURL_CA_BUNDLE"], BUNDLE_FILE);
    assert_eq!(env["REQUESTS_CA_BUNDLE"], BUNDLE_FILE);
    assert_eq!(env["GIT_SSL_CAINFO"], BUNDLE_FILE);
    assert_eq!(env["NODE_EXTRA_CA_CERTS"], CA_FILE);
    let ours = fs::read_to_string(root.join("run/sandbox/ca.crt")).unwrap();
    assert!(!ours.contains('\r'));
    assert!(ours.contains("REVGR0g="));
    let bundle = fs::read_to_string(root.join("run/sandbox/ca-bundle.crt")).unwrap();
    assert!(bundle.starts_with(system));
    assert!(bundle.ends_with(&ours));
    assert_eq!(fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap(), system);
    assert!(!root.join(ANCHOR).exists());
}

#[test]
fn read_only_root_without_a_bundle_trusts_only_our_ca() {
    let root = tmp_root("ro-empty");
    let never = |_: &Path, _: &[&str]| -> io::Result<Output> { panic!("no installer") };
    setup(&root, PEM, false, &never).unwrap();
    let bundle = fs::read_to_string(root.join("run/sandbox/ca-bundle.crt")).unwrap();
    assert_eq!(bundle, fs::read_to_string(root.join("run/sandbox/ca.crt")).unwrap());
}

#[test]
fn writable_root_installs_with_update_ca_certificates() {
    let root = tmp_root("rw");
    fs::create_dir_all(root.join("usr/sbin")).unwrap();
    fs::write(root.join("usr/sbin/update-ca-certificates"), "#!/bin/sh\n").unwrap();
    let ran = std::cell::Cell::new(0);
    let inner = fake_installer(&root);
    let run = |p: &Path, args: &[&str]| {
        assert_eq!(p, root.join("usr/sbin/update-ca-certificates"));
        ran.set(ran.get() + 1);
        inner(p, args)
    };
    let env = env_map(setup(&root, PEM, true, &run).unwrap());
    assert_eq!(ran.get(), 1);
    assert_eq!(env["SSL_CERT_FILE"], SYSTEM_BUNDLE);
    assert_eq!(env["NODE_EXTRA_CA_CERTS"], CA_FILE);
    assert!(fs::read_to_string(root.join(ANCHOR)).unwrap().contains("REVGR0g="));

    // The next boot without interception removes it again (the bundle now
    // exists, so natively).
    remove_stale(&root, &run);
    assert!(!root.join(ANCHOR).exists());
    assert!(!fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap().contains("REVGR0g="));
}

#[test]
fn writable_root_without_an_installer_fails_closed() {
    let root = tmp_root("rw-none");
    let never = |_: &Path, _: &[&str]| -> io::Result<Output> { panic!("nothing to run") };
    let err = setup(&root, PEM, true, &never).unwrap_err();
    assert!(matches!(err, CaError::NoInstaller));
    assert!(err.to_string().contains("update-ca-certificates"));
}

#[test]
fn installer_failure_and_missing_bundle_entry_fail_boot() {
    let root = tmp_root("rw-fail");
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/update-ca-certificates"), "").unwrap();
    let failing = |_: &Path, _: &[&str]| Ok(Output { status: ExitStatus::from_raw(1 << 8), stdout: vec![], stderr: b"boom".to_vec() });
    let err = setup(&root, PEM, true, &failing).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    let silent = |_: &Path, _: &[&str]| Ok(ok_output());
    let err = setup(&root, PEM, true, &silent).unwrap_err();
    assert!(matches!(err, CaError::NotInBundle { .. }), "{err}");
}

const PEM2: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUSElKSw==\n-----END CERTIFICATE-----\n";
const SYSTEM: &str = "-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n";

/// A Debian-style root: installer, bundle, certs dir, openssl.
fn debian_root(name: &str) -> PathBuf {
    let root = tmp_root(name);
    for d in ["usr/sbin", "usr/bin", "etc/ssl/certs"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("usr/sbin/update-ca-certificates"), "#!/bin/sh\n").unwrap();
    fs::write(root.join("usr/bin/openssl"), "").unwrap();
    fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), SYSTEM).unwrap();
    root
}

#[test]
fn debian_layout_is_installed_natively_and_replaced_cleanly() {
    let root = debian_root("native");
    let calls = std::cell::RefCell::new(Vec::<String>::new());
    let run = |p: &Path, args: &[&str]| {
        calls.borrow_mut().push(format!("{} {}", p.display(), args.join(" ")));
        Ok(Output { status: ExitStatus::from_raw(0), stdout: b"abcd1234\n".to_vec(), stderr: vec![] })
    };
    let certs = root.join("etc/ssl/certs");
    setup(&root, PEM, true, &run).unwrap();
    // Only openssl ran (for the hash), never the slow script.
    assert_eq!(calls.borrow().len(), 1);
    assert!(calls.borrow()[0].ends_with("x509 -hash -noout -in /usr/local/share/ca-certificates/torkbot-sandbox.crt"));
    assert_eq!(fs::read_link(certs.join("torkbot-sandbox.pem")).unwrap(), Path::new("/usr/local/share/ca-certificates/torkbot-sandbox.crt"));
    assert_eq!(fs::read_link(certs.join("abcd1234.0")).unwrap(), Path::new("torkbot-sandbox.pem"));
    let bundle = fs::read_to_string(certs.join("ca-certificates.crt")).unwrap();
    assert!(bundle.starts_with(SYSTEM) && bundle.contains("REVGR0g="));

    // A later boot's CA replaces it: one block, one hash link.
    setup(&root, PEM2, true, &run).unwrap();
    let bundle = fs::read_to_string(certs.join("ca-certificates.crt")).unwrap();
    assert!(!bundle.contains("REVGR0g=") && bundle.contains("SElKSw=="), "{bundle}");
    assert!(fs::symlink_metadata(certs.join("abcd1234.0")).is_ok() && fs::symlink_metadata(certs.join("abcd1234.1")).is_err());

    // A boot without interception leaves the trust store as the image had it.
    remove_stale(&root, &run);
    assert_eq!(fs::read_to_string(certs.join("ca-certificates.crt")).unwrap(), SYSTEM);
    let left: Vec<_> = fs::read_dir(&certs).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("ca-certificates.crt")]);
    assert!(!root.join(ANCHOR).exists());
}

#[test]
fn hash_collisions_take_the_next_number_and_missing_openssl_skips_the_link() {
    let root = debian_root("collide");
    let certs = root.join("etc/ssl/certs");
    std::os::unix::fs::symlink("other.pem", certs.join("abcd1234.0")).unwrap();
    let run = |_: &Path, _: &[&str]| Ok(Output { status: ExitStatus::from_raw(0), stdout: b"abcd1234\n".to_vec(), stderr: vec![] });
    setup(&root, PEM, true, &run).unwrap();
    assert_eq!(fs::read_link(certs.join("abcd1234.0")).unwrap(), Path::new("other.pem"));
    assert_eq!(fs::read_link(certs.join("abcd1234.1")).unwrap(), Path::new("torkbot-sandbox.pem"));

    let root = debian_root("no-openssl");
    fs::remove_file(root.join("usr/bin/openssl")).unwrap();
    let never = |_: &Path, _: &[&str]| -> io::Result<Output> { panic!("nothing to run") };
    setup(&root, PEM, true, &never).unwrap();
    assert!(fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap().contains("REVGR0g="));
}
