//! The image config's runtime defaults (Env, WorkingDir, User, Entrypoint,
//! Cmd), with `User` resolved to numeric ids against the image's own
//! /etc/passwd and /etc/group, the way container runtimes do it.

use crate::digest::Digest;
use crate::error::{ImportError, Result};
use oci_spec::image::ImageConfiguration;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageDefaults {
    /// `KEY=value` entries, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `User` exactly as the config says it.
    pub user: Option<String>,
    /// `User` resolved; absent for root (or no `User`).
    pub resolved_user: Option<ResolvedUser>,
    /// Why `User` could not be resolved; the image then refuses to boot.
    pub user_error: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from /etc/group.
    pub groups: Vec<u32>,
    pub home: String,
}

pub struct ParsedConfig {
    pub diff_ids: Vec<Digest>,
    pub platform: String,
    pub raw: ImageConfiguration,
}

pub fn parse(bytes: &[u8]) -> Result<ParsedConfig> {
    let raw: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| ImportError::InvalidSource(format!("the image config is not valid: {e}")))?;
    let diff_ids = raw.rootfs().diff_ids().iter().map(|d| Digest::parse(d)).collect::<Result<Vec<_>>>()?;
    let mut platform = format!("{}/{}", raw.os(), raw.architecture());
    if let Some(v) = raw.variant() {
        platform.push('/');
        platform.push_str(v);
    }
    Ok(ParsedConfig { diff_ids, platform, raw })
}

pub fn defaults(config: &ImageConfiguration, passwd: Option<&[u8]>, group: Option<&[u8]>) -> ImageDefaults {
    let Some(c) = config.config() else { return ImageDefaults::default() };
    let user = c.user().clone().filter(|u| !u.is_empty());
    let (resolved_user, user_error) = match &user {
        None => (None, None),
        Some(u) => match resolve_user(u, passwd.unwrap_or_default(), group.unwrap_or_default()) {
            Ok(r) if r.uid == 0 && r.gid == 0 && r.groups.is_empty() => (None, None),
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        },
    };
    ImageDefaults {
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user,
        resolved_user,
        user_error,
        entrypoint: c.entrypoint().clone(),
        cmd: c.cmd().clone(),
        labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5] })
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].split(',').filter(|m| !m.is_empty()).collect()))
    })
}

/// `user`, `uid`, `user:group`, `uid:gid` (any mix of names and numbers).
pub fn resolve_user(spec: &str, passwd: &[u8], group: &[u8]) -> std::result::Result<ResolvedUser, String> {
    let passwd = String::from_utf8_lossy(passwd);
    let group = String::from_utf8_lossy(group);
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = passwd_entries(&passwd).find(|e| e.name == u || u.parse::<u32>().ok() == Some(e.uid));
    let uid = match (&entry, u.parse::<u32>()) {
        (Some(e), _) => e.uid,
        (None, Ok(n)) => n,
        (None, Err(_)) => return Err(format!("User {spec:?}: the image's /etc/passwd has no user {u:?}")),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(&group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| format!("User {spec:?}: the image's /etc/group has no group {g:?}"))?,
        },
        // A numeric user the image does not know runs with gid 0, as in runc.
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut groups: Vec<u32> = match (&entry, g) {
        (Some(e), None) => group_entries(&group).filter(|(_, _, m)| m.contains(&e.name)).map(|(_, gid, _)| gid).filter(|&x| x != gid).collect(),
        _ => Vec::new(),
    };
    groups.sort_unstable();
    groups.dedup();
    let home = entry.as_ref().map_or("/", |e| e.home).to_string();
    Ok(ResolvedUser { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &[u8] = b"root:x:0:\napp:x:1001:\nwheel:x:10:app,other\nstaff:x:50:app\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        assert_eq!(
            resolve_user("app", PASSWD, GROUP).unwrap(),
            ResolvedUser { uid: 1000, gid: 1001, groups: vec![10, 50], home: "/home/app".into() }
        );
        assert_eq!(resolve_user("1000:50", PASSWD, GROUP).unwrap(), ResolvedUser { uid: 1000, gid: 50, groups: vec![], home: "/home/app".into() });
        assert_eq!(resolve_user("4242", PASSWD, GROUP).unwrap(), ResolvedUser { uid: 4242, gid: 0, groups: vec![], home: "/".into() });
        assert_eq!(resolve_user("app:wheel", PASSWD, GROUP).unwrap().gid, 10);
        assert!(resolve_user("ghost", PASSWD, GROUP).unwrap_err().contains("no user \"ghost\""));
        assert!(resolve_user("app:nogroup", PASSWD, GROUP).is_err());
    }
}
