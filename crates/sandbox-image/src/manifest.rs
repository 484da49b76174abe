//! Manifest documents as every source delivers them: an index (OCI image
//! index or Docker manifest list) or an image manifest (OCI or Docker
//! schema 2), parsed with oci-spec's types.

use crate::digest::Digest;
use crate::error::{ImportError, Result};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

pub enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

/// Media types a registry may answer a manifest request with.
pub const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

pub fn parse(what: &str, bytes: &[u8]) -> Result<Document> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<i64>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| ImportError::InvalidSource(format!("{what} is not valid JSON: {e}")))?;
    if probe.schema_version != Some(2) {
        return Err(ImportError::Unsupported(format!(
            "{what} has schemaVersion {:?}; only schema 2 manifests (OCI, Docker v2) are supported — re-push the image with a current tool",
            probe.schema_version
        )));
    }
    let media = probe.media_type.as_deref().unwrap_or("");
    let is_index = media.contains("index") || media.contains("manifest.list") || (probe.manifests.is_some() && probe.layers.is_none());
    let bad = |e: serde_json::Error| ImportError::InvalidSource(format!("{what} is not a valid manifest: {e}"));
    if is_index {
        Ok(Document::Index(Box::new(serde_json::from_slice(bytes).map_err(bad)?)))
    } else {
        Ok(Document::Manifest(Box::new(serde_json::from_slice(bytes).map_err(bad)?)))
    }
}

/// The digest a descriptor names, validated.
pub fn digest_of(d: &Descriptor) -> Result<Digest> {
    Digest::parse(d.digest().as_ref())
}

/// A descriptor's size in bytes.
pub fn size_of(d: &Descriptor) -> Option<u64> {
    Some(d.size())
}
