//! A registry through the OCI distribution API, spoken by `oci-client`
//! (anonymous, basic and token auth; every manifest and blob verified
//! against its digest by the client). Layers are downloaded concurrently
//! into the work directory, then merged from there.

use super::{Blobs, LayerBlob, Resolved, DOCUMENT_LIMIT};
use crate::digest::Digest;
use crate::error::{ImportError, Result};
use crate::manifest::{self, Document};
use crate::platform::{self, Platform};
use crate::progress::Reporter;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;

pub struct RegistryOptions<'a> {
    pub reference: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub token: Option<&'a str>,
    pub plain_http: bool,
    pub ca_cert_paths: &'a [PathBuf],
}

/// Parallel layer downloads (what docker and skopeo use by default).
const CONCURRENT_DOWNLOADS: usize = 3;

struct Ctx<'a> {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    registry: String,
    with_credentials: bool,
    report: &'a Reporter,
}

impl Ctx<'_> {
    /// oci-client's errors, as the typed failures Node reports.
    fn map(&self, e: OciDistributionError) -> ImportError {
        let r = &self.registry;
        let needs = "pass credentials (CLI: --username and --password-stdin; API: importImage(ref, { auth: { username, password } }))";
        match e {
            OciDistributionError::AuthenticationFailure(why) => {
                ImportError::Auth(format!("{r} refused the credentials: {}", why.trim()))
            }
            OciDistributionError::UnauthorizedError { url } => ImportError::Auth(if self.with_credentials {
                format!("{r} refused the credentials for {url}: check the username and password (or token)")
            } else {
                format!("{r} requires authentication for {url}; {needs}")
            }),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let text = envelope.to_string();
                if codes.iter().any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown)) {
                    ImportError::NotFound(format!("{} was not found on {r} ({text})", self.reference))
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    ImportError::Auth(format!("{r} denied access to {url} ({text}); {needs}"))
                } else {
                    ImportError::InvalidSource(format!("{r} answered {url} with an error: {text}"))
                }
            }
            OciDistributionError::ServerError { code: 404, url, .. } | OciDistributionError::ImageManifestNotFoundError(url) => {
                ImportError::NotFound(format!("{} was not found on {r} ({url})", self.reference))
            }
            OciDistributionError::ServerError { code: 403, url, .. } => ImportError::Auth(format!("{r} denied access to {url}; {needs}")),
            OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
                ImportError::DigestMismatch { what: format!("a blob from {r}"), expected, actual }
            }
            OciDistributionError::RequestError(e) => {
                let hint = if self.reference.registry().starts_with("127.") || self.reference.registry().starts_with("localhost") {
                    " (a local registry without TLS needs plainHttp: true / --plain-http)"
                } else {
                    ""
                };
                ImportError::Network(format!("cannot talk to {r}: {e}{hint}"))
            }
            OciDistributionError::IoError(e) => ImportError::io(format!("downloading from {r}"), e),
            other => ImportError::InvalidSource(format!("{r}: {other}")),
        }
    }

    async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, Digest)> {
        let (bytes, digest) =
            self.client.pull_manifest_raw(reference, &self.auth, manifest::ACCEPTED).await.map_err(|e| self.map(e))?;
        if bytes.len() as u64 > DOCUMENT_LIMIT {
            return Err(ImportError::InvalidSource(format!("the manifest of {reference} is larger than {DOCUMENT_LIMIT} bytes")));
        }
        let digest = Digest::parse(&digest)?;
        // oci-client checks a digest-pinned reference; check every manifest anyway.
        digest.verify(&format!("the manifest of {reference}"), &bytes)?;
        Ok((bytes.to_vec(), digest))
    }
}

fn client_config(plain_http: bool, ca_cert_paths: &[PathBuf]) -> Result<ClientConfig> {
    let mut extra = Vec::new();
    for p in ca_cert_paths {
        let data = std::fs::read(p).map_err(|e| ImportError::io(format!("reading CA certificate {}", p.display()), e))?;
        extra.push(Certificate { encoding: CertificateEncoding::Pem, data });
    }
    Ok(ClientConfig {
        protocol: if plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        // We pick the platform ourselves, with an error that lists what exists.
        platform_resolver: None,
        extra_root_certificates: extra,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..ClientConfig::default()
    })
}

/// Resolves the reference to one platform's image and downloads its layers into `dir`.
pub async fn fetch(opts: &RegistryOptions<'_>, want: &Platform, dir: &Path, report: &Reporter) -> Result<(Resolved, FileBlobs)> {
    let reference = Reference::try_from(opts.reference).map_err(|e| {
        ImportError::InvalidSource(format!(
            "{:?} is not an image reference ({e}); use registry/repository:tag or registry/repository@sha256:…",
            opts.reference
        ))
    })?;
    let auth = match (opts.token, opts.username) {
        (Some(t), _) => RegistryAuth::Bearer(t.to_string()),
        (None, Some(u)) => RegistryAuth::Basic(u.to_string(), opts.password.unwrap_or_default().to_string()),
        (None, None) => RegistryAuth::Anonymous,
    };
    let ctx = Ctx {
        client: Client::new(client_config(opts.plain_http, opts.ca_cert_paths)?),
        registry: reference.resolve_registry().to_string(),
        with_credentials: !matches!(auth, RegistryAuth::Anonymous),
        reference,
        auth,
        report,
    };
    // Authenticate first, so a wrong password is reported as such (not as a missing manifest).
    ctx.client.auth(&ctx.reference, &ctx.auth, RegistryOperation::Pull).await.map_err(|e| ctx.map(e))?;

    let (top, top_digest) = ctx.manifest(&ctx.reference).await?;
    let mut bytes = top;
    let mut digest = top_digest.clone();
    let m = loop {
        match manifest::parse(&format!("manifest {digest}"), &bytes)? {
            Document::Manifest(m) => break m,
            Document::Index(idx) => {
                let chosen = manifest::digest_of(platform::choose(&idx, want)?)?;
                (bytes, digest) = ctx.manifest(&ctx.reference.clone_with_digest(chosen.to_string())).await?;
                if digest != chosen {
                    return Err(ImportError::DigestMismatch { what: "a platform manifest".into(), expected: chosen.to_string(), actual: digest.to_string() });
                }
            }
        }
    };

    let config_digest = manifest::digest_of(m.config())?;
    let mut config = Vec::new();
    ctx.client.pull_blob(&ctx.reference, config_digest.as_str(), &mut config).await.map_err(|e| ctx.map(e))?;
    config_digest.verify("the image config", &config)?;

    let layers: Vec<LayerBlob> = m
        .layers()
        .iter()
        .map(|d| Ok(LayerBlob { digest: manifest::digest_of(d)?, size: manifest::size_of(d) }))
        .collect::<Result<_>>()?;
    report.emit(
        "resolved",
        json!({
            "manifestDigest": digest.as_str(),
            "configDigest": config_digest.as_str(),
            "layers": layers.iter().map(|l| json!({ "digest": l.digest.as_str(), "size": l.size })).collect::<Vec<_>>(),
        }),
    );

    let blob_dir = dir.join("blobs");
    tokio::fs::create_dir_all(&blob_dir).await.map_err(|e| ImportError::io("creating the download directory", e))?;
    let ctx = &ctx;
    let paths: Vec<PathBuf> = stream::iter(layers.iter().enumerate())
        .map(|(i, l)| {
            let path = blob_dir.join(l.digest.hex());
            async move {
                let file = tokio::fs::File::create(&path).await.map_err(|e| ImportError::io("creating a layer file", e))?;
                let mut out = Counting { inner: file, done: 0, total: l.size, layer: i, report: ctx.report };
                ctx.client.pull_blob(&ctx.reference, l.digest.as_str(), &mut out).await.map_err(|e| ctx.map(e))?;
                ctx.report.throttled(&format!("dl-{i}"), "download", json!({ "layer": i, "bytes": out.done, "total": l.size, "done": true }), true);
                Ok::<_, ImportError>(path)
            }
        })
        .buffered(CONCURRENT_DOWNLOADS)
        .try_collect()
        .await?;

    let ref_name = ctx.reference.tag().map(String::from);
    Ok((Resolved { manifest_digest: Some(top_digest), config_digest, config, ref_name, layers }, FileBlobs { paths: Arc::new(paths) }))
}

/// Downloaded layers; oci-client verified each as it was written.
pub struct FileBlobs {
    paths: Arc<Vec<PathBuf>>,
}

impl Blobs for FileBlobs {
    fn open_layer(&self, i: usize) -> Result<Box<dyn Read + Send>> {
        let p = &self.paths[i];
        Ok(Box::new(std::fs::File::open(p).map_err(|e| ImportError::io(format!("opening {}", p.display()), e))?))
    }
}

/// A file writer that reports download progress.
struct Counting<'a> {
    inner: tokio::fs::File,
    done: u64,
    total: Option<u64>,
    layer: usize,
    report: &'a Reporter,
}

impl AsyncWrite for Counting<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.done += n as u64;
            this.report.throttled(&format!("dl-{}", this.layer), "download", json!({ "layer": this.layer, "bytes": this.done, "total": this.total }), false);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
