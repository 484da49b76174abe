//! Image tarballs, read in place (nothing is extracted): an OCI archive (a
//! tarball of an OCI layout) or a Docker archive (`docker save`, skopeo's
//! `docker-archive:`), which newer Docker versions also fill with an OCI layout.

use super::{Blobs, LayerBlob, OciStore, Resolved, DOCUMENT_LIMIT};
use crate::digest::{Digest, VerifyingReader};
use crate::entry::normalize;
use crate::error::{ImportError, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Member name → (offset, size) of a tarball's regular files.
pub struct TarIndex {
    file: Arc<File>,
    members: HashMap<Vec<u8>, (u64, u64)>,
    name: String,
}

impl TarIndex {
    pub fn open(path: &Path) -> Result<TarIndex> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| ImportError::io(format!("opening {name}"), e))?;
        let mut archive = tar::Archive::new(file.try_clone().map_err(|e| ImportError::io(format!("opening {name}"), e))?);
        let bad = |e: io::Error| ImportError::InvalidSource(format!("{name} is not a readable tar archive: {e}"));
        let mut members = HashMap::new();
        for e in archive.entries_with_seek().map_err(bad)? {
            let e = e.map_err(bad)?;
            if e.header().entry_type().is_file() {
                members.insert(normalize(&e.path_bytes())?, (e.raw_file_position(), e.size()));
            }
        }
        Ok(TarIndex { file: Arc::new(file), members, name })
    }

    pub fn has(&self, member: &str) -> bool {
        self.members.contains_key(member.as_bytes())
    }

    pub fn member(&self, member: &str) -> Result<Box<dyn Read + Send>> {
        let key = normalize(member.as_bytes())?;
        let &(offset, size) = self
            .members
            .get(&key)
            .ok_or_else(|| ImportError::NotFound(format!("{} has no member {member:?}", self.name)))?;
        Ok(Box::new(Section { file: self.file.clone(), pos: offset, end: offset + size }))
    }

    fn read_small(&self, member: &str, what: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.member(member)?
            .take(DOCUMENT_LIMIT + 1)
            .read_to_end(&mut out)
            .map_err(|e| ImportError::io(format!("reading {what} from {}", self.name), e))?;
        if out.len() as u64 > DOCUMENT_LIMIT {
            return Err(ImportError::InvalidSource(format!("{what} in {} is too large", self.name)));
        }
        Ok(out)
    }
}

/// A byte range of the tarball, read with pread so readers never share a cursor.
struct Section {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Section {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive member is truncated"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl OciStore for Arc<TarIndex> {
    fn index(&self) -> Result<Vec<u8>> {
        self.read_small("index.json", "index.json")
    }

    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        self.member(&format!("blobs/sha256/{}", digest.hex()))
            .map_err(|_| ImportError::NotFound(format!("blob {digest} is missing from {}", self.name)))
    }
}

impl TarIndex {
    pub fn is_oci_layout(&self) -> bool {
        self.has("oci-layout") && self.has("index.json")
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The digest a member name spells (`blobs/sha256/<hex>`, `<hex>.json`, `<hex>.tar`).
fn digest_in_name(member: &str) -> Option<Digest> {
    let base = member.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").or_else(|| base.strip_suffix(".tar")).unwrap_or(base);
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// A docker-archive's image: by repo tag, or the only one. Layer blobs are
/// checked against their names when those are digests, and always (as
/// tars) against the config's diff_ids by the merge.
pub fn resolve_docker(index: Arc<TarIndex>, reference: Option<&str>) -> Result<(Resolved, DockerBlobs)> {
    let manifest = index.read_small("manifest.json", "manifest.json")?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&manifest)
        .map_err(|e| ImportError::InvalidSource(format!("manifest.json of {} is not a docker-archive manifest: {e}", index.name)))?;
    let tags = |e: &DockerManifestEntry| e.repo_tags.clone().unwrap_or_default();
    let entry = match reference {
        Some(r) => entries.iter().find(|e| tags(e).iter().any(|t| t == r || t.rsplit('/').next() == Some(r))),
        None if entries.len() == 1 => entries.first(),
        None => None,
    }
    .ok_or_else(|| {
        let all: Vec<String> = entries.iter().flat_map(tags).collect();
        ImportError::NotFound(format!(
            "{} {}; its tags: {}",
            index.name,
            reference.map_or_else(|| format!("holds {} images; name one", entries.len()), |r| format!("has no image tagged {r:?}")),
            if all.is_empty() { "none".into() } else { all.join(", ") }
        ))
    })?;
    let config = index.read_small(&entry.config, "the image config")?;
    let config_digest = Digest::of(&config);
    if let Some(named) = digest_in_name(&entry.config) {
        named.verify("the image config", &config)?;
    }
    let parsed = crate::config::parse(&config)?;
    if parsed.diff_ids.len() != entry.layers.len() {
        return Err(ImportError::InvalidSource(format!(
            "{}: the config lists {} layers but manifest.json {}",
            index.name,
            parsed.diff_ids.len(),
            entry.layers.len()
        )));
    }
    let layers: Vec<LayerBlob> = entry
        .layers
        .iter()
        .zip(&parsed.diff_ids)
        .map(|(m, diff)| LayerBlob { digest: digest_in_name(m).unwrap_or_else(|| diff.clone()), size: None })
        .collect();
    let blobs = DockerBlobs { index, members: entry.layers.clone(), layers: layers.clone() };
    let ref_name = tags(entry).into_iter().next();
    Ok((Resolved { manifest_digest: None, config_digest, config, ref_name, layers }, blobs))
}

pub struct DockerBlobs {
    index: Arc<TarIndex>,
    members: Vec<String>,
    layers: Vec<LayerBlob>,
}

impl Blobs for DockerBlobs {
    fn open_layer(&self, i: usize) -> Result<Box<dyn Read + Send>> {
        let raw = self.index.member(&self.members[i])?;
        // Only a blobs/sha256/<hex> name is the digest of the bytes as stored;
        // `<hex>.tar` is the diff_id, which the merge checks on the tar itself.
        let check = self.members[i].starts_with("blobs/").then(|| self.layers[i].digest.clone());
        Ok(Box::new(VerifyingReader::new(raw, check, format!("layer {i} ({})", self.members[i]))))
    }
}
