//! The platform an image must be built for, and picking its manifest out of
//! a multi-platform index.

use crate::error::{ImportError, Result};
use oci_spec::image::{Descriptor, ImageIndex};
use serde::Deserialize;

/// `os/architecture[/variant]` in OCI (GOOS/GOARCH) spelling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The guest runs the host's architecture (no cross-architecture emulation).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            other => (other, None),
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: variant.map(String::from) }
    }

    pub fn describe(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

fn describe(d: &Descriptor) -> Option<String> {
    let p = d.platform().as_ref()?;
    let mut s = format!("{}/{}", p.os(), p.architecture());
    if let Some(v) = p.variant() {
        s.push('/');
        s.push_str(v);
    }
    Some(s)
}

/// The index entry for `want`: same os and architecture, preferring an exact
/// variant, then one without a variant (arm64 images often omit "v8").
/// Attestation entries (`unknown/unknown`) never match.
pub fn choose<'a>(index: &'a ImageIndex, want: &Platform) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            d.platform().as_ref().is_some_and(|p| p.os().to_string() == want.os && p.architecture().to_string() == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform().as_ref().and_then(|p| p.variant().clone());
    let exact = candidates.iter().find(|d| variant_of(d) == want.variant);
    let loose = candidates.iter().find(|d| variant_of(d).is_none());
    if let Some(d) = exact.or(loose).or(candidates.first()) {
        return Ok(d);
    }
    let mut available: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(describe)
        .filter(|p| !p.starts_with("unknown/"))
        .collect();
    available.dedup();
    Err(ImportError::Platform(format!(
        "the image index has no manifest for {} (this host's platform); it offers: {}",
        want.describe(),
        if available.is_empty() { "no platform-tagged manifests".to_string() } else { available.join(", ") }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut platform = serde_json::json!({ "os": os, "architecture": arch });
                if let Some(v) = variant {
                    platform["variant"] = serde_json::json!(v);
                }
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{:064x}", i),
                    "size": 1,
                    "platform": platform,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "schemaVersion": 2, "manifests": manifests })).unwrap()
    }

    #[test]
    fn picks_the_host_entry() {
        let idx = index(&[("linux", "arm", Some("v7")), ("linux", "amd64", None), ("unknown", "unknown", None)]);
        let want = Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
        assert_eq!(choose(&idx, &want).unwrap().digest().to_string(), format!("sha256:{:064x}", 1));
    }

    #[test]
    fn arm64_variant_is_optional() {
        let idx = index(&[("linux", "arm64", None)]);
        let want = Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
        assert!(choose(&idx, &want).is_ok());
    }

    #[test]
    fn missing_platform_lists_what_exists() {
        let idx = index(&[("linux", "arm", Some("v7")), ("linux", "s390x", None), ("unknown", "unknown", None)]);
        let want = Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
        let msg = choose(&idx, &want).unwrap_err().to_string();
        assert!(msg.contains("linux/amd64") && msg.contains("linux/arm/v7, linux/s390x"), "{msg}");
    }
}
