//! The merged tree → a reproducible ext4 → a qcow2. e2fsprogs' own tools do
//! the filesystem work: `mke2fs -d -` reads our tar stream (≥ 1.47.1, built
//! with libarchive), `debugfs` adds the xattrs mke2fs does not copy from
//! tarballs, `qemu-img convert` writes the container.
//!
//! Same input → same bytes: our own mke2fs.conf (the host's may differ),
//! fixed UUID and directory-hash seed derived from the image's config
//! digest, `E2FSPROGS_FAKE_TIME` for every timestamp mke2fs invents, and an
//! entry order that depends only on the layers.

use crate::digest::Digest;
use crate::error::{ImportError, Result};
use crate::merge::{Merged, XattrFix};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Features spelled out so the host's /etc/mke2fs.conf changes nothing
/// (the set Debian 12 uses for ext4, which the guest kernel supports).
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// Any fixed non-zero value (mke2fs treats 0 as "use the clock").
const FAKE_TIME: &str = "1";

pub struct Tools<'a> {
    pub mke2fs: &'a Path,
    pub debugfs: &'a Path,
    pub qemu_img: &'a Path,
    pub library_path: Option<&'a Path>,
}

impl Tools<'_> {
    fn e2fs(&self, tool: &Path) -> Command {
        let mut c = Command::new(tool);
        if let Some(lib) = self.library_path {
            c.env("LD_LIBRARY_PATH", lib);
        }
        c.env("E2FSPROGS_FAKE_TIME", FAKE_TIME).env_remove("MKE2FS_DEVICE_SECTSIZE").env_remove("MKE2FS_FIRST_META_BG");
        c
    }
}

/// A UUID-shaped string from a digest: the filesystem UUID and hash seed.
pub fn uuid_from(digest: &Digest) -> String {
    let d = Digest::of(format!("torkbot-sandbox ext4 v1 {digest}").as_bytes());
    let mut h: Vec<u8> = hex::decode(d.hex()).expect("hex")[..16].to_vec();
    h[6] = (h[6] & 0x0f) | 0x40; // version 4 layout, deterministic bits
    h[8] = (h[8] & 0x3f) | 0x80;
    let s = hex::encode(h);
    format!("{}-{}-{}-{}-{}", &s[..8], &s[8..12], &s[12..16], &s[16..20], &s[20..])
}

/// A running `mke2fs -d -` and the stdin our tar stream goes into.
pub struct Mkfs {
    child: Child,
    raw: PathBuf,
}

impl Mkfs {
    pub fn start(tools: &Tools, work: &Path, raw: &Path, size: u64, seed: &str) -> Result<(Mkfs, BufWriter<std::process::ChildStdin>)> {
        let conf = work.join("mke2fs.conf");
        std::fs::write(&conf, MKE2FS_CONF).map_err(|e| ImportError::io("writing mke2fs.conf", e))?;
        let _ = std::fs::remove_file(raw);
        let f = std::fs::File::create(raw).map_err(|e| ImportError::io(format!("creating {}", raw.display()), e))?;
        f.set_len(size).map_err(|e| ImportError::io("sizing the filesystem image", e))?;
        drop(f);
        let mut cmd = tools.e2fs(tools.mke2fs);
        cmd.env("MKE2FS_CONFIG", &conf)
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-L", "sandbox-root", "-U", seed, "-E"])
            // Inode tables zeroed now: a writable overlay must not see the guest kernel do it.
            .arg(format!("hash_seed={seed},root_owner=0:0,lazy_itable_init=0,nodiscard"))
            .args(["-d", "-"])
            .arg(raw)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            ImportError::Tool(format!("cannot run {}: {e}; install e2fsprogs ≥ 1.47.1 (`npm run setup` fetches it)", tools.mke2fs.display()))
        })?;
        let stdin = child.stdin.take().expect("piped");
        // A 1 MiB pipe (default 64 KiB) lets both sides run in bigger bursts.
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure only keeps the default size.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&stdin), libc::F_SETPIPE_SZ, 1 << 20);
        }
        Ok((Mkfs { child, raw: raw.to_path_buf() }, BufWriter::with_capacity(1 << 20, stdin)))
    }

    /// Waits for mke2fs; `Ok(false)` means it ran out of space or inodes.
    pub fn wait(mut self) -> Result<bool> {
        let mut err = String::new();
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let status = self.child.wait().map_err(|e| ImportError::io("waiting for mke2fs", e))?;
        if status.success() {
            return Ok(true);
        }
        if err.contains("Could not allocate") || err.contains("No space left") || err.contains("inode") && err.contains("allocat") {
            return Ok(false);
        }
        if err.contains("libarchive") || err.contains("without --without-libarchive") {
            return Err(ImportError::Tool(format!(
                "mke2fs cannot read tarballs here ({}); it needs libarchive.so.13 (Debian: apt-get install libarchive13)",
                err.trim()
            )));
        }
        Err(ImportError::Tool(format!("mke2fs failed ({status}) building {}: {}", self.raw.display(), tail(&err))))
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.trim().lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// debugfs' command parser takes double-quoted arguments with `""` for a quote.
fn quote(path: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(path).ok()?;
    if s.contains('\n') || s.contains('\r') {
        return None;
    }
    Some(format!("\"/{}\"", s.replace('"', "\"\"")))
}

/// Applies the xattrs mke2fs skipped; returns paths it could not address.
pub fn apply_xattrs(tools: &Tools, work: &Path, raw: &Path, fixes: &[XattrFix]) -> Result<Vec<String>> {
    if fixes.is_empty() {
        return Ok(Vec::new());
    }
    let dir = work.join("xattrs");
    std::fs::create_dir_all(&dir).map_err(|e| ImportError::io("creating the xattr scratch directory", e))?;
    let mut script = String::new();
    let mut skipped = Vec::new();
    for (i, f) in fixes.iter().enumerate() {
        let (Some(path), true) = (quote(&f.path), f.name.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) else {
            skipped.push(format!("{} ({})", String::from_utf8_lossy(&f.path), f.name));
            continue;
        };
        let value = dir.join(i.to_string());
        std::fs::write(&value, &f.value).map_err(|e| ImportError::io("writing an xattr value", e))?;
        script.push_str(&format!("ea_set -f \"{}\" {path} {}\n", value.display(), f.name));
    }
    let script_path = dir.join("script");
    std::fs::write(&script_path, script).map_err(|e| ImportError::io("writing the debugfs script", e))?;
    let out = tools
        .e2fs(tools.debugfs)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(raw)
        .output()
        .map_err(|e| ImportError::Tool(format!("cannot run {}: {e}", tools.debugfs.display())))?;
    // debugfs echoes each command to stderr and exits 0 even when one fails:
    // any other line is an error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs") && !l.trim().is_empty()).collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(ImportError::Tool(format!("debugfs could not set xattrs: {}", errors.join("\n"))));
    }
    Ok(skipped)
}

/// `qemu-img convert` raw → qcow2 (zlib-compressed clusters when `compress`).
pub fn to_qcow2(tools: &Tools, raw: &Path, out: &Path, compress: bool) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new(tools.qemu_img);
    cmd.args(["convert", "-q", "-f", "raw", "-O", "qcow2"]);
    if compress {
        cmd.args(["-c", "-o", "compat=1.1,compression_type=zlib"]);
    } else {
        cmd.args(["-o", "compat=1.1"]);
    }
    let res = cmd.arg(raw).arg(out).output().map_err(|e| ImportError::Tool(format!("cannot run {}: {e}", tools.qemu_img.display())))?;
    if !res.status.success() {
        return Err(ImportError::Tool(format!("qemu-img convert failed: {}", tail(&String::from_utf8_lossy(&res.stderr)))));
    }
    Ok(())
}

/// sha256 and size of a file.
pub fn file_digest(path: &Path) -> Result<(Digest, u64)> {
    let f = std::fs::File::open(path).map_err(|e| ImportError::io(format!("opening {}", path.display()), e))?;
    let mut r = crate::digest::VerifyingReader::new(std::io::BufReader::with_capacity(1 << 20, f), None, "image");
    let d = r.drain().map_err(|e| ImportError::io("hashing the image", e))?;
    Ok((d, r.bytes_read()))
}

/// The filesystem size to try first: generous (the file is sparse; unused
/// space costs nothing in the qcow2) and room for writable overlays.
pub fn first_size(compressed_bytes: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    let guess = compressed_bytes.saturating_mul(8).saturating_add(GIB);
    guess.div_ceil(GIB).max(4) * GIB
}

/// Builds the filesystem, growing it (×4, twice at most) if mke2fs runs out of room.
pub fn build(
    tools: &Tools,
    work: &Path,
    raw: &Path,
    mut size: u64,
    seed: &str,
    mut stream: impl FnMut(&mut dyn Write) -> Result<Merged>,
) -> Result<(Merged, u64)> {
    for attempt in 0..3 {
        let (mkfs, mut stdin) = Mkfs::start(tools, work, raw, size, seed)?;
        let merged = stream(&mut stdin).and_then(|m| {
            stdin.flush().map_err(|e| ImportError::io("writing to mke2fs", e))?;
            Ok(m)
        });
        drop(stdin);
        let fits = mkfs.wait();
        let grow = |size: u64| -> Result<u64> {
            if attempt < 2 {
                Ok(size * 4)
            } else {
                Err(ImportError::Tool(format!("the image does not fit in a {} GiB filesystem", size >> 30)))
            }
        };
        match (merged, fits) {
            (Ok(m), Ok(true)) => return Ok((m, size)),
            (Ok(_) | Err(ImportError::OutputClosed), Ok(false)) => size = grow(size)?,
            // mke2fs' own error explains a closed pipe better than the pipe does.
            (Ok(_) | Err(ImportError::OutputClosed), Err(e)) => return Err(e),
            // Our failure (a digest mismatch, a bad layer) comes first: mke2fs
            // only saw the stream end early because of it.
            (Err(e), _) => return Err(e),
        }
    }
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_stable_and_uuid_shaped() {
        let d = Digest::of(b"config");
        let u = uuid_from(&d);
        assert_eq!(u, uuid_from(&d));
        assert_ne!(u, uuid_from(&Digest::of(b"other")));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn quotes_for_debugfs() {
        assert_eq!(quote(b"a b/c\"d").unwrap(), "\"/a b/c\"\"d\"");
        assert!(quote(b"new\nline").is_none());
    }

    #[test]
    fn sizes_start_at_4_gib() {
        assert_eq!(first_size(0), 4 << 30);
        assert_eq!(first_size(1 << 30), 9 << 30);
    }
}
