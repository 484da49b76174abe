//! The kernel a restored QEMU is given: the real bzImage's setup header and
//! one page of its payload, in a memfd.
//!
//! QEMU reads the whole `-kernel` file into a heap buffer it keeps for fw_cfg
//! for the VM's lifetime (13.5 MiB of private memory per VM with Debian's
//! kernel). A restored guest never reads fw_cfg again (its kernel is already
//! in the snapshot's RAM, and reboots end the VM), but the incoming side must
//! still be built with `-kernel` so it has the same RAM blocks (the
//! linuxboot option ROM) as the VM that was captured. The stub keeps the
//! header QEMU parses and drops the payload: forks of a snapshot stop paying
//! for a copy of the kernel each.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use crate::error::HostError;

/// Offset of `setup_sects` in the x86 boot protocol header.
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the "HdrS" magic.
const HEADER_MAGIC: usize = 0x202;
/// Payload bytes kept after the setup code.
const PAYLOAD_KEPT: usize = 4096;

/// The stub's bytes: the setup code (the header QEMU checks is in there) and
/// the start of the payload. Refuses anything that is not a bzImage, so a
/// restore never silently runs with a kernel QEMU would parse differently.
pub fn stub_of(image: &[u8]) -> Result<&[u8], String> {
    if image.len() < HEADER_MAGIC + 4 || &image[HEADER_MAGIC..HEADER_MAGIC + 4] != b"HdrS" {
        return Err("not a bzImage (no HdrS header)".into());
    }
    // The boot protocol: 0 setup sectors means 4; the boot sector comes first.
    let sects = match image[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let setup = (sects + 1) * 512;
    if setup >= image.len() {
        return Err(format!("bzImage setup ({setup} bytes) is not shorter than the file ({} bytes)", image.len()));
    }
    Ok(&image[..(setup + PAYLOAD_KEPT).min(image.len())])
}

/// A memfd holding the stub of `kernel`, for QEMU to open as `/proc/self/fd/N`.
pub fn restore_kernel(kernel: &Path) -> Result<File, HostError> {
    let setup_err = |what: &str, e: &dyn std::fmt::Display| HostError::Setup(format!("{what} {}: {e}", kernel.display()));
    // The header and the kept payload are all this reads, whatever the kernel's size
    // (setup_sects is one byte: the setup code is at most 256 sectors).
    const HEAD_MAX: usize = 256 * 512 + PAYLOAD_KEPT;
    let mut head = Vec::with_capacity(HEAD_MAX);
    File::open(kernel)
        .and_then(|f| f.take(HEAD_MAX as u64).read_to_end(&mut head))
        .map_err(|e| setup_err("reading the kernel", &e))?;
    let stub = stub_of(&head).map_err(|e| setup_err("kernel", &e))?;
    // SAFETY: the name is a NUL-terminated literal; the new descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c"sandbox-restore-kernel".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(HostError::Setup(format!("memfd_create for the restore kernel: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(stub).map_err(|e| setup_err("writing the stub of", &e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(sects: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0xabu8; len];
        v[SETUP_SECTS] = sects;
        v[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        v
    }

    #[test]
    fn keeps_setup_and_one_page() {
        let img = image(31, 1 << 20);
        assert_eq!(stub_of(&img).unwrap().len(), 32 * 512 + PAYLOAD_KEPT);
        assert_eq!(stub_of(&image(0, 1 << 20)).unwrap().len(), 5 * 512 + PAYLOAD_KEPT, "0 setup sectors means 4");
        // A kernel shorter than setup + a page is kept whole.
        assert_eq!(stub_of(&image(1, 1500)).unwrap().len(), 1500);
    }

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(stub_of(b"\x7fELF").is_err());
        let mut img = image(4, 8192);
        img[HEADER_MAGIC] = b'X';
        assert!(stub_of(&img).unwrap_err().contains("HdrS"));
        assert!(stub_of(&image(200, 4096)).unwrap_err().contains("not shorter"));
    }

    #[test]
    fn the_stub_is_a_readable_file() {
        let dir = std::env::temp_dir().join(format!("kstub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join("vmlinuz");
        std::fs::write(&k, image(8, 100_000)).unwrap();
        let mut f = restore_kernel(&k).unwrap();
        use std::io::Seek;
        f.rewind().unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 9 * 512 + PAYLOAD_KEPT);
        assert_eq!(&got[HEADER_MAGIC..HEADER_MAGIC + 4], b"HdrS");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
