//! The file operations themselves, on std's wrappers of the syscalls; every
//! failure is the kernel's errno.

use sandbox_protocol::{self as proto, FileReply, FileRequest, FileStat, FileType, PutEntry};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

type Errno = i32;

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Only absolute paths: init's cwd is no business of the host.
fn abs(path: &str) -> Result<&Path, Errno> {
    if path.starts_with('/') && !path.contains('\0') {
        Ok(Path::new(path))
    } else {
        Err(libc::EINVAL)
    }
}

pub fn run(req: &FileRequest, data: &[u8]) -> Result<FileReply, Errno> {
    let done = Ok(FileReply::Done {});
    match req {
        FileRequest::Read { .. } => Err(libc::EINVAL),
        FileRequest::Write { path, offset, create, truncate, mode, create_parents, force_mode, mtime_ms } => {
            let path = abs(path)?;
            let file = match open_for_write(path, *create, *truncate, mode.map(|m| m.get())) {
                Err(libc::ENOENT) if *create && *create_parents => {
                    if let Some(parent) = path.parent() {
                        fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(errno)?;
                    }
                    open_for_write(path, *create, *truncate, mode.map(|m| m.get()))?
                }
                other => other?,
            };
            file.write_all_at(data, offset.get()).map_err(errno)?;
            if let (true, Some(m)) = (*force_mode, mode) {
                file.set_permissions(fs::Permissions::from_mode(m.get())).map_err(errno)?;
            }
            if let Some(ms) = mtime_ms {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.get());
                file.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)).map_err(errno)?;
            }
            done
        }
        FileRequest::Stat { path, follow } => {
            let path = abs(path)?;
            let md = if *follow { fs::metadata(path) } else { fs::symlink_metadata(path) }.map_err(errno)?;
            Ok(FileReply::Stat { stat: stat_of(&md) })
        }
        FileRequest::Readdir { path, skip } => readdir(abs(path)?, skip.get() as usize),
        FileRequest::Mkdir { path, recursive, mode } => {
            let path = abs(path)?;
            let want = mode.map_or(0o755, |m| m.get());
            let mut b = fs::DirBuilder::new();
            b.recursive(*recursive).mode(want);
            if *recursive && fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
                return Err(libc::EEXIST);
            }
            b.create(path).map_err(errno)?;
            // The mode exactly, whatever init's umask.
            if mode.is_some() {
                fs::set_permissions(path, fs::Permissions::from_mode(want)).map_err(errno)?;
            }
            done
        }
        FileRequest::Rm { path, recursive, force } => {
            let path = abs(path)?;
            let md = match fs::symlink_metadata(path) {
                Err(e) if *force && e.raw_os_error() == Some(libc::ENOENT) => return done,
                other => other.map_err(errno)?,
            };
            if md.is_dir() {
                if !*recursive {
                    return Err(libc::EISDIR);
                }
                // std's remove_dir_all never follows symbolic links.
                fs::remove_dir_all(path).map_err(errno)?;
            } else {
                fs::remove_file(path).map_err(errno)?;
            }
            done
        }
        FileRequest::Rename { from, to } => {
            fs::rename(abs(from)?, abs(to)?).map_err(errno)?;
            done
        }
        FileRequest::Chmod { path, mode } => {
            fs::set_permissions(abs(path)?, fs::Permissions::from_mode(mode.get())).map_err(errno)?;
            done
        }
        FileRequest::Symlink { target, path } => {
            if target.is_empty() || target.contains('\0') {
                return Err(libc::EINVAL);
            }
            std::os::unix::fs::symlink(target.as_str(), abs(path)?).map_err(errno)?;
            done
        }
        FileRequest::Utimes { path, mtime_ms } => {
            utimes_nofollow(abs(path)?, mtime_ms.get())?;
            done
        }
        // Served by `put`, which says which entry failed.
        FileRequest::Put { .. } => Err(libc::EINVAL),
        FileRequest::Readlink { path } => {
            let target = fs::read_link(abs(path)?).map_err(errno)?;
            let target = target.to_string_lossy();
            Ok(FileReply::Link { target: proto::Text::new(target).ok_or(libc::ENAMETOOLONG)? })
        }
    }
}

/// Sets access and modification time of `path` itself (a link is not followed).
fn utimes_nofollow(path: &Path, ms: u64) -> Result<(), Errno> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| libc::EINVAL)?;
    let t = libc::timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long };
    let times = [t, t];
    // SAFETY: `c` is a NUL-terminated path and `times` two timespecs, both alive for the call.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes the entries of a Put in order; `data` is their file bytes, one after
/// the other. The first failure stops it: its index and errno.
pub fn put(entries: &[PutEntry], data: &[u8]) -> Result<(), (usize, Errno)> {
    if entries.len() > proto::MAX_PUT_ENTRIES {
        return Err((0, libc::E2BIG));
    }
    let sizes: u64 = entries.iter().map(|e| if let PutEntry::File { size, .. } = e { u64::from(size.get()) } else { 0 }).sum();
    if sizes != data.len() as u64 {
        return Err((0, libc::EINVAL));
    }
    let mut rest = data;
    for (i, e) in entries.iter().enumerate() {
        put_one(e, &mut rest).map_err(|errno| (i, errno))?;
    }
    Ok(())
}

fn put_one(e: &PutEntry, rest: &mut &[u8]) -> Result<(), Errno> {
    let exact = |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(errno);
    match e {
        PutEntry::File { path, mode, size, mtime_ms } => {
            let n = size.get() as usize;
            let (Some(bytes), Some(after)) = (rest.get(..n), rest.get(n..)) else { return Err(libc::EINVAL) };
            *rest = after;
            let path = abs(path)?;
            let file = open_for_write(path, true, true, Some(mode.get()))?;
            file.set_permissions(fs::Permissions::from_mode(mode.get())).map_err(errno)?;
            file.write_all_at(bytes, 0).map_err(errno)?;
            if let Some(ms) = mtime_ms {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.get());
                file.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)).map_err(errno)?;
            }
        }
        PutEntry::Directory { path, mode, mtime_ms } => {
            let path = abs(path)?;
            if fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
                return Err(libc::EEXIST);
            }
            fs::DirBuilder::new().recursive(true).mode(mode.get()).create(path).map_err(errno)?;
            exact(path, mode.get())?;
            if let Some(ms) = mtime_ms {
                utimes_nofollow(path, ms.get())?;
            }
        }
        PutEntry::Symlink { path, target, mtime_ms } => {
            if target.is_empty() || target.contains('\0') {
                return Err(libc::EINVAL);
            }
            let path = abs(path)?;
            std::os::unix::fs::symlink(target.as_str(), path).map_err(errno)?;
            if let Some(ms) = mtime_ms {
                utimes_nofollow(path, ms.get())?;
            }
        }
    }
    Ok(())
}

/// Opens for writing; a file `create` makes gets `mode` exactly (not masked by the umask).
fn open_for_write(path: &Path, create: bool, truncate: bool, mode: Option<u32>) -> Result<File, Errno> {
    let mut o = OpenOptions::new();
    o.write(true).truncate(truncate).custom_flags(libc::O_CLOEXEC);
    if create {
        // Exclusive first, to know whether this call made the file.
        let made = OpenOptions::new().write(true).create_new(true).mode(mode.unwrap_or(0o644)).custom_flags(libc::O_CLOEXEC).open(path);
        match made {
            Ok(f) => {
                if let Some(m) = mode {
                    f.set_permissions(fs::Permissions::from_mode(m)).map_err(errno)?;
                }
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(errno(e)),
        }
    }
    o.open(path).map_err(errno)
}

/// Reads up to `buf.len()` bytes at `offset`; `eof` when the file ends within them.
pub fn read_range(path: &str, offset: u64, buf: &mut [u8]) -> Result<(usize, bool), Errno> {
    let file = File::open(abs(path)?).map_err(errno)?;
    let md = file.metadata().map_err(errno)?;
    if md.is_dir() {
        return Err(libc::EISDIR);
    }
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => return Ok((n, true)),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(e)),
        }
    }
    // A regular file whose size we know ends here when the range reaches it
    // (procfs and sysfs files say size 0: only a read of 0 bytes ends them).
    let eof = md.is_file() && md.size() > 0 && offset + n as u64 >= md.size();
    Ok((n, eof))
}

fn readdir(path: &Path, skip: usize) -> Result<FileReply, Errno> {
    let mut names = Vec::new();
    for e in fs::read_dir(path).map_err(errno)? {
        let e = e.map_err(errno)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = e.file_type().map_or(FileType::Unknown, |t| type_of(&t));
        names.push((name, kind));
    }
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let more = names.len() > skip.saturating_add(proto::MAX_DIR_PAGE);
    let entries = names
        .into_iter()
        .skip(skip)
        .take(proto::MAX_DIR_PAGE)
        .filter_map(|(name, kind)| Some(proto::FileDirEntry { name: proto::Text::new(name)?, kind }))
        .collect();
    Ok(FileReply::Dir { entries, more })
}

fn type_of(t: &fs::FileType) -> FileType {
    if t.is_file() {
        FileType::File
    } else if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharacterDevice
    } else if t.is_fifo() {
        FileType::Fifo
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::Unknown
    }
}

fn ms(secs: i64, nsec: i64) -> proto::JsU64 {
    let v = secs.saturating_mul(1000).saturating_add(nsec / 1_000_000);
    proto::JsU64::saturating(u64::try_from(v).unwrap_or(0))
}

fn stat_of(md: &fs::Metadata) -> FileStat {
    FileStat {
        kind: type_of(&md.file_type()),
        mode: proto::U32In::saturating(md.mode() & 0o7777),
        size: proto::JsU64::saturating(md.size()),
        uid: md.uid(),
        gid: md.gid(),
        nlink: proto::JsU64::saturating(md.nlink()),
        ino: proto::JsU64::saturating(md.ino()),
        mtime_ms: ms(md.mtime(), md.mtime_nsec()),
        mtime_ns: proto::U32In::saturating(u32::try_from(md.mtime_nsec() % 1_000_000).unwrap_or(0)),
        atime_ms: ms(md.atime(), md.atime_nsec()),
        ctime_ms: ms(md.ctime(), md.ctime_nsec()),
    }
}
