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
fn fake_installer(root: &Path) -> impl Fn(&Path) -> io::Result<Output> + '_ {
    move |_installer| {
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
    let never = |_: &Path| -> io::Result<Output> { panic!("no installer runs on a read-only root") };
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
    let never = |_: &Path| -> io::Result<Output> { panic!("no installer") };
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
    let run = |p: &Path| {
        assert_eq!(p, root.join("usr/sbin/update-ca-certificates"));
        ran.set(ran.get() + 1);
        inner(p)
    };
    let env = env_map(setup(&root, PEM, true, &run).unwrap());
    assert_eq!(ran.get(), 1);
    assert_eq!(env["SSL_CERT_FILE"], SYSTEM_BUNDLE);
    assert_eq!(env["NODE_EXTRA_CA_CERTS"], CA_FILE);
    assert!(fs::read_to_string(root.join(ANCHOR)).unwrap().contains("REVGR0g="));

    // The next boot without interception removes it again.
    remove_stale(&root, &run);
    assert!(!root.join(ANCHOR).exists());
    assert_eq!(ran.get(), 2);
    assert!(!fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap().contains("REVGR0g="));
}

#[test]
fn writable_root_without_an_installer_fails_closed() {
    let root = tmp_root("rw-none");
    let never = |_: &Path| -> io::Result<Output> { panic!("nothing to run") };
    let err = setup(&root, PEM, true, &never).unwrap_err();
    assert!(matches!(err, CaError::NoInstaller));
    assert!(err.to_string().contains("update-ca-certificates"));
}

#[test]
fn installer_failure_and_missing_bundle_entry_fail_boot() {
    let root = tmp_root("rw-fail");
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/update-ca-certificates"), "").unwrap();
    let failing = |_: &Path| Ok(Output { status: ExitStatus::from_raw(1 << 8), stdout: vec![], stderr: b"boom".to_vec() });
    let err = setup(&root, PEM, true, &failing).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    let silent = |_: &Path| Ok(ok_output());
    let err = setup(&root, PEM, true, &silent).unwrap_err();
    assert!(matches!(err, CaError::NotInBundle { .. }), "{err}");
}
