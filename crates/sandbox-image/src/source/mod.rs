//! Where an image comes from: a registry, an OCI layout directory, or an
//! OCI/Docker archive. Each resolves to the same `Resolved` image and a
//! way to open its layer blobs, verified by the time they are read through.

pub mod archive;
pub mod layout;
pub mod registry;

use crate::digest::{Digest, VerifyingReader};
use crate::error::{ImportError, Result};
use crate::manifest::{self, Document};
use crate::platform::{self, Platform};
use oci_spec::image::{Descriptor, ImageIndex};
use std::io::Read;

/// An image narrowed to one platform, its config verified and read.
pub struct Resolved {
    /// Digest of the manifest (or of the index the reference named); none for docker-archive.
    pub manifest_digest: Option<Digest>,
    pub config_digest: Digest,
    pub config: Vec<u8>,
    /// The name the source gives the image (layout ref.name annotation, docker RepoTag).
    pub ref_name: Option<String>,
    /// Layer blobs as stored, bottom first.
    pub layers: Vec<LayerBlob>,
}

#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub digest: Digest,
    pub size: Option<u64>,
}

/// Opens a layer blob as stored (compressed or not).
pub trait Blobs: Send + Sync {
    fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send>>;
}

/// Content-addressed storage of an OCI layout (a directory or a tarball of one).
pub trait OciStore: Send + Sync {
    /// `index.json`, the layout's entry point (not content-addressed).
    fn index(&self) -> Result<Vec<u8>>;
    /// The raw bytes of a blob, unverified.
    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>>;
}

/// A small blob (manifest, config), read whole and verified.
pub fn read_verified(store: &dyn OciStore, digest: &Digest, what: &str, limit: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    store
        .blob(digest)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImportError::io(format!("reading {what}"), e))?;
    if bytes.len() as u64 > limit {
        return Err(ImportError::InvalidSource(format!("{what} {digest} is larger than {limit} bytes")));
    }
    digest.verify(what, &bytes)?;
    Ok(bytes)
}

/// Manifests and configs are small; a huge one is an attack or a mistake.
pub const DOCUMENT_LIMIT: u64 = 16 << 20;

/// The layout entry the user asked for: a tag (`org.opencontainers.image.ref.name`),
/// a digest, or the only entry.
pub fn pick_from_layout<'a>(index: &'a ImageIndex, reference: Option<&str>, where_: &str) -> Result<&'a Descriptor> {
    let name_of = |d: &Descriptor| d.annotations().as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name").cloned());
    let entries = index.manifests();
    let found = match reference {
        Some(r) if r.starts_with("sha256:") => entries.iter().find(|d| d.digest().to_string() == r),
        Some(r) => entries.iter().find(|d| name_of(d).as_deref() == Some(r)),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    found.ok_or_else(|| {
        let names: Vec<String> = entries.iter().map(|d| name_of(d).unwrap_or_else(|| d.digest().to_string())).collect();
        let what = match reference {
            Some(r) => format!("{where_} has no image {r:?}"),
            None => format!("{where_} holds {} images; say which one", entries.len()),
        };
        ImportError::NotFound(format!("{what}; it has: {}", if names.is_empty() { "nothing".into() } else { names.join(", ") }))
    })
}

/// From a descriptor in an OCI store down to one platform's manifest, then its config.
pub fn resolve_oci(store: &dyn OciStore, top: &Descriptor, want: &Platform) -> Result<Resolved> {
    let manifest_digest = manifest::digest_of(top)?;
    let mut digest = manifest_digest.clone();
    for _ in 0..4 {
        let bytes = read_verified(store, &digest, "manifest", DOCUMENT_LIMIT)?;
        match manifest::parse(&format!("manifest {digest}"), &bytes)? {
            Document::Index(idx) => digest = manifest::digest_of(platform::choose(&idx, want)?)?,
            Document::Manifest(m) => {
                let config_digest = manifest::digest_of(m.config())?;
                let config = read_verified(store, &config_digest, "image config", DOCUMENT_LIMIT)?;
                let layers = m
                    .layers()
                    .iter()
                    .map(|d| Ok(LayerBlob { digest: manifest::digest_of(d)?, size: manifest::size_of(d) }))
                    .collect::<Result<Vec<_>>>()?;
                let ref_name = top.annotations().as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name").cloned());
                return Ok(Resolved { manifest_digest: Some(manifest_digest), config_digest, config, ref_name, layers });
            }
        }
    }
    Err(ImportError::InvalidSource("image indexes nest deeper than 4 levels".into()))
}

/// Layer blobs of an OCI store, verified against their digests as they are read.
pub struct StoreBlobs<S: OciStore> {
    pub store: S,
    pub layers: Vec<LayerBlob>,
}

impl<S: OciStore> Blobs for StoreBlobs<S> {
    fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send>> {
        let d = &self.layers[index].digest;
        Ok(Box::new(VerifyingReader::new(self.store.blob(d)?, Some(d.clone()), format!("layer {index} ({d})"))))
    }
}
