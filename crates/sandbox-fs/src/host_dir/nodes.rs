//! Node ids the guest kernel holds, mapped to paths relative to the mount's
//! root ("" is the root). The same rules as the JavaScript mounts' table
//! (`src/fs/nodes.ts`), so a host directory behaves alike served either way:
//! a lookup of a path returns the same id while the kernel remembers it;
//! a rename moves every id under the old path; unlink, rmdir and a rename
//! over an existing name detach the ids there (their open handles keep
//! working, path operations fail ENOENT); FORGET drops them. Paths sort so
//! that a directory's subtree is one range of the map.

use crate::Errno;
use std::collections::{BTreeMap, HashMap};

pub const ROOT: u64 = 1;

struct Record {
    /// `None`: removed (or replaced) while the kernel still held the id.
    path: Option<String>,
    refs: u64,
}

pub struct Nodes {
    by_id: HashMap<u64, Record>,
    by_path: BTreeMap<String, u64>,
    next: u64,
    max: usize,
}

/// `parent/name`, relative to the root.
pub fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// The keys strictly below `path` ("a/b/…"): from "a/b/" up to, not including, "a/b0".
fn below(path: &str) -> (String, String) {
    (format!("{path}/"), format!("{path}0"))
}

impl Nodes {
    /// A table holding at most `max` ids besides the root.
    pub fn new(max: usize) -> Self {
        let mut by_id = HashMap::new();
        by_id.insert(ROOT, Record { path: Some(String::new()), refs: u64::MAX });
        let mut by_path = BTreeMap::new();
        by_path.insert(String::new(), ROOT);
        Self { by_id, by_path, next: ROOT + 1, max }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The current path of `id`: ESTALE when unknown, ENOENT when removed.
    pub fn path(&self, id: u64) -> Result<&str, Errno> {
        match self.by_id.get(&id) {
            None => Err(Errno(libc::ESTALE)),
            Some(Record { path: None, .. }) => Err(Errno::ENOENT),
            Some(Record { path: Some(p), .. }) => Ok(p),
        }
    }

    pub fn is_detached(&self, id: u64) -> bool {
        matches!(self.by_id.get(&id), Some(Record { path: None, .. }))
    }

    /// The id for `path`, taking one kernel reference; ENFILE when the table is full.
    pub fn lookup(&mut self, path: &str) -> Result<u64, Errno> {
        if let Some(&id) = self.by_path.get(path) {
            if let Some(rec) = self.by_id.get_mut(&id) {
                rec.refs = rec.refs.saturating_add(1);
            }
            return Ok(id);
        }
        if self.by_id.len() > self.max {
            return Err(Errno(libc::ENFILE));
        }
        let id = self.next;
        self.next += 1;
        self.by_id.insert(id, Record { path: Some(path.to_owned()), refs: 1 });
        self.by_path.insert(path.to_owned(), id);
        Ok(id)
    }

    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT {
            return;
        }
        let Some(rec) = self.by_id.get_mut(&id) else { return };
        rec.refs = rec.refs.saturating_sub(count);
        if rec.refs > 0 {
            return;
        }
        if let Some(Record { path: Some(p), .. }) = self.by_id.remove(&id) {
            if self.by_path.get(&p) == Some(&id) {
                self.by_path.remove(&p);
            }
        }
    }

    /// `path` and everything below it no longer name what their ids named.
    pub fn detach(&mut self, path: &str) {
        if path.is_empty() {
            return; // the root is never removed
        }
        for (_, id) in self.take(path) {
            if let Some(rec) = self.by_id.get_mut(&id) {
                rec.path = None;
            }
        }
    }

    /// `from` (and its subtree) is now at `to`; what was at `to` is detached.
    pub fn rename(&mut self, from: &str, to: &str) {
        if from.is_empty() || to.is_empty() || from == to {
            return;
        }
        let moved = self.take(from);
        self.detach(to);
        self.place(from, to, moved);
    }

    /// `a` and `b` swapped places (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a: &str, b: &str) {
        if a.is_empty() || b.is_empty() || a == b {
            return;
        }
        let at_a = self.take(a);
        let at_b = self.take(b);
        self.place(a, b, at_a);
        self.place(b, a, at_b);
    }

    /// Removes `path` and its subtree from the path index: (old path, id).
    fn take(&mut self, path: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Some(id) = self.by_path.remove(path) {
            out.push((path.to_owned(), id));
        }
        let (lo, hi) = below(path);
        let keys: Vec<String> = self.by_path.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in keys {
            if let Some(id) = self.by_path.remove(&k) {
                out.push((k, id));
            }
        }
        out
    }

    /// Puts ids taken from under `from` back under `to`.
    fn place(&mut self, from: &str, to: &str, moved: Vec<(String, u64)>) {
        for (old, id) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(rec) = self.by_id.get_mut(&id) {
                rec.path = Some(new.clone());
            }
            self.by_path.insert(new, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_move_subtrees_and_detach_what_they_replace() {
        let mut n = Nodes::new(100);
        let a = n.lookup("a").unwrap();
        let ab = n.lookup("a/b").unwrap();
        let abc = n.lookup("a/b/c").unwrap();
        let a0 = n.lookup("a0").unwrap(); // sorts right after "a/…": must not move with "a"
        let x = n.lookup("x").unwrap();
        assert_eq!(n.lookup("a/b").unwrap(), ab, "same path, same id");
        n.rename("a", "x");
        assert_eq!(n.path(a).unwrap(), "x");
        assert_eq!(n.path(abc).unwrap(), "x/b/c");
        assert_eq!(n.path(a0).unwrap(), "a0");
        assert_eq!(n.path(x), Err(Errno::ENOENT), "replaced by the rename");
        n.exchange("x/b", "a0");
        assert_eq!(n.path(ab).unwrap(), "a0");
        assert_eq!(n.path(abc).unwrap(), "a0/c");
        assert_eq!(n.path(a0).unwrap(), "x/b");
        n.detach("a0");
        assert!(n.is_detached(ab) && n.is_detached(abc));
        assert_eq!(n.path(a).unwrap(), "x");
    }

    #[test]
    fn forgotten_ids_leave_and_the_table_is_bounded() {
        let mut n = Nodes::new(2);
        let a = n.lookup("a").unwrap();
        n.lookup("a").unwrap();
        n.forget(a, 1);
        assert_eq!(n.path(a).unwrap(), "a", "one reference left");
        n.forget(a, 1);
        assert_eq!(n.path(a), Err(Errno(libc::ESTALE)));
        n.lookup("b").unwrap();
        n.lookup("c").unwrap();
        assert_eq!(n.lookup("d"), Err(Errno(libc::ENFILE)));
        n.forget(ROOT, 5);
        assert_eq!(n.path(ROOT).unwrap(), "");
        let b = n.lookup("b").unwrap();
        n.detach("b");
        n.forget(b, 2);
        let b2 = n.lookup("b").unwrap();
        assert_ne!(b, b2, "a new file at a removed path is a new node");
    }
}
