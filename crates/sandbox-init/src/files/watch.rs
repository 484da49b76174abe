//! `lane.fs.watch`: one inotify instance per watch, read in the control loop.
//! Events wait in a bounded queue (a repeat of a path's last pending event is
//! dropped as a duplicate); what does not fit is reported as one `overflow`,
//! like the kernel's own IN_Q_OVERFLOW, and leaves the guest only within the
//! credit the host granted. A recursive watch adds a watch for every
//! directory made (or moved) below it later, and reports what that directory
//! already holds by scanning it: entries made before its watch was added.

use sandbox_protocol::{self as proto, WatchEvent, WatchEventType, WatchEvents, WatchStart};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

type Errno = i32;

/// Directories one recursive watch may watch; beyond, events are lost (reported as overflow).
const MAX_DIRS: usize = 8192;
/// Entries one scan of a new directory tree looks at before it gives up (overflow).
const MAX_SCAN: usize = 65536;
/// Reads of the inotify descriptor per wake-up, so one busy watch cannot hold the loop.
const READS_PER_WAKE: usize = 8;

const EVENTS: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_EXCL_UNLINK;

pub struct Watch {
    fd: File,
    root: String,
    recursive: bool,
    root_wd: i32,
    /// Watched directory of each watch descriptor.
    dirs: HashMap<i32, String>,
    credit: u64,
    max_queued: usize,
    queue: VecDeque<(WatchEventType, String, u64)>,
    /// The last pending event of each path (its kind and sequence number).
    last: HashMap<String, (WatchEventType, u64)>,
    seq: u64,
    /// The watched path itself went away: end once the queue is delivered.
    gone: bool,
    buf: Vec<u8>,
}

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

impl Watch {
    pub fn start(req: &WatchStart) -> Result<Watch, Errno> {
        let root = req.path.as_str();
        if !root.starts_with('/') || root.contains('\0') {
            return Err(libc::EINVAL);
        }
        let root = if root.len() > 1 { root.trim_end_matches('/') } else { root };
        let root = if root.is_empty() { "/" } else { root };
        // SAFETY: inotify_init1 takes flags only; a new descriptor is returned and owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
        let fd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        let mut w = Watch {
            fd,
            root: root.to_string(),
            recursive: req.recursive,
            root_wd: -1,
            dirs: HashMap::new(),
            credit: u64::from(req.window.get()),
            max_queued: req.max_queued.get() as usize,
            queue: VecDeque::new(),
            last: HashMap::new(),
            seq: 0,
            gone: false,
            buf: vec![0u8; 64 * 1024],
        };
        w.root_wd = w.add(root, EVENTS)?;
        let is_dir = std::fs::metadata(root).map_err(errno)?.is_dir();
        if w.recursive && is_dir {
            w.add_tree(root, false);
        }
        Ok(w)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn add(&mut self, path: &str, mask: u32) -> Result<i32, Errno> {
        let c = std::ffi::CString::new(path).map_err(|_| libc::EINVAL)?;
        // SAFETY: `c` is a NUL-terminated path alive for the call; the descriptor is ours.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        self.dirs.insert(wd, path.to_string());
        Ok(wd)
    }

    /// Watches the directories below `top` (and `top` itself unless it is the
    /// root); with `report`, every entry found is reported as created.
    fn add_tree(&mut self, top: &str, report: bool) {
        let mut stack = vec![top.to_string()];
        let mut scanned = 0usize;
        while let Some(dir) = stack.pop() {
            if dir != self.root {
                if self.dirs.len() >= MAX_DIRS {
                    self.overflow();
                    return;
                }
                // Gone already, or not a directory any more: its parent reports that.
                if self.add(&dir, EVENTS | libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW).is_err() {
                    continue;
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                scanned += 1;
                if scanned > MAX_SCAN {
                    self.overflow();
                    return;
                }
                let path = join(&dir, &e.file_name().to_string_lossy());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path.clone());
                }
                if report {
                    self.push(WatchEventType::Create, path);
                }
            }
        }
    }

    /// Stops watching `dir` and everything below it (it was moved away).
    fn forget_tree(&mut self, dir: &str) {
        let prefix = join(dir, "");
        let gone: Vec<i32> = self.dirs.iter().filter(|(_, p)| *p == dir || p.starts_with(&prefix)).map(|(&wd, _)| wd).collect();
        for wd in gone {
            self.dirs.remove(&wd);
            // SAFETY: plain integers; a stale wd only makes the call fail.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
    }

    fn push(&mut self, kind: WatchEventType, path: String) {
        if self.last.get(&path).is_some_and(|&(k, _)| k == kind) {
            return;
        }
        if kind != WatchEventType::Overflow && self.queue.len() >= self.max_queued {
            self.overflow();
            return;
        }
        self.seq += 1;
        self.last.insert(path.clone(), (kind, self.seq));
        self.queue.push_back((kind, path, self.seq));
    }

    /// Events were lost: one pending overflow says so (the queue may go one over its bound for it).
    fn overflow(&mut self) {
        let root = self.root.clone();
        self.push(WatchEventType::Overflow, root);
    }

    /// Reads what the kernel has for this watch into the queue.
    pub fn read(&mut self) {
        for _ in 0..READS_PER_WAKE {
            let n = match self.fd.read(&mut self.buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let buf = std::mem::take(&mut self.buf);
            self.parse(&buf[..n]);
            self.buf = buf;
        }
    }

    fn parse(&mut self, mut b: &[u8]) {
        const HEAD: usize = 16;
        while b.len() >= HEAD {
            let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
            let Some(name) = b.get(HEAD..HEAD + len) else { return };
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            let name = String::from_utf8_lossy(name).into_owned();
            self.event(wd, mask, name);
            b = &b[HEAD + len..];
        }
    }

    fn event(&mut self, wd: i32, mask: u32, name: String) {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            self.overflow();
            return;
        }
        let is_root = wd == self.root_wd;
        if mask & libc::IN_IGNORED != 0 {
            self.dirs.remove(&wd);
            if is_root && !self.gone {
                self.gone = true;
                self.push(WatchEventType::Delete, self.root.clone());
            }
            return;
        }
        let Some(dir) = self.dirs.get(&wd).cloned() else { return };
        if name.is_empty() {
            // An event of the watched directory itself: only the root's count
            // (a subdirectory's are reported by its parent, with its name).
            if !is_root {
                return;
            }
            if mask & libc::IN_DELETE_SELF != 0 {
                self.gone = true;
                self.push(WatchEventType::Delete, dir);
            } else if mask & libc::IN_MOVE_SELF != 0 {
                self.gone = true;
                self.push(WatchEventType::Rename, dir);
            } else if mask & (libc::IN_MODIFY | libc::IN_ATTRIB) != 0 {
                self.push(WatchEventType::Modify, dir);
            }
            return;
        }
        let path = join(&dir, &name);
        let is_dir = mask & libc::IN_ISDIR != 0;
        if mask & libc::IN_CREATE != 0 {
            self.push(WatchEventType::Create, path.clone());
            if self.recursive && is_dir {
                self.add_tree(&path, true);
            }
        } else if mask & libc::IN_MOVED_TO != 0 {
            self.push(WatchEventType::Rename, path.clone());
            if self.recursive && is_dir {
                self.add_tree(&path, true);
            }
        } else if mask & libc::IN_MOVED_FROM != 0 {
            self.push(WatchEventType::Rename, path.clone());
            if self.recursive && is_dir {
                self.forget_tree(&path);
            }
        } else if mask & libc::IN_DELETE != 0 {
            self.push(WatchEventType::Delete, path);
        } else if mask & (libc::IN_MODIFY | libc::IN_ATTRIB) != 0 {
            self.push(WatchEventType::Modify, path);
        }
    }

    pub fn grant(&mut self, events: u32) {
        self.credit = self.credit.saturating_add(u64::from(events));
    }

    /// The next frame of events the credit allows, if any.
    pub fn take_batch(&mut self) -> Option<WatchEvents> {
        let n = (self.credit.min(proto::MAX_WATCH_BATCH as u64) as usize).min(self.queue.len());
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let Some((kind, path, seq)) = self.queue.pop_front() else { break };
            if self.last.get(&path).is_some_and(|&(_, s)| s == seq) {
                self.last.remove(&path);
            }
            // A path longer than a guest path can be is lost: say so.
            match proto::Text::new(path) {
                Some(path) => events.push(WatchEvent { kind, path }),
                None => self.overflow(),
            }
        }
        if events.is_empty() {
            return None;
        }
        self.credit -= events.len() as u64;
        Some(WatchEvents { events })
    }

    /// The watched path went away and everything about it was delivered.
    pub fn finished(&self) -> bool {
        self.gone && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn start(dir: &str, recursive: bool, window: u32, max: u32) -> Watch {
        let req: WatchStart =
            serde_json::from_value(serde_json::json!({"path": dir, "recursive": recursive, "window": window, "maxQueued": max})).unwrap();
        Watch::start(&req).unwrap()
    }

    fn drain(w: &mut Watch) -> Vec<(WatchEventType, String)> {
        w.read();
        let mut out = Vec::new();
        while let Some(b) = w.take_batch() {
            out.extend(b.events.into_iter().map(|e| (e.kind, e.path.to_string())));
        }
        out
    }

    fn tmp(name: &str) -> String {
        let d = std::env::temp_dir().join(format!("sandbox-init-watch-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d.to_str().unwrap().to_string()
    }

    #[test]
    fn reports_changes_in_a_recursive_tree_and_coalesces_repeats() {
        let d = tmp("tree");
        let mut w = start(&d, true, 1000, 1000);
        fs::create_dir_all(format!("{d}/a/b")).unwrap();
        fs::write(format!("{d}/a/b/f"), b"1").unwrap();
        let got = drain(&mut w);
        use WatchEventType::*;
        assert!(got.contains(&(Create, format!("{d}/a"))), "{got:?}");
        // Made before the watch on a/ existed: found by the scan.
        assert!(got.contains(&(Create, format!("{d}/a/b"))), "{got:?}");
        assert!(got.contains(&(Create, format!("{d}/a/b/f"))), "{got:?}");
        for _ in 0..5 {
            fs::write(format!("{d}/a/b/f"), b"2").unwrap();
        }
        let got = drain(&mut w);
        assert_eq!(got.iter().filter(|e| **e == (Modify, format!("{d}/a/b/f"))).count(), 1, "{got:?}");
        fs::rename(format!("{d}/a/b/f"), format!("{d}/a/g")).unwrap();
        fs::remove_file(format!("{d}/a/g")).unwrap();
        let got = drain(&mut w);
        assert_eq!(got, [(Rename, format!("{d}/a/b/f")), (Rename, format!("{d}/a/g")), (Delete, format!("{d}/a/g"))]);
        fs::remove_dir_all(&d).unwrap();
        let got = drain(&mut w);
        assert_eq!(got.last(), Some(&(Delete, d.clone())), "{got:?}");
        assert!(w.finished());
    }

    #[test]
    fn a_full_queue_and_missing_credit_end_in_one_overflow() {
        let d = tmp("overflow");
        let mut w = start(&d, false, 4, 8);
        for i in 0..50 {
            fs::write(format!("{d}/f{i}"), b"x").unwrap();
        }
        w.read();
        let first = w.take_batch().unwrap().events;
        assert_eq!(first.len(), 4, "only the credit");
        assert!(w.take_batch().is_none());
        w.grant(100);
        let rest = w.take_batch().unwrap().events;
        let overflows = rest.iter().filter(|e| e.kind == WatchEventType::Overflow).count();
        assert_eq!(overflows, 1, "{rest:?}");
        assert_eq!(rest.last().map(|e| e.kind), Some(WatchEventType::Overflow));
        assert!(first.len() + rest.len() <= 9 + 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_path_is_enoent() {
        let req: WatchStart =
            serde_json::from_value(serde_json::json!({"path": "/nonexistent-sandbox-path", "recursive": true, "window": 1, "maxQueued": 1})).unwrap();
        assert_eq!(Watch::start(&req).err(), Some(libc::ENOENT));
    }
}
