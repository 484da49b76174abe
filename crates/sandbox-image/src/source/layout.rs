//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).

use super::OciStore;
use crate::digest::Digest;
use crate::error::{ImportError, Result};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

pub struct LayoutDir {
    pub root: PathBuf,
}

impl LayoutDir {
    pub fn open(root: PathBuf) -> Result<LayoutDir> {
        if !root.join("oci-layout").is_file() || !root.join("index.json").is_file() {
            return Err(ImportError::InvalidSource(format!(
                "{} is not an OCI image layout (no oci-layout and index.json); create one with `skopeo copy … oci:DIR:TAG` or `umoci init`",
                root.display()
            )));
        }
        Ok(LayoutDir { root })
    }
}

impl OciStore for LayoutDir {
    fn index(&self) -> Result<Vec<u8>> {
        let p = self.root.join("index.json");
        std::fs::read(&p).map_err(|e| ImportError::io(format!("reading {}", p.display()), e))
    }

    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let p = self.root.join("blobs").join("sha256").join(digest.hex());
        match File::open(&p) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ImportError::NotFound(format!("blob {digest} is missing from the layout ({})", p.display())))
            }
            Err(e) => Err(ImportError::io(format!("opening {}", p.display()), e)),
        }
    }
}
