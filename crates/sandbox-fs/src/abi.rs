//! FUSE wire format (Linux `include/uapi/linux/fuse.h`, protocol 7.x), written
//! from the published layout: little-endian fixed structs followed by
//! NUL-terminated names or raw data. Only what the engine speaks is here.

/// Protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// Highest minor version we implement (the kernel's may be higher; we answer with the lower one).
pub const KERNEL_MINOR_VERSION: u32 = 31;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;
pub const ATTR_LEN: usize = 88;
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
pub const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
pub const OPEN_OUT_LEN: usize = 16;
pub const INIT_OUT_LEN: usize = 64;
pub const STATFS_OUT_LEN: usize = 80;
pub const DIRENT_HEADER_LEN: usize = 24;

/// FUSE opcodes.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
}

/// `fuse_init_in/out.flags` bits we use.
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

pub const GETATTR_FH: u32 = 1;
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// Bounded little-endian reader over a request body. Every read is checked:
/// a short body is an error, never a panic.
pub struct Reader<'a> {
    buf: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request shorter than its {0} structure")]
    Short(&'static str),
    #[error("request header says {declared} bytes but {actual} arrived")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("name is not NUL-terminated")]
    Unterminated,
    #[error("name is empty, '.', '..', too long or contains '/'")]
    BadName,
    #[error("name is not UTF-8 (JavaScript filesystems use string paths)")]
    NotUtf8,
    #[error("write of {declared} bytes carries {actual}")]
    WriteSize { declared: u32, actual: usize },
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Short(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// One NUL-terminated path component, as the kernel sends entry names.
    pub fn name(&mut self) -> Result<String, DecodeError> {
        let raw = self.cstr()?;
        // "." and ".." never name an entry of ours: a path must not climb out of a mount.
        if raw.is_empty() || raw.len() > 255 || raw.contains(&b'/') || raw == b"." || raw == b".." {
            return Err(DecodeError::BadName);
        }
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }

    /// A NUL-terminated string of any content but '\0' (symlink targets).
    pub fn text(&mut self) -> Result<String, DecodeError> {
        let raw = self.cstr()?;
        if raw.len() > 4096 {
            return Err(DecodeError::BadName);
        }
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }

    fn cstr(&mut self) -> Result<&'a [u8], DecodeError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(DecodeError::Unterminated)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Little-endian writer for replies.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Self { buf: Vec::with_capacity(n) }
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[1, 0, 0]);
        assert_eq!(r.u32("x"), Err(DecodeError::Short("x")));
        let mut r = Reader::new(b"abc");
        assert_eq!(r.name(), Err(DecodeError::Unterminated));
        let mut r = Reader::new(b"a/b\0");
        assert_eq!(r.name(), Err(DecodeError::BadName));
        let mut r = Reader::new(b"\0");
        assert_eq!(r.name(), Err(DecodeError::BadName));
        let mut r = Reader::new(b"..\0");
        assert_eq!(r.name(), Err(DecodeError::BadName));
        let mut r = Reader::new(&[0xff, 0xfe, 0]);
        assert_eq!(r.name(), Err(DecodeError::NotUtf8));
        let mut r = Reader::new(b"ok\0rest");
        assert_eq!(r.name().unwrap(), "ok");
        assert_eq!(r.rest(), b"rest");
    }
}
