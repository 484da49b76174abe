//! OCI image import for torkbot-sandbox: an image from a registry, an OCI
//! layout or an archive becomes one reproducible ext4 filesystem in a qcow2
//! file. Run as the `sandbox-image` binary by the Node library.

pub mod digest;
pub mod emit;
pub mod entry;
pub mod error;
pub mod layer;
pub mod manifest;
pub mod merge;
pub mod platform;
pub mod progress;
pub mod request;
pub mod scratch;
pub mod config;
pub mod ext4;
pub mod source;

use digest::Digest;
use error::{ImportError, Result};
use layer::{DecodedLayer, LayerStream};
use platform::Platform;
use progress::Reporter;
use request::{Outcome, Request, SourceSpec};
use serde_json::json;
use source::{archive, layout, registry, Blobs, Resolved};
use std::sync::Arc;

/// Resolves the source to this platform's image (downloading a registry's layers).
fn resolve(req: &Request, want: &Platform, report: &Reporter) -> Result<(Resolved, Box<dyn Blobs>)> {
    let from_store = |store: &dyn source::OciStore, reference: Option<&str>, where_: &str| -> Result<Resolved> {
        let index_bytes = store.index()?;
        let manifest::Document::Index(index) = manifest::parse(&format!("index.json of {where_}"), &index_bytes)? else {
            return Err(ImportError::InvalidSource(format!("index.json of {where_} is not an image index")));
        };
        let top = source::pick_from_layout(&index, reference, where_)?;
        source::resolve_oci(store, top, want)
    };
    match &req.source {
        SourceSpec::Registry { reference, username, password, token, plain_http, ca_cert_paths } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| ImportError::io("starting the download runtime", e))?;
            let opts = registry::RegistryOptions {
                reference,
                username: username.as_deref(),
                password: password.as_deref(),
                token: token.as_deref(),
                plain_http: *plain_http,
                ca_cert_paths,
            };
            let (resolved, blobs) = rt.block_on(registry::fetch(&opts, want, &req.work_dir, report))?;
            Ok((resolved, Box::new(blobs)))
        }
        SourceSpec::OciLayout { path, reference } => {
            let store = layout::LayoutDir::open(path.clone())?;
            let resolved = from_store(&store, reference.as_deref(), &path.display().to_string())?;
            let layers = resolved.layers.clone();
            Ok((resolved, Box::new(source::StoreBlobs { store, layers })))
        }
        SourceSpec::OciArchive { path, reference } => {
            let index = Arc::new(archive::TarIndex::open(path)?);
            if !index.is_oci_layout() {
                return Err(ImportError::InvalidSource(format!(
                    "{} is not an OCI archive (no oci-layout/index.json inside); for `docker save` output use docker-archive:",
                    path.display()
                )));
            }
            let resolved = from_store(&index, reference.as_deref(), &path.display().to_string())?;
            let layers = resolved.layers.clone();
            Ok((resolved, Box::new(source::StoreBlobs { store: index, layers })))
        }
        SourceSpec::Archive { path, reference } => {
            let index = Arc::new(archive::TarIndex::open(path)?);
            if index.has("manifest.json") {
                let (resolved, blobs) = archive::resolve_docker(index, reference.as_deref())?;
                Ok((resolved, Box::new(blobs)))
            } else if index.is_oci_layout() {
                let resolved = from_store(&index, reference.as_deref(), &path.display().to_string())?;
                let layers = resolved.layers.clone();
                Ok((resolved, Box::new(source::StoreBlobs { store: index, layers })))
            } else {
                Err(ImportError::InvalidSource(format!(
                    "{} is neither an OCI archive (oci-layout, index.json) nor a docker archive (manifest.json)",
                    path.display()
                )))
            }
        }
        SourceSpec::DockerArchive { path, reference } => {
            let index = Arc::new(archive::TarIndex::open(path)?);
            let (resolved, blobs) = archive::resolve_docker(index, reference.as_deref())?;
            Ok((resolved, Box::new(blobs)))
        }
    }
}

/// A blob that fails to decode is usually a corrupt one: say so (with both
/// digests) rather than report whatever the damaged bytes decoded to.
fn corrupt_blob(blobs: &dyn Blobs, layers: usize) -> Option<ImportError> {
    (0..layers).find_map(|i| {
        let mut r = blobs.open_layer(i).ok()?;
        match std::io::copy(&mut r, &mut std::io::sink()) {
            Err(e) => match ImportError::io("", e) {
                d @ ImportError::DigestMismatch { .. } => Some(d),
                _ => None,
            },
            Ok(_) => None,
        }
    })
}

/// The whole import: resolve, merge the layers into mke2fs, fix xattrs, write the qcow2.
pub fn run(req: &Request, report: &Reporter) -> Result<Outcome> {
    let want = req.platform.clone().unwrap_or_else(Platform::host);
    std::fs::create_dir_all(&req.work_dir).map_err(|e| ImportError::io("creating the work directory", e))?;
    let (resolved, blobs) = resolve(req, &want, report)?;
    let config = config::parse(&resolved.config)?;
    if config.diff_ids.len() != resolved.layers.len() {
        return Err(ImportError::InvalidSource(format!(
            "the manifest lists {} layers but the config {} diff_ids",
            resolved.layers.len(),
            config.diff_ids.len()
        )));
    }
    if !matches!(req.source, SourceSpec::Registry { .. }) {
        report.emit(
            "resolved",
            json!({
                "manifestDigest": resolved.manifest_digest.as_ref().map(Digest::as_str),
                "configDigest": resolved.config_digest.as_str(),
                "layers": resolved.layers.iter().map(|l| json!({ "digest": l.digest.as_str(), "size": l.size })).collect::<Vec<_>>(),
            }),
        );
    }

    let tools = ext4::Tools {
        mke2fs: &req.tools.mke2fs,
        debugfs: &req.tools.debugfs,
        qemu_img: &req.tools.qemu_img,
        library_path: req.tools.library_path.as_deref(),
    };
    let seed = ext4::uuid_from(&resolved.config_digest);
    let compressed: u64 = resolved.layers.iter().filter_map(|l| l.size).sum();
    let open = |i: usize| -> Result<Box<dyn LayerStream>> {
        let what = format!("layer {i} ({})", resolved.layers[i].digest);
        Ok(Box::new(DecodedLayer::open(blobs.open_layer(i)?, Some(config.diff_ids[i].clone()), &what)?))
    };
    let workdir = config.raw.config().as_ref().and_then(|c| c.working_dir().clone());
    let build = |raw: &scratch::RawImage| {
        ext4::build(&tools, &req.work_dir, raw.path(), ext4::first_size(compressed), &seed, |out| {
            merge::merge(resolved.layers.len(), &open, out, report, workdir.as_deref()).map(|(m, _)| m)
        })
    };
    report.stage("filesystem");
    let mut raw = scratch::RawImage::choose(&req.work_dir, scratch::expected_raw_bytes(compressed));
    let built = match build(&raw) {
        // The tmpfs filling up looks like any tool failure: the disk has the last word.
        Err(ImportError::Tool(_)) if raw.in_memory() => {
            raw = scratch::RawImage::on_disk(&req.work_dir);
            build(&raw)
        }
        other => other,
    };
    let (merged, size) = built.map_err(|e| corrupt_blob(&*blobs, resolved.layers.len()).unwrap_or(e))?;
    if !merged.xattrs.is_empty() {
        report.stage("xattrs");
        for p in ext4::apply_xattrs(&tools, &req.work_dir, raw.path(), &merged.xattrs)? {
            report.warn(format!("xattr on {p} not set: its name cannot be addressed by debugfs"));
        }
    }
    report.stage("qcow2");
    ext4::to_qcow2(&tools, raw.path(), &req.output, req.compress)?;
    raw.remove();
    report.stage("digest");
    let (digest, file_size) = ext4::file_digest(&req.output)?;
    let defaults = config::defaults(&config.raw, merged.passwd.as_deref(), merged.group.as_deref());
    Ok(Outcome {
        path: req.output.clone(),
        sha256: digest.hex().to_string(),
        file_size_bytes: file_size,
        virtual_size_bytes: size,
        format: "qcow2",
        filesystem: "ext4",
        manifest_digest: resolved.manifest_digest.map(|d| d.to_string()),
        config_digest: resolved.config_digest.to_string(),
        platform: config.platform,
        ref_name: resolved.ref_name,
        layers: resolved.layers.len(),
        entries: merged.entries,
        config: defaults,
    })
}
