use super::*;
use std::collections::BTreeMap;
use std::io::Cursor;

/// A layer for tests: a tar built in memory, nothing to verify.
struct Plain(Cursor<Vec<u8>>);
impl Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
impl LayerStream for Plain {
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a str),
    FileOwned(&'a str, u32, u64, &'a str),
    Link(&'a str, &'a str),
    Sym(&'a str, &'a str),
    Xattr(&'a str, &'a str, &'a [u8]),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, mode, data) | E::FileOwned(p, mode, _, data) => {
                if let E::FileOwned(_, _, uid, _) = e {
                    h.set_uid(*uid);
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_bytes()).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Sym(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Xattr(p, name, value) => {
                let key = format!("SCHILY.xattr.{name}");
                b.append_pax_extensions([(key.as_str(), *value)]).unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(1);
                b.append_data(&mut h, p, &b"x"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Debug, PartialEq)]
struct Out {
    kind: char,
    mode: u32,
    uid: u64,
    data: String,
}

/// Runs the merge and returns (entries in stream order, path → entry, xattr fixes).
fn run(layers: Vec<Vec<u8>>) -> (Vec<String>, BTreeMap<String, Out>, Merged) {
    let open = |i: usize| -> Result<Box<dyn LayerStream>> { Ok(Box::new(Plain(Cursor::new(layers[i].clone())))) };
    let (merged, tar_bytes) = merge(layers.len(), &open, Vec::new(), &Reporter::silent(), Some("/srv/app")).unwrap();
    let mut order = Vec::new();
    let mut map = BTreeMap::new();
    let mut a = tar::Archive::new(Cursor::new(tar_bytes));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Link => 'h',
            tar::EntryType::Symlink => 'l',
            _ => '?',
        };
        let mut data = String::new();
        if kind == 'f' {
            e.read_to_string(&mut data).unwrap();
        } else if kind == 'h' || kind == 'l' {
            data = String::from_utf8(e.link_name_bytes().unwrap().into_owned()).unwrap();
        }
        order.push(path.clone());
        map.insert(path.trim_end_matches('/').to_string(), Out { kind, mode: h.mode().unwrap(), uid: h.uid().unwrap(), data });
    }
    (order, map, merged)
}

#[test]
fn whiteouts_delete_lower_paths_and_their_subtrees() {
    let bottom = layer(&[E::Dir("etc", 0o755), E::File("etc/keep", 0o644, "k"), E::File("etc/gone", 0o644, "g"), E::Dir("opt", 0o755), E::File("opt/a/b", 0o644, "deep")]);
    let top = layer(&[E::File("etc/.wh.gone", 0o644, ""), E::File(".wh.opt", 0o644, "")]);
    let (_, m, _) = run(vec![bottom, top]);
    assert!(m.contains_key("etc/keep"));
    assert!(!m.contains_key("etc/gone"));
    assert!(!m.keys().any(|k| k.starts_with("opt")), "{m:?}");
}

#[test]
fn opaque_directories_hide_only_lower_children() {
    let bottom = layer(&[E::Dir("d", 0o755), E::File("d/old", 0o644, "o"), E::File("other", 0o644, "x")]);
    let top = layer(&[E::Dir("d", 0o700), E::File("d/.wh..wh..opq", 0o644, ""), E::File("d/new", 0o644, "n")]);
    let (_, m, _) = run(vec![bottom, top]);
    assert!(m.contains_key("d/new"));
    assert!(!m.contains_key("d/old"));
    assert!(m.contains_key("other"));
    assert_eq!(m["d"].mode, 0o700, "the upper directory's metadata wins");
}

#[test]
fn upper_versions_win_and_non_directories_replace_subtrees() {
    let l0 = layer(&[E::Dir("x", 0o755), E::File("x/under", 0o644, "u"), E::File("f", 0o644, "old")]);
    let l1 = layer(&[E::File("x", 0o600, "now a file"), E::File("f", 0o4755, "new")]);
    let l2 = layer(&[E::Dir("x", 0o755), E::File("x/top", 0o644, "t")]);
    let (_, m, _) = run(vec![l0, l1, l2]);
    assert_eq!(m["f"].data, "new");
    assert_eq!(m["f"].mode, 0o4755, "setuid survives");
    assert_eq!(m["x"].kind, 'd');
    assert!(m.contains_key("x/top"));
    assert!(!m.contains_key("x/under"), "the middle layer's file hid the bottom directory's children");
}

#[test]
fn parents_come_first_and_take_lower_metadata() {
    let bottom = layer(&[E::Dir("usr", 0o750), E::Dir("usr/lib", 0o711)]);
    let top = layer(&[E::File("usr/lib/new.so", 0o644, "so")]);
    let (order, m, _) = run(vec![bottom, top]);
    let pos = |p: &str| order.iter().position(|o| o.trim_end_matches('/') == p).unwrap();
    assert!(pos("usr") < pos("usr/lib/new.so") && pos("usr/lib") < pos("usr/lib/new.so"));
    // Placeholders come first (0755), then the lower layer's real entries update them.
    let last_usr = order.iter().rposition(|o| o.trim_end_matches('/') == "usr").unwrap();
    assert!(last_usr > pos("usr/lib/new.so"));
    assert_eq!(m["usr"].mode, 0o750);
}

#[test]
fn hardlinks_share_the_target_inode_and_metadata() {
    let l = layer(&[E::FileOwned("bin/tool", 0o4750, 7, "binary"), E::Link("bin/alias", "bin/tool")]);
    let (_, m, _) = run(vec![l]);
    assert_eq!(m["bin/alias"].kind, 'h');
    assert_eq!(m["bin/alias"].data, "bin/tool");
    assert_eq!((m["bin/alias"].mode, m["bin/alias"].uid), (0o4750, 7));
}

#[test]
fn a_link_keeps_content_its_hidden_original_had() {
    let bottom = layer(&[E::File("a", 0o644, "shared"), E::Link("b", "a"), E::Link("c", "a")]);
    let top = layer(&[E::File("a", 0o644, "replaced")]);
    let (_, m, _) = run(vec![bottom, top]);
    assert_eq!(m["a"].data, "replaced");
    assert_eq!((m["b"].kind, m["b"].data.as_str()), ('f', "shared"));
    assert_eq!((m["c"].kind, m["c"].data.as_str()), ('h', "b"));
}

#[test]
fn xattrs_split_between_tar_and_debugfs() {
    let l = layer(&[E::Xattr("cap", "security.capability", b"\x01\x02"), E::Xattr("usr", "user.note", b"hi")]);
    let (_, _, merged) = run(vec![l]);
    assert_eq!(merged.xattrs, vec![XattrFix { path: b"usr".to_vec(), name: "user.note".into(), value: b"hi".to_vec() }]);
}

#[test]
fn keeps_the_visible_passwd() {
    let bottom = layer(&[E::Dir("etc", 0o755), E::File("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n")]);
    let top = layer(&[E::File("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")]);
    let (_, _, merged) = run(vec![bottom, top]);
    assert!(String::from_utf8(merged.passwd.unwrap()).unwrap().contains("app:x:1000"));
}

#[test]
fn symlinks_pass_through() {
    let (_, m, _) = run(vec![layer(&[E::Sym("lib", "usr/lib")])]);
    assert_eq!((m["lib"].kind, m["lib"].data.as_str()), ('l', "usr/lib"));
}

#[test]
fn adds_the_mount_points_init_needs_and_keeps_the_images_own() {
    let (_, m, _) = run(vec![layer(&[E::Dir("etc", 0o755), E::File("etc/hosts", 0o600, "mine"), E::Dir("tmp", 0o700)])]);
    for d in ["dev", "proc", "sys", "run", "mnt", "workspace", "var/tmp"] {
        assert_eq!(m[d].kind, 'd', "{d}");
    }
    assert_eq!(m["var/tmp"].mode, 0o1777);
    assert_eq!((m["etc/hosts"].data.as_str(), m["etc/hosts"].mode), ("mine", 0o600));
    assert_eq!(m["tmp"].mode, 0o700, "an image's own directory is not changed");
    assert_eq!(m["etc/resolv.conf"].data, "");
    assert_eq!((m["srv"].kind, m["srv/app"].kind), ('d', 'd'), "the config's WorkingDir exists");
}
