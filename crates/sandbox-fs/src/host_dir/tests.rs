//! The host-directory backend against a real directory: POSIX answers,
//! confinement (no symlink followed, nothing above the root), read-only.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp() -> Tmp {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("sandbox-fs-hostdir-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.join("root")).unwrap();
    Tmp(p)
}

fn serve(t: &Tmp, read_only: bool) -> HostDir {
    HostDir::open(t.0.join("root").to_str().unwrap(), read_only).unwrap()
}

fn lookup(fs: &HostDir, parent: u64, name: &str) -> Result<Entry, Errno> {
    match fs.answer(Op::Lookup { parent, name: name.into() })? {
        Reply::Entry(e) => Ok(e),
        r => panic!("lookup answered {r:?}"),
    }
}

fn create(fs: &HostDir, parent: u64, name: &str, mode: u32) -> (Entry, u64) {
    match fs.answer(Op::Create { parent, name: name.into(), mode, flags: libc::O_RDWR as u32 | libc::O_EXCL as u32 }).unwrap() {
        Reply::Created { entry, fh } => (entry, fh),
        r => panic!("create answered {r:?}"),
    }
}

fn errno(r: Result<Reply, Errno>) -> i32 {
    match r {
        Err(e) => e.0,
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[test]
fn files_are_created_written_read_and_keep_the_exact_mode() {
    let t = tmp();
    let fs = serve(&t, false);
    let (e, fh) = create(&fs, ROOT_ID, "a.txt", 0o640);
    assert_eq!(e.attr.mode, 0o100640);
    assert_eq!(fs.answer(Op::Write { node: e.node, fh, offset: 3, data: b"hello".to_vec() }).unwrap(), Reply::Written(5));
    assert_eq!(fs.answer(Op::Read { node: e.node, fh, offset: 0, size: 100 }).unwrap(), Reply::Data(b"\0\0\0hello".to_vec()));
    fs.answer(Op::Release { node: e.node, fh }).unwrap();
    assert_eq!(std::fs::read(t.0.join("root/a.txt")).unwrap(), b"\0\0\0hello");
    // Mode bits a umask would cut are kept exactly.
    let Reply::Entry(d) = fs.answer(Op::Mkdir { parent: ROOT_ID, name: "d".into(), mode: 0o777 }).unwrap() else { panic!() };
    assert_eq!(d.attr.mode, 0o040777);
    assert_eq!(std::fs::metadata(t.0.join("root/d")).unwrap().permissions().mode() & 0o7777, 0o777);
    let Reply::Attr(a) = fs.answer(Op::Setattr { node: e.node, fh: None, set: SetAttr { size: Some(2), mode: Some(0o600), mtime: Some(Time::Ms(1_500_000_000_250.0)), ..SetAttr::default() } }).unwrap() else { panic!() };
    assert_eq!((a.size, a.mode), (2, 0o100600));
    assert_eq!(a.mtime_ms, 1_500_000_000_250.0);
    assert_eq!(errno(fs.answer(Op::Setattr { node: e.node, fh: None, set: SetAttr { uid: Some(0), ..SetAttr::default() } })), libc::EPERM, "host owners are kept");
    assert_eq!(errno(fs.answer(Op::Mknod { parent: ROOT_ID, name: "p".into(), mode: libc::S_IFIFO | 0o644, rdev: 0 })), libc::EPERM);
    let Reply::Statfs(s) = fs.answer(Op::Statfs { node: ROOT_ID }).unwrap() else { panic!() };
    assert!(s.blocks > 0 && s.namelen > 0);
}

#[test]
fn names_move_with_renames_and_removed_files_stay_reachable_through_their_handle() {
    let t = tmp();
    let fs = serve(&t, false);
    let Reply::Entry(d) = fs.answer(Op::Mkdir { parent: ROOT_ID, name: "d".into(), mode: 0o755 }).unwrap() else { panic!() };
    let (f, fh) = create(&fs, d.node, "f", 0o644);
    fs.answer(Op::Rename { parent: ROOT_ID, name: "d".into(), new_parent: ROOT_ID, new_name: "e".into(), flags: 0 }).unwrap();
    assert!(t.0.join("root/e/f").exists());
    // The node id follows its file: a getattr by node reaches e/f.
    assert!(matches!(fs.answer(Op::Getattr { node: f.node, fh: None }).unwrap(), Reply::Attr(_)));
    let (_, g) = create(&fs, ROOT_ID, "g", 0o644);
    assert_eq!(errno(fs.answer(Op::Rename { parent: ROOT_ID, name: "g".into(), new_parent: d.node, new_name: "f".into(), flags: 1 })), libc::EEXIST);
    assert_eq!(errno(fs.answer(Op::Rename { parent: ROOT_ID, name: "e".into(), new_parent: d.node, new_name: "x".into(), flags: 0 })), libc::EINVAL, "into itself");
    assert_eq!(errno(fs.answer(Op::Rmdir { parent: ROOT_ID, name: "e".into() })), libc::ENOTEMPTY);
    fs.answer(Op::Unlink { parent: d.node, name: "f".into() }).unwrap();
    let Reply::Attr(a) = fs.answer(Op::Getattr { node: f.node, fh: None }).unwrap() else { panic!() };
    assert_eq!(a.nlink, 0, "unlinked, reached through the open handle");
    assert_eq!(fs.answer(Op::Write { node: f.node, fh, offset: 0, data: b"x".to_vec() }).unwrap(), Reply::Written(1));
    let Reply::Entry(l) = fs.answer(Op::Link { node: lookup(&fs, ROOT_ID, "g").unwrap().node, new_parent: ROOT_ID, new_name: "h".into() }).unwrap() else { panic!() };
    assert_eq!(l.attr.nlink, 2);
    fs.answer(Op::Release { node: 0, fh: g }).unwrap();
    assert_eq!(errno(fs.answer(Op::Read { node: 0, fh: g, offset: 0, size: 1 })), libc::EBADF);
}

#[test]
fn listings_are_snapshots_with_dot_entries_and_never_show_above_the_root() {
    let t = tmp();
    for n in ["x", "y", "z"] {
        std::fs::write(t.0.join("root").join(n), n).unwrap();
    }
    let fs = serve(&t, false);
    let Reply::Open { fh } = fs.answer(Op::Opendir { node: ROOT_ID }).unwrap() else { panic!() };
    std::fs::write(t.0.join("root/late"), "").unwrap();
    let Reply::Dir(all) = fs.answer(Op::Readdir { node: ROOT_ID, fh, offset: 0, size: 4096 }).unwrap() else { panic!() };
    let mut names: Vec<_> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(&names[..2], [".", ".."]);
    names.sort_unstable();
    assert_eq!(names, [".", "..", "x", "y", "z"]);
    let root_ino = std::fs::metadata(t.0.join("root")).unwrap().ino();
    assert_eq!((all[0].ino, all[1].ino), (root_ino, root_ino), "the root's .. is itself");
    let Reply::Dir(rest) = fs.answer(Op::Readdir { node: ROOT_ID, fh, offset: all[2].off, size: 4096 }).unwrap() else { panic!() };
    assert_eq!(rest.len(), 2);
    let Reply::Dir(page) = fs.answer(Op::Readdir { node: ROOT_ID, fh, offset: 0, size: 64 }).unwrap() else { panic!() };
    assert_eq!(page.len(), 2, "bounded by the guest's buffer");
    fs.answer(Op::Releasedir { node: ROOT_ID, fh }).unwrap();
}

#[test]
fn no_symbolic_link_is_followed_and_no_name_leaves_the_root() {
    let t = tmp();
    std::fs::write(t.0.join("secret"), "outside").unwrap();
    std::os::unix::fs::symlink("/etc", t.0.join("root/etc")).unwrap();
    std::os::unix::fs::symlink("../secret", t.0.join("root/up")).unwrap();
    std::fs::create_dir(t.0.join("root/real")).unwrap();
    let fs = serve(&t, false);
    for bad in ["..", ".", "", "a/b"] {
        assert_eq!(lookup(&fs, ROOT_ID, bad).unwrap_err(), Errno::EINVAL, "{bad:?}");
    }
    let etc = lookup(&fs, ROOT_ID, "etc").unwrap();
    assert_eq!(etc.attr.mode & S_IFMT, S_IFLNK, "a link is reported as itself");
    let refused = |e: Errno| e.0 == libc::ELOOP || e.0 == libc::ENOTDIR;
    assert!(refused(lookup(&fs, etc.node, "passwd").unwrap_err()), "never walked through");
    let up = lookup(&fs, ROOT_ID, "up").unwrap();
    assert_eq!(errno(fs.answer(Op::Open { node: up.node, flags: 0 })), libc::ELOOP);
    assert_eq!(fs.answer(Op::Readlink { node: up.node }).unwrap(), Reply::Data(b"../secret".to_vec()));
    assert_eq!(errno(fs.answer(Op::Setattr { node: up.node, fh: None, set: SetAttr { size: Some(0), ..SetAttr::default() } })), libc::ELOOP);
    assert_eq!(errno(fs.answer(Op::Setattr { node: up.node, fh: None, set: SetAttr { mode: Some(0o777), ..SetAttr::default() } })), libc::EOPNOTSUPP);
    assert!(refused(Errno(errno(fs.answer(Op::Opendir { node: etc.node })))));
    assert_eq!(std::fs::read_to_string(t.0.join("secret")).unwrap(), "outside");
    // A directory swapped for a link under a held node id: the walk refuses it.
    let real = lookup(&fs, ROOT_ID, "real").unwrap();
    std::fs::remove_dir(t.0.join("root/real")).unwrap();
    std::os::unix::fs::symlink("/", t.0.join("root/real")).unwrap();
    assert!(refused(lookup(&fs, real.node, "etc").unwrap_err()));
    assert!(refused(Errno(errno(fs.answer(Op::Create { parent: real.node, name: "x".into(), mode: 0o644, flags: 1 })))));
    assert!(!std::path::Path::new("/x").exists());
    // A guest symlink is stored as text.
    let Reply::Entry(s) = fs.answer(Op::Symlink { parent: ROOT_ID, name: "s".into(), target: "/etc/shadow".into() }).unwrap() else { panic!() };
    assert_eq!(s.attr.mode & S_IFMT, S_IFLNK);
    assert_eq!(std::fs::read_link(t.0.join("root/s")).unwrap(), PathBuf::from("/etc/shadow"));
}

#[test]
fn a_host_fifo_is_refused_without_blocking() {
    let t = tmp();
    let path = CString::new(t.0.join("root/fifo").to_str().unwrap()).unwrap();
    // SAFETY: `path` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    let fs = serve(&t, false);
    let f = lookup(&fs, ROOT_ID, "fifo").unwrap();
    assert_eq!(errno(fs.answer(Op::Open { node: f.node, flags: 0 })), libc::EPERM);
}

#[test]
fn read_only_refuses_every_change() {
    let t = tmp();
    std::fs::write(t.0.join("root/f"), "data").unwrap();
    let fs = serve(&t, true);
    let f = lookup(&fs, ROOT_ID, "f").unwrap();
    let Reply::Open { fh } = fs.answer(Op::Open { node: f.node, flags: 0 }).unwrap() else { panic!() };
    assert_eq!(fs.answer(Op::Read { node: f.node, fh, offset: 0, size: 10 }).unwrap(), Reply::Data(b"data".to_vec()));
    let rofs = libc::EROFS;
    assert_eq!(errno(fs.answer(Op::Write { node: f.node, fh, offset: 0, data: b"x".to_vec() })), rofs);
    assert_eq!(errno(fs.answer(Op::Open { node: f.node, flags: 1 })), rofs);
    assert_eq!(errno(fs.answer(Op::Unlink { parent: ROOT_ID, name: "f".into() })), rofs);
    assert_eq!(errno(fs.answer(Op::Mkdir { parent: ROOT_ID, name: "d".into(), mode: 0o755 })), rofs);
    assert_eq!(errno(fs.answer(Op::Create { parent: ROOT_ID, name: "n".into(), mode: 0o644, flags: 1 })), rofs);
    assert_eq!(errno(fs.answer(Op::Rename { parent: ROOT_ID, name: "f".into(), new_parent: ROOT_ID, new_name: "g".into(), flags: 0 })), rofs);
    assert_eq!(errno(fs.answer(Op::Setattr { node: f.node, fh: None, set: SetAttr { size: Some(0), ..SetAttr::default() } })), rofs);
    assert_eq!(std::fs::read_to_string(t.0.join("root/f")).unwrap(), "data");
}

#[test]
fn handles_are_bounded_and_forgotten_nodes_leave() {
    let t = tmp();
    std::fs::write(t.0.join("root/f"), "").unwrap();
    let fs = serve(&t, false);
    let f = lookup(&fs, ROOT_ID, "f").unwrap();
    let mut opened = 0;
    let last = loop {
        match fs.answer(Op::Open { node: f.node, flags: 0 }) {
            Ok(_) => opened += 1,
            Err(e) => break e,
        }
        assert!(opened <= MAX_HANDLES, "unbounded");
    };
    assert_eq!((opened, last), (MAX_HANDLES, Errno(libc::ENFILE)));
    assert_eq!(fs.nodes_held(), 2);
    fs.forget(f.node, 1);
    assert_eq!(fs.nodes_held(), 1);
}
