//! One layer tar entry, read into what the merge needs: a normalized path,
//! its kind and metadata, or the whiteout / opaque marker it stands for.

use crate::emit::{Meta, Special};
use crate::error::{ImportError, Result};
use std::io::Read;

pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { size: u64 },
    Dir,
    Symlink(Vec<u8>),
    /// Another name for the (earlier) entry at this normalized path.
    Hardlink(Vec<u8>),
    Special(Special),
}

#[derive(Debug)]
pub enum Parsed {
    Entry { path: Vec<u8>, kind: Kind, meta: Meta },
    /// `dir/.wh.name`: `dir/name` (and below) from lower layers is deleted.
    Whiteout(Vec<u8>),
    /// `dir/.wh..wh..opq`: everything lower layers have below `dir` is hidden.
    Opaque(Vec<u8>),
    /// Nothing to do (aufs bookkeeping, PAX globals, volume labels…).
    Skip,
}

/// `./a//b/` → `a/b`; the root is the empty path. `..` is refused: a layer
/// naming it is either broken or trying to escape.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(ImportError::Unsupported(format!(
                    "layer entry {:?} contains \"..\"; the image is malformed",
                    String::from_utf8_lossy(raw)
                )))
            }
            p => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(p);
            }
        }
    }
    Ok(out)
}

/// (parent, basename) of a normalized non-root path.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Proper ancestors of a normalized path, shallowest first, root excluded.
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|(_, &b)| b == b'/').map(move |(i, _)| &path[..i])
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bad(e: std::io::Error) -> ImportError {
    ImportError::io("reading a layer entry", e)
}

/// Reads the header part of `entry` (its data stays unread for the caller).
pub fn parse<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Parsed> {
    let raw_path = entry.path_bytes().into_owned();
    let path = normalize(&raw_path)?;
    let (parent, name) = split(&path);
    if name == OPAQUE_MARKER {
        return Ok(Parsed::Opaque(parent.to_vec()));
    }
    if name.starts_with(b".wh..wh.") {
        return Ok(Parsed::Skip);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        return Ok(Parsed::Whiteout(join(parent, hidden)));
    }

    let mut mtime: Option<u64> = None;
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(bad)? {
        for ext in pax {
            let ext = ext.map_err(bad)?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
            } else if let Some(name) = key.strip_prefix("LIBARCHIVE.xattr.") {
                use base64::Engine as _;
                // libarchive writes standard base64, with or without padding.
                let unpadded = ext.value_bytes().trim_ascii_end();
                let unpadded = &unpadded[..unpadded.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1)];
                let value = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(unpadded)
                    .map_err(|e| ImportError::InvalidSource(format!("bad LIBARCHIVE.xattr value for {key}: {e}")))?;
                xattrs.push((percent_decode(name), value));
            } else if key == "mtime" {
                // Fractional seconds are dropped: ext4 gets whole seconds, reproducibly.
                mtime = ext.value().ok().and_then(|v| v.split('.').next()?.parse::<i64>().ok()).map(|v| v.max(0) as u64);
            }
        }
    }
    // Overlay bookkeeping that some tools leak into layers means nothing here.
    xattrs.retain(|(n, _)| !n.starts_with("trusted.overlay."));
    xattrs.sort();

    let h = entry.header();
    let meta = Meta {
        mode: h.mode().map_err(bad)? & 0o7777,
        uid: h.uid().map_err(bad)?,
        gid: h.gid().map_err(bad)?,
        mtime: match mtime {
            Some(m) => m,
            None => h.mtime().map_err(bad)?,
        },
        xattrs,
    };
    let link = || -> Result<Vec<u8>> {
        entry
            .link_name_bytes()
            .map(|l| l.into_owned())
            .ok_or_else(|| ImportError::InvalidSource(format!("link {:?} has no target", String::from_utf8_lossy(&raw_path))))
    };
    let dev = || -> Result<(u32, u32)> {
        Ok((h.device_major().map_err(bad)?.unwrap_or(0), h.device_minor().map_err(bad)?.unwrap_or(0)))
    };
    use tar::EntryType as T;
    let kind = match h.entry_type() {
        T::Regular | T::Continuous | T::GNUSparse => Kind::File { size: entry.size() },
        T::Directory => Kind::Dir,
        T::Symlink => Kind::Symlink(link()?),
        T::Link => Kind::Hardlink(normalize(&link()?)?),
        T::Char => {
            let (a, b) = dev()?;
            Kind::Special(Special::Char(a, b))
        }
        T::Block => {
            let (a, b) = dev()?;
            Kind::Special(Special::Block(a, b))
        }
        T::Fifo => Kind::Special(Special::Fifo),
        _ => return Ok(Parsed::Skip),
    };
    if path.is_empty() && kind != Kind::Dir {
        return Err(ImportError::InvalidSource("a layer entry for the root directory is not a directory".into()));
    }
    Ok(Parsed::Entry { path, kind, meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(b"./usr//bin/").unwrap(), b"usr/bin");
        assert_eq!(normalize(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"a/../../etc").is_err());
    }

    #[test]
    fn splits_and_walks_ancestors() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, vec![&b"a"[..], &b"a/b"[..]]);
    }

    #[test]
    fn decodes_percent_names() {
        assert_eq!(percent_decode("user.a%3Db"), "user.a=b");
        assert_eq!(percent_decode("user.x%"), "user.x%");
    }
}
