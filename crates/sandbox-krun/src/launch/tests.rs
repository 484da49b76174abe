use super::*;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sandbox-krun-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    fs::write(path, bytes).expect("write file");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A launch that passes validation; keeps the peer ends of its sockets.
struct Fixture {
    scratch: Scratch,
    launch: KrunLaunch,
    _peers: Vec<UnixStream>,
}

fn fixture() -> Fixture {
    let scratch = Scratch::new();
    let krunfw = scratch.path("libkrunfw.so.5");
    write_file(&krunfw, b"\x7fELF\x02\x01\x01\0not really a kernel", 0o644);
    let root = scratch.path("root");
    fs::create_dir(&root).unwrap();
    write_file(&root.join("sandbox-init"), b"#!/bin/true\n", 0o755);
    let disk = scratch.path("root.raw");
    write_file(&disk, &vec![0u8; 1 << 20], 0o644);

    let (ctl_host, ctl_peer) = UnixStream::pair().unwrap();
    let (net_host, net_peer) = UnixStream::pair().unwrap();
    let launch = KrunLaunch {
        libkrunfw_path: krunfw,
        cpus: 2,
        memory_mib: 512,
        root_fs_dir: root,
        disks: vec![KrunDisk {
            id: "rootfs".into(),
            path: disk,
            read_only: true,
            format: DiskFormat::Raw,
        }],
        control_port: ControlPort {
            name: "sandbox.control".into(),
            fd: OwnedFd::from(ctl_host),
        },
        net_fd: Some(OwnedFd::from(net_host)),
        net_mac: None,
        init_path: "/sandbox-init".into(),
        kernel_cmdline_extra: vec!["loglevel=4".into()],
        console_log: None,
        fs_mounts: Vec::new(),
        restore: None,
    };
    Fixture {
        scratch,
        launch,
        _peers: vec![ctl_peer, net_peer],
    }
}

#[test]
fn valid_launch_passes() {
    let f = fixture();
    validate(&f.launch).expect("valid launch");
}

#[test]
fn cpu_count_is_checked() {
    let mut f = fixture();
    f.launch.cpus = 0;
    assert!(matches!(
        validate(&f.launch),
        Err(KrunError::InvalidCpus { cpus: 0, .. })
    ));
    f.launch.cpus = MAX_CPUS + 1;
    assert!(matches!(
        validate(&f.launch),
        Err(KrunError::InvalidCpus { .. })
    ));
    f.launch.cpus = MAX_CPUS;
    validate(&f.launch).unwrap();
}

#[test]
fn memory_size_is_checked() {
    let mut f = fixture();
    f.launch.memory_mib = 64;
    let e = validate(&f.launch).unwrap_err();
    assert!(matches!(e, KrunError::MemoryTooSmall { mib: 64, min: 128 }));
    assert!(e.to_string().contains("at least 128 MiB"), "{e}");
    f.launch.memory_mib = MAX_MEMORY_MIB + 1;
    assert!(matches!(
        validate(&f.launch),
        Err(KrunError::MemoryTooLarge { .. })
    ));
}

#[test]
fn missing_kernel_library_is_reported() {
    let mut f = fixture();
    f.launch.libkrunfw_path = f.scratch.path("nope.so");
    let e = validate(&f.launch).unwrap_err();
    assert!(matches!(e, KrunError::KernelLibrary { .. }));
    assert!(e.to_string().contains("fetch-libkrunfw.sh"), "{e}");
}

#[test]
fn non_elf_kernel_library_is_rejected() {
    let mut f = fixture();
    let bogus = f.scratch.path("bogus.so");
    write_file(&bogus, b"hello world", 0o644);
    f.launch.libkrunfw_path = bogus;
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("not a shared library"), "{e}");
    f.launch.libkrunfw_path = f.scratch.path("root");
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn root_dir_and_init_are_checked() {
    let mut f = fixture();
    f.launch.root_fs_dir = f.scratch.path("missing-root");
    assert!(matches!(validate(&f.launch), Err(KrunError::RootFs { .. })));

    let mut f = fixture();
    for bad in [
        "sandbox-init",
        "/",
        "/../etc/passwd",
        "/a b",
        "/./sandbox-init",
    ] {
        f.launch.init_path = bad.into();
        assert!(
            matches!(validate(&f.launch), Err(KrunError::InitPath { .. })),
            "{bad:?} should be rejected"
        );
    }
    f.launch.init_path = "/missing-init".into();
    let e = validate(&f.launch).unwrap_err();
    assert!(
        e.to_string().contains("not found in the root directory"),
        "{e}"
    );

    let f2 = fixture();
    let mut launch = f2.launch;
    write_file(&launch.root_fs_dir.join("noexec"), b"x", 0o644);
    launch.init_path = "/noexec".into();
    let e = validate(&launch).unwrap_err();
    assert!(e.to_string().contains("not executable"), "{e}");
}

#[test]
fn cmdline_words_are_checked() {
    for bad in [
        "",
        "a b",
        "say=\"hi\"",
        "--",
        "init=/bin/sh",
        "root=/dev/vda",
        "KRUN_ENV=x",
        "tab\there",
        "é",
    ] {
        let mut f = fixture();
        f.launch.kernel_cmdline_extra = vec![bad.into()];
        assert!(
            matches!(validate(&f.launch), Err(KrunError::CmdlineArg { .. })),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn over_long_cmdline_is_rejected() {
    let mut f = fixture();
    f.launch.kernel_cmdline_extra = (0..200).map(|i| format!("sandbox.opt{i}=value")).collect();
    let e = validate(&f.launch).unwrap_err();
    match e {
        KrunError::CmdlineTooLong { len, max } => {
            assert!(len > max);
            assert_eq!(max, KERNEL_CMDLINE_MAX);
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn cmdline_preview_matches_libkrun_layout() {
    let f = fixture();
    let p = kernel_cmdline_preview(&f.launch);
    assert!(p.starts_with("reboot=k panic=-1"), "{p}");
    assert!(p.contains("rootfstype=virtiofs"), "{p}");
    assert!(
        p.contains(" loglevel=4 root=/dev/root init=/sandbox-init "),
        "{p}"
    );
    assert!(p.contains("KRUN_BOOT_START_NS=18446744073709551615"), "{p}");
    assert!(p.ends_with(" -- "), "{p}");
    assert!(p.len() < 300, "{} bytes: {p}", p.len());
}

#[test]
fn disks_are_checked() {
    let mut f = fixture();
    let d0 = f.launch.disks[0].clone();

    f.launch.disks = vec![d0.clone(), d0.clone()];
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("used by another disk"), "{e}");

    f.launch.disks = vec![KrunDisk {
        id: "x".repeat(21),
        ..d0.clone()
    }];
    assert!(matches!(validate(&f.launch), Err(KrunError::Disk { .. })));

    f.launch.disks = vec![KrunDisk {
        id: "bad id".into(),
        ..d0.clone()
    }];
    assert!(matches!(validate(&f.launch), Err(KrunError::Disk { .. })));

    f.launch.disks = vec![KrunDisk {
        path: f.scratch.path("missing.raw"),
        ..d0.clone()
    }];
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("cannot be read"), "{e}");

    f.launch.disks = vec![KrunDisk {
        format: DiskFormat::Qcow2,
        ..d0.clone()
    }];
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("not a qcow2 file"), "{e}");

    let q = f.scratch.path("data.qcow2");
    write_file(&q, b"QFI\xfb\0\0\0\x03", 0o644);
    f.launch.disks = vec![KrunDisk {
        id: "data".into(),
        path: q,
        read_only: false,
        format: DiskFormat::Qcow2,
    }];
    validate(&f.launch).unwrap();

    f.launch.disks = (0..=MAX_DISKS)
        .map(|i| KrunDisk {
            id: format!("d{i}"),
            ..d0.clone()
        })
        .collect();
    assert!(matches!(
        validate(&f.launch),
        Err(KrunError::TooManyDisks { .. })
    ));
}

#[test]
fn control_port_name_is_checked() {
    for bad in ["", "has space", "a/b"] {
        let mut f = fixture();
        f.launch.control_port.name = bad.into();
        assert!(
            matches!(validate(&f.launch), Err(KrunError::ControlPort(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn net_fd_must_be_a_unix_stream_socket() {
    let mut f = fixture();
    let (dgram, _peer) = UnixDatagram::pair().unwrap();
    f.launch.net_fd = Some(OwnedFd::from(dgram));
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("not a stream socket"), "{e}");

    let file = fs::File::open(&f.launch.libkrunfw_path).unwrap();
    f.launch.net_fd = Some(OwnedFd::from(file));
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");

    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    f.launch.net_fd = Some(OwnedFd::from(conn));
    let e = validate(&f.launch).unwrap_err();
    assert!(e.to_string().contains("not a Unix-domain socket"), "{e}");

    f.launch.net_fd = None;
    validate(&f.launch).unwrap();
}

#[test]
fn guest_mac_must_be_unicast() {
    let mut f = fixture();
    f.launch.net_mac = Some([0x01, 0, 0x5e, 0, 0, 1]);
    assert!(matches!(validate(&f.launch), Err(KrunError::NetFd(_))));
    f.launch.net_mac = Some([0x02, 0, 0, 0, 0, 1]);
    validate(&f.launch).unwrap();
}

#[test]
fn plan_reflects_the_launch_and_keeps_tsi_off() {
    let f = fixture();
    let ctl = f.launch.control_port.fd.as_raw_fd();
    let prepared = prepare(f.launch).expect("prepare");
    let plan = prepared.plan();
    assert_eq!(plan.vcpus, 2);
    assert_eq!(plan.memory_mib, 512);
    assert_eq!(plan.init_path, "/sandbox-init");
    assert_eq!(plan.kernel_cmdline.as_deref(), Some("loglevel=4"));
    assert_eq!(plan.root_tag, "/dev/root");
    assert_eq!(plan.root_dir, f.scratch.path("root"));
    assert_eq!(
        plan.disks,
        vec![PlannedDisk {
            id: "rootfs".into(),
            path: f.scratch.path("root.raw"),
            read_only: true,
            format: DiskFormat::Raw,
        }]
    );
    assert_eq!(plan.control_port_name, "sandbox.control");
    assert_eq!(plan.control_port_fd, ctl);
    assert_eq!(plan.net_mac, Some(DEFAULT_GUEST_MAC));
    assert_eq!(plan.console_output, PathBuf::from("/dev/null"));
    assert!(!plan.tsi);
    assert!(!plan.balloon);
    assert!(!plan.msb_metrics);
    assert!(plan.full_cmdline_preview.len() <= KERNEL_CMDLINE_MAX);
}

#[test]
fn plan_without_network_has_no_net_device() {
    let mut f = fixture();
    f.launch.net_fd = None;
    f.launch.net_mac = Some([0x02, 0, 0, 0, 0, 9]);
    f.launch.kernel_cmdline_extra.clear();
    let prepared = prepare(f.launch).unwrap();
    assert_eq!(prepared.plan().net_mac, None);
    assert_eq!(prepared.plan().kernel_cmdline, None);
}

#[test]
fn prepare_rejects_invalid_launch() {
    let mut f = fixture();
    f.launch.cpus = 0;
    assert!(matches!(
        prepare(f.launch),
        Err(KrunError::InvalidCpus { .. })
    ));
}

/// msb_krun's `VmBuilder::build` runs libkrun's configuration checks and
/// creates the devices (opens the disk images, wraps the network socket)
/// without touching KVM or libkrunfw: the translated configuration must pass.
#[test]
fn libkrun_accepts_the_translated_configuration() {
    let mut f = fixture();
    let data = f.scratch.path("data.raw");
    write_file(&data, &vec![0u8; 1 << 20], 0o644);
    f.launch.disks.push(KrunDisk {
        id: "data".into(),
        path: data,
        read_only: false,
        format: DiskFormat::Raw,
    });
    f.launch.console_log = Some(f.scratch.path("console.log"));
    let built = prepare(f.launch).unwrap().build();
    assert!(built.is_ok(), "{:?}", built.err());
}

#[test]
fn libkrun_without_network_also_builds() {
    let mut f = fixture();
    f.launch.net_fd = None;
    f.launch.disks.clear();
    prepare(f.launch).unwrap().build().unwrap();
}

/// A filesystem answering nothing: enough for libkrun to build the device.
struct NoFs;
impl msb_krun::backends::fs::DynFileSystem for NoFs {}

#[test]
fn custom_filesystems_become_virtio_fs_devices_libkrun_accepts() {
    let mut f = fixture();
    f.launch.fs_mounts = vec![
        KrunFsMount { tag: "sandbox-fs-0".into(), fs: Box::new(NoFs) },
        KrunFsMount { tag: "sandbox-fs-1".into(), fs: Box::new(NoFs) },
    ];
    let prepared = prepare(f.launch).unwrap();
    assert_eq!(prepared.plan().fs_tags, ["sandbox-fs-0", "sandbox-fs-1"]);
    let built = prepared.build();
    assert!(built.is_ok(), "{:?}", built.err());
}

#[test]
fn custom_filesystem_tags_are_checked() {
    for tags in [vec!["bad tag"], vec![""], vec!["x"; 2], vec!["t".repeat(37).leak() as &str]] {
        let mut f = fixture();
        f.launch.fs_mounts = tags.iter().map(|t| KrunFsMount { tag: t.to_string(), fs: Box::new(NoFs) }).collect();
        assert!(matches!(validate(&f.launch), Err(KrunError::FsTag(_))), "{tags:?}");
    }
}

#[test]
fn a_restore_reads_the_snapshot_before_anything_is_built() {
    let mut f = fixture();
    let snap = f.scratch.path("snap");
    fs::create_dir(&snap).unwrap();
    f.launch.restore = Some(KrunRestore { dir: snap.clone(), memory: Default::default() });
    match prepare(f.launch) {
        Err(KrunError::Snapshot(e)) => assert!(e.contains("ram"), "{e}"),
        Err(e) => panic!("not a snapshot error: {e}"),
        Ok(_) => panic!("an empty snapshot directory was accepted"),
    }
}

#[test]
fn a_boot_is_not_a_restore() {
    let f = fixture();
    assert!(!prepare(f.launch).unwrap().restores());
}

#[test]
fn checkpoints_of_a_vm_that_is_not_running_are_typed_errors() {
    let mut f = fixture();
    f.launch.net_fd = None;
    let built = prepare(f.launch).unwrap().build().unwrap();
    let control = built.control();
    let missing = f.scratch.path("no-such-dir");
    assert!(matches!(crate::checkpoint(&control, &missing), Err(KrunError::Snapshot(e)) if e.contains("does not exist")));
    let dir = f.scratch.path("snap");
    fs::create_dir(&dir).unwrap();
    // Before `enter()` there is no VMM to pause: libkrun says so, nothing is written.
    assert!(matches!(crate::checkpoint(&control, &dir), Err(KrunError::Vmm(_))));
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}
