//! What Node asks for (one JSON document on stdin; credentials never on the
//! command line) and what comes back.

use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub source: SourceSpec,
    /// Default: the host's platform.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Scratch space (downloaded blobs, the raw ext4); removed by the caller.
    pub work_dir: PathBuf,
    /// Where the qcow2 goes.
    pub output: PathBuf,
    /// zlib-compressed clusters (`qemu-img convert -c`): smaller, much slower to write.
    #[serde(default)]
    pub compress: bool,
    pub tools: Tools,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SourceSpec {
    #[serde(rename_all = "camelCase")]
    Registry {
        reference: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        /// A bearer token used as is (e.g. from a cloud provider's CLI).
        #[serde(default)]
        token: Option<String>,
        /// Talk HTTP instead of HTTPS to this registry.
        #[serde(default)]
        plain_http: bool,
        /// Extra PEM roots to trust for the registry's TLS certificate.
        #[serde(default)]
        ca_cert_paths: Vec<PathBuf>,
    },
    /// An OCI image layout directory; `reference` is a tag (ref.name annotation) or a digest.
    OciLayout {
        path: PathBuf,
        #[serde(default)]
        reference: Option<String>,
    },
    /// A tarball of an OCI image layout.
    OciArchive {
        path: PathBuf,
        #[serde(default)]
        reference: Option<String>,
    },
    /// Either kind of archive, recognised by its content.
    Archive {
        path: PathBuf,
        #[serde(default)]
        reference: Option<String>,
    },
    /// `docker save` / `skopeo copy … docker-archive:` output; `reference` picks one of its RepoTags.
    DockerArchive {
        path: PathBuf,
        #[serde(default)]
        reference: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tools {
    /// e2fsprogs ≥ 1.47.1 built with libarchive (tarball input to `-d`).
    pub mke2fs: PathBuf,
    pub debugfs: PathBuf,
    pub qemu_img: PathBuf,
    /// LD_LIBRARY_PATH for mke2fs/debugfs (a private libext2fs next to them).
    #[serde(default)]
    pub library_path: Option<PathBuf>,
}

/// The image as written, reported in the final `done` event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub path: PathBuf,
    pub sha256: String,
    pub file_size_bytes: u64,
    pub virtual_size_bytes: u64,
    pub format: &'static str,
    pub filesystem: &'static str,
    pub manifest_digest: Option<String>,
    pub config_digest: String,
    pub platform: String,
    /// The tag the source gave the image (layout ref.name, docker RepoTag).
    pub ref_name: Option<String>,
    pub layers: usize,
    pub entries: u64,
    pub config: crate::config::ImageDefaults,
}
