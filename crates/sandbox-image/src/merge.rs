//! Applies an image's layers as one filesystem, streamed straight into the
//! tar `mke2fs` reads. Layers are read **top-down**: the topmost version of a
//! path is the one that counts, so it is written as soon as it is seen and
//! every lower version is skipped. Nothing is unpacked to the host disk, no
//! root is needed, and mke2fs builds while layers are still being decoded.
//!
//! Rules (OCI image spec, "Applying changesets"; Docker overlay2 semantics):
//! - a layer hides, from the layers below it: every path it has a
//!   non-directory at (and all below), every `.wh.name` (and all below) and
//!   the children of every `dir/.wh..wh..opq`. A layer never hides its own
//!   entries; repeated entries in one layer: the later wins (mke2fs replaces).
//! - directories merge; the topmost directory entry sets the metadata.
//!   Parents a layer omits are created 0755 root:root, and take the metadata
//!   of a lower layer's entry for them if one exists.
//! - a hardlink names an earlier entry of its own layer. When that target is
//!   hidden by an upper layer, the link still gets the target's content: a
//!   second pass over the layer fetches it.

use crate::emit::{Emitter, Meta, CAPABILITY_XATTR};
use crate::entry::{self, Kind, Parsed};
use crate::error::{ImportError, Result};
use crate::layer::LayerStream;
use crate::progress::Reporter;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

/// An xattr mke2fs does not copy from tarballs; applied with debugfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrFix {
    pub path: Vec<u8>,
    pub name: String,
    pub value: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Merged {
    /// Entries written to the tar stream.
    pub entries: u64,
    pub xattrs: Vec<XattrFix>,
    /// The image's /etc/passwd and /etc/group, for resolving `User`.
    pub passwd: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
}

/// Opens layer `i` (0 = bottom) as its decoded, verifying tar stream.
pub type OpenLayer<'a> = dyn Fn(usize) -> Result<Box<dyn LayerStream>> + 'a;

#[derive(Clone, Copy)]
struct Emitted {
    dir: bool,
    /// A directory we invented for an entry whose parent had not been seen.
    placeholder: bool,
    layer: usize,
}

/// A non-directory inode of the layer being read, by its first name.
struct Inode {
    kind: Kind,
    meta: Meta,
    /// Where it was written (its own path, or a link's when the original is hidden).
    written_at: Option<Vec<u8>>,
}

/// What the sandbox's init needs in every root (mount points, and files it
/// bind-mounts over on a read-only root), added when an image lacks them —
/// as the built-in images have them (scripts/build-images.sh).
const SKELETON: &[(&str, Option<&str>, u32)] = &[
    ("dev", None, 0o755),
    ("proc", None, 0o555),
    ("sys", None, 0o555),
    ("run", None, 0o755),
    ("tmp", None, 0o1777),
    ("var/tmp", None, 0o1777),
    ("mnt", None, 0o755),
    ("workspace", None, 0o755),
    ("etc/resolv.conf", Some(""), 0o644),
    ("etc/hosts", Some("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"), 0o644),
];

/// Largest /etc/passwd or /etc/group kept for `User` resolution.
const ID_FILE_LIMIT: u64 = 4 << 20;

struct Merger<'r, W: Write> {
    out: Emitter<W>,
    report: &'r Reporter,
    emitted: HashMap<Vec<u8>, Emitted>,
    hidden: HashSet<Vec<u8>>,
    opaque: HashSet<Vec<u8>>,
    result: Merged,
}

/// Merges `layers` into `out`; `workdir` (the config's WorkingDir) is created if no layer has it,
/// as container runtimes create it at start (a read-only root cannot at boot).
pub fn merge<W: Write>(layers: usize, open: &OpenLayer<'_>, out: W, report: &Reporter, workdir: Option<&str>) -> Result<(Merged, W)> {
    let mut m = Merger {
        out: Emitter::new(out),
        report,
        emitted: HashMap::from([(Vec::new(), Emitted { dir: true, placeholder: true, layer: usize::MAX })]),
        hidden: HashSet::new(),
        opaque: HashSet::new(),
        result: Merged::default(),
    };
    for layer in (0..layers).rev() {
        m.layer(layer, open)?;
    }
    m.skeleton(workdir)?;
    m.result.entries = m.out.entries();
    let w = m.out.finish().map_err(write_err)?;
    Ok((m.result, w))
}

fn write_err(e: std::io::Error) -> ImportError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        ImportError::OutputClosed
    } else {
        ImportError::io("writing the filesystem stream", e)
    }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl<W: Write> Merger<'_, W> {
    /// Whether an entry of `layer` at `path` is the version that counts.
    fn visible(&self, path: &[u8], dir: bool, layer: usize) -> bool {
        if self.opaque.contains(&b""[..]) && !path.is_empty() {
            return false;
        }
        if entry::ancestors(path).any(|a| self.hidden.contains(a) || self.opaque.contains(a)) || self.hidden.contains(path) {
            return false;
        }
        match self.emitted.get(path) {
            None => true,
            Some(e) => e.layer == layer || (e.placeholder && dir),
        }
    }

    /// Writes missing parents as placeholders; false if one is a non-directory.
    fn parents(&mut self, path: &[u8], layer: usize) -> Result<bool> {
        let missing: Vec<Vec<u8>> = entry::ancestors(path).map(<[u8]>::to_vec).collect();
        for a in missing {
            match self.emitted.get(&a) {
                Some(e) if e.dir => {}
                Some(_) => {
                    self.report.warn(format!("layer {layer}: {} is below non-directory {}; skipped", lossy(path), lossy(&a)));
                    return Ok(false);
                }
                None => {
                    self.out.dir(&a, &Meta::implied_dir()).map_err(write_err)?;
                    self.emitted.insert(a, Emitted { dir: true, placeholder: true, layer });
                }
            }
        }
        Ok(true)
    }

    fn note_xattrs(&mut self, path: &[u8], meta: &Meta) {
        for (name, value) in &meta.xattrs {
            if name != CAPABILITY_XATTR {
                self.result.xattrs.push(XattrFix { path: path.to_vec(), name: name.clone(), value: value.clone() });
            }
        }
    }

    /// Writes one non-hardlink entry; `data` is read for regular files.
    fn write(&mut self, path: &[u8], kind: &Kind, meta: &Meta, data: &mut dyn Read) -> Result<()> {
        match kind {
            Kind::Dir if path.is_empty() => self.out.root(meta),
            Kind::Dir => self.out.dir(path, meta),
            Kind::File { size } => {
                let keep = (path == b"etc/passwd" || path == b"etc/group") && *size <= ID_FILE_LIMIT;
                if keep {
                    let mut bytes = Vec::with_capacity(*size as usize);
                    data.take(*size).read_to_end(&mut bytes).map_err(|e| ImportError::io("reading a layer entry", e))?;
                    let r = self.out.file(path, meta, *size, &bytes[..]);
                    if path == b"etc/passwd" {
                        self.result.passwd = Some(bytes);
                    } else {
                        self.result.group = Some(bytes);
                    }
                    r
                } else {
                    self.out.file(path, meta, *size, data.take(*size))
                }
            }
            Kind::Symlink(target) => self.out.symlink(path, meta, target),
            Kind::Special(s) => self.out.special(path, meta, s),
            Kind::Hardlink(_) => unreachable!("hardlinks are resolved before writing"),
        }
        .map_err(write_err)?;
        self.note_xattrs(path, meta);
        Ok(())
    }

    fn layer(&mut self, layer: usize, open: &OpenLayer<'_>) -> Result<()> {
        let mut archive = tar::Archive::new(open(layer)?);
        let mut hides: Vec<Vec<u8>> = Vec::new();
        let mut opaques: Vec<Vec<u8>> = Vec::new();
        // Non-directories of this layer: path → first name of its inode.
        let mut names: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut inodes: HashMap<Vec<u8>, Inode> = HashMap::new();
        // Hidden originals whose links are visible: original → link paths.
        let mut deferred: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        let mut read: u64 = 0;
        let entries = archive.entries().map_err(|e| ImportError::io(format!("reading layer {layer}"), e))?;
        for e in entries {
            let mut e = e.map_err(|e| ImportError::io(format!("reading layer {layer}"), e))?;
            read += e.size();
            self.report.throttled(&format!("unpack-{layer}"), "unpack", json!({ "layer": layer, "bytes": read }), false);
            let (path, kind, meta) = match entry::parse(&mut e)? {
                Parsed::Whiteout(p) => {
                    hides.push(p);
                    continue;
                }
                Parsed::Opaque(p) => {
                    opaques.push(p);
                    continue;
                }
                Parsed::Skip => continue,
                Parsed::Entry { path, kind, meta } => (path, kind, meta),
            };
            let dir = kind == Kind::Dir;
            let visible = self.visible(&path, dir, layer);
            if !dir {
                hides.push(path.clone());
            }
            let kind = match kind {
                Kind::Hardlink(target) => {
                    let Some(original) = names.get(&target).cloned() else {
                        self.report.warn(format!(
                            "layer {layer}: hardlink {} → {} names nothing earlier in its layer; skipped",
                            lossy(&path),
                            lossy(&target)
                        ));
                        continue;
                    };
                    names.insert(path.clone(), original.clone());
                    if !visible || !self.parents(&path, layer)? {
                        continue;
                    }
                    self.emitted.insert(path.clone(), Emitted { dir: false, placeholder: false, layer });
                    let inode = &inodes[&original];
                    match &inode.written_at {
                        Some(at) => {
                            let (meta, at) = (inode.meta.clone(), at.clone());
                            self.out.hardlink(&path, &meta, &at).map_err(write_err)?;
                        }
                        None => match deferred.iter_mut().find(|(o, _)| *o == original) {
                            Some((_, links)) => links.push(path),
                            None => deferred.push((original, vec![path])),
                        },
                    }
                    continue;
                }
                k => k,
            };
            if !dir {
                names.insert(path.clone(), path.clone());
            }
            let write_here = visible && self.parents(&path, layer)?;
            if !dir {
                let written_at = write_here.then(|| path.clone());
                inodes.insert(path.clone(), Inode { kind: kind.clone(), meta: meta.clone(), written_at });
            }
            if !write_here {
                continue;
            }
            self.write(&path, &kind, &meta, &mut e)?;
            self.emitted.insert(path, Emitted { dir, placeholder: false, layer });
        }
        let stream = archive.into_inner();
        stream.finish()?;
        if !deferred.is_empty() {
            self.fetch_hidden_targets(layer, open, &deferred, &inodes)?;
        }
        self.report.throttled(&format!("unpack-{layer}"), "unpack", json!({ "layer": layer, "bytes": read, "done": true }), true);
        self.hidden.extend(hides);
        self.opaque.extend(opaques);
        Ok(())
    }

    /// Adds the skeleton paths the image lacks (after every layer: only then is absence known).
    fn skeleton(&mut self, workdir: Option<&str>) -> Result<()> {
        let workdir = match workdir.map(|w| entry::normalize(w.as_bytes())) {
            Some(Ok(w)) if !w.is_empty() => Some(String::from_utf8_lossy(&w).into_owned()),
            _ => None,
        };
        let extra = workdir.iter().map(|w| (w.as_str(), None, 0o755));
        for (path, content, mode) in SKELETON.iter().copied().chain(extra) {
            let path = path.as_bytes();
            if self.emitted.contains_key(path) || !self.parents(path, usize::MAX)? {
                continue;
            }
            let meta = Meta { mode, ..Meta::implied_dir() };
            let (kind, data) = match content {
                None => (Kind::Dir, &b""[..]),
                Some(text) => (Kind::File { size: text.len() as u64 }, text.as_bytes()),
            };
            self.write(path, &kind, &meta, &mut &data[..])?;
            self.emitted.insert(path.to_vec(), Emitted { dir: content.is_none(), placeholder: false, layer: usize::MAX });
        }
        Ok(())
    }

    /// Second pass over `layer`: content for links whose original an upper layer hid.
    fn fetch_hidden_targets(
        &mut self,
        layer: usize,
        open: &OpenLayer<'_>,
        deferred: &[(Vec<u8>, Vec<Vec<u8>>)],
        inodes: &HashMap<Vec<u8>, Inode>,
    ) -> Result<()> {
        let mut archive = tar::Archive::new(open(layer)?);
        let mut pending: HashMap<&[u8], &[Vec<u8>]> = deferred.iter().map(|(o, l)| (o.as_slice(), l.as_slice())).collect();
        let entries = archive.entries().map_err(|e| ImportError::io(format!("re-reading layer {layer}"), e))?;
        for e in entries {
            if pending.is_empty() {
                break;
            }
            let mut e = e.map_err(|e| ImportError::io(format!("re-reading layer {layer}"), e))?;
            let Parsed::Entry { path, .. } = entry::parse(&mut e)? else { continue };
            // The first entry at that path is the original (later ones are repeats).
            let Some(links) = pending.remove(path.as_slice()) else { continue };
            let inode = &inodes[&path];
            let (first, rest) = links.split_first().expect("at least one link");
            self.write(first, &inode.kind, &inode.meta, &mut e)?;
            for link in rest {
                self.out.hardlink(link, &inode.meta, first).map_err(write_err)?;
            }
        }
        // Only the entries we needed were read: verification is not required
        // again (the first pass already read and checked every byte).
        Ok(())
    }
}

#[cfg(test)]
mod tests;
