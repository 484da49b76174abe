//! Host probe: can a libkrun guest really run here?
//!
//! The presence of `/dev/kvm` is not enough. Some hosts (e.g. sandboxes
//! running on PVM, "pagetable-based virtual machine") provide `/dev/kvm`
//! through the `kvm_pvm` module without hardware virtualization: only kernels
//! built as PVM guests run there at speed, an ordinary kernel such as the
//! libkrunfw one is emulated instruction by instruction and dies early with
//! `KVM_EXIT_INTERNAL_ERROR`. The probe therefore also looks at the CPU's
//! virtualization flags and at the module that provides KVM.
//!
//! [`read_host_facts`] gathers the facts (a few small file reads and one
//! `open` of `/dev/kvm`, no VM boot; well under 100 ms), [`evaluate`] decides
//! from them, and [`probe_host`] does both.

use std::fmt;

/// The answer of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunProbe {
    /// Whether a libkrun guest can run on this host.
    pub usable: bool,
    /// Why, in words meant for the user (what is present or missing and what
    /// it means).
    pub reason: String,
}

/// The operating system the probe runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOs {
    Linux,
    MacOs,
    Other(String),
}

/// What opening `/dev/kvm` read-write gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmDeviceState {
    /// `/dev/kvm` does not exist.
    Missing,
    /// `/dev/kvm` exists but is not a character device.
    NotCharDevice,
    /// `/dev/kvm` exists but could not be opened read-write (the OS error).
    NoAccess(String),
    /// `/dev/kvm` opened read-write; `api_version` is the answer of
    /// `KVM_GET_API_VERSION` (12 on every current kernel), if the ioctl worked.
    Usable { api_version: Option<i32> },
}

/// What `/proc/cpuinfo` says about hardware virtualization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuInfoFacts {
    /// `/proc/cpuinfo` could not be read (the OS error).
    Unreadable(String),
    /// The relevant flags of the first CPU.
    Read {
        /// Intel VT-x.
        vmx: bool,
        /// AMD-V.
        svm: bool,
        /// The host itself runs under a hypervisor.
        hypervisor: bool,
    },
}

/// Everything the probe decides from. Built by [`read_host_facts`] on a real
/// system, or by hand in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub os: HostOs,
    /// `std::env::consts::ARCH` of the host (`x86_64`, `aarch64`, ...).
    pub arch: String,
    pub kvm_device: KvmDeviceState,
    pub cpuinfo: CpuInfoFacts,
    /// Names of the loaded kernel modules whose name starts with `kvm`
    /// (from `/sys/module` and `/proc/modules`), e.g. `kvm`, `kvm_intel`,
    /// `kvm_amd`, `kvm_pvm`. Sorted, without duplicates.
    pub kvm_modules: Vec<String>,
    /// The host kernel command line carries `nested_pvm=...` (a PVM host).
    pub cmdline_mentions_pvm: bool,
}

impl fmt::Display for KvmDeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmDeviceState::Missing => write!(f, "/dev/kvm is missing"),
            KvmDeviceState::NotCharDevice => write!(f, "/dev/kvm is not a character device"),
            KvmDeviceState::NoAccess(e) => write!(f, "/dev/kvm cannot be opened read-write ({e})"),
            KvmDeviceState::Usable { .. } => write!(f, "/dev/kvm opens read-write"),
        }
    }
}

/// Probes this host: reads the facts and evaluates them.
pub fn probe_host() -> KrunProbe {
    evaluate(&read_host_facts())
}

/// Decides from `facts` whether a libkrun guest can run. Pure: no I/O.
pub fn evaluate(facts: &HostFacts) -> KrunProbe {
    match &facts.os {
        HostOs::Linux => evaluate_linux(facts),
        HostOs::MacOs => evaluate_macos(facts),
        HostOs::Other(os) => not_usable(format!(
            "the krun backend runs on Linux (KVM) and macOS (Hypervisor.framework), not on {os}"
        )),
    }
}

const KRUN_NEEDS: &str = "the krun backend needs hardware virtualization through KVM \
                          (Intel VT-x or AMD-V); use the qemu backend on this host";

fn evaluate_linux(facts: &HostFacts) -> KrunProbe {
    let has_pvm = facts.kvm_modules.iter().any(|m| m == "kvm_pvm");
    let is_x86 = facts.arch == "x86_64" || facts.arch == "x86";
    let (vmx, svm, hypervisor, cpuinfo_err) = match &facts.cpuinfo {
        CpuInfoFacts::Read {
            vmx,
            svm,
            hypervisor,
        } => (*vmx, *svm, *hypervisor, None),
        CpuInfoFacts::Unreadable(e) => (false, false, false, Some(e.as_str())),
    };
    // Only x86 advertises virtualization support in /proc/cpuinfo; on aarch64
    // the presence of a real (non-PVM) /dev/kvm is the evidence.
    let hw_virt = !is_x86 || vmx || svm;

    let mut problems: Vec<String> = Vec::new();

    if has_pvm {
        let flags = if is_x86 && !vmx && !svm {
            " and the CPU advertises neither vmx nor svm"
        } else {
            ""
        };
        problems.push(format!(
            "/dev/kvm is provided by the kvm_pvm module (pagetable-based virtualization{}){flags}; \
             that KVM only runs kernels built as PVM guests, and the libkrunfw kernel is not one \
             (it would die early with KVM_EXIT_INTERNAL_ERROR)",
            if facts.cmdline_mentions_pvm {
                ", host booted with nested_pvm"
            } else {
                ""
            }
        ));
    } else if facts.cmdline_mentions_pvm && !hw_virt {
        problems.push(
            "the host kernel runs in PVM mode (nested_pvm on its command line): KVM here only \
             runs PVM guest kernels, not the libkrunfw kernel"
                .to_string(),
        );
    }

    if is_x86 && !has_pvm {
        match cpuinfo_err {
            Some(e) => problems.push(format!(
                "/proc/cpuinfo cannot be read ({e}), so hardware virtualization (vmx/svm) \
                 cannot be confirmed"
            )),
            None if !vmx && !svm => problems.push(if hypervisor {
                "the CPU advertises neither vmx (Intel VT-x) nor svm (AMD-V): this host is itself \
                 a virtual machine without nested virtualization"
                    .to_string()
            } else {
                "the CPU advertises neither vmx (Intel VT-x) nor svm (AMD-V): hardware \
                 virtualization is absent or disabled in the firmware"
                    .to_string()
            }),
            None => {}
        }
    }

    match &facts.kvm_device {
        KvmDeviceState::Usable { .. } => {}
        KvmDeviceState::Missing => problems.push(if hw_virt {
            "/dev/kvm is missing: load the KVM module (kvm_intel or kvm_amd)".to_string()
        } else {
            "/dev/kvm is missing".to_string()
        }),
        KvmDeviceState::NotCharDevice => {
            problems.push("/dev/kvm exists but is not a character device".to_string())
        }
        KvmDeviceState::NoAccess(e) => problems.push(format!(
            "/dev/kvm exists but cannot be opened read-write ({e}): give this user access to it, \
             usually by adding it to the 'kvm' group"
        )),
    }

    if let KvmDeviceState::Usable {
        api_version: Some(v),
    } = facts.kvm_device
    {
        if v != 12 {
            problems.push(format!(
                "/dev/kvm reports KVM API version {v}, libkrun needs version 12"
            ));
        }
    }

    if problems.is_empty() {
        let what = if vmx {
            "vmx (Intel VT-x)"
        } else if svm {
            "svm (AMD-V)"
        } else {
            "hardware virtualization"
        };
        let provider = facts
            .kvm_modules
            .iter()
            .find(|m| m.as_str() != "kvm")
            .map(|m| format!(" via {m}"))
            .unwrap_or_default();
        return KrunProbe {
            usable: true,
            reason: format!(
                "KVM is usable: /dev/kvm opens read-write{provider} and the CPU has {what}"
            ),
        };
    }

    not_usable(format!(
        "libkrun guests cannot run on this host: {}; {KRUN_NEEDS}",
        problems.join("; ")
    ))
}

fn evaluate_macos(facts: &HostFacts) -> KrunProbe {
    if facts.arch == "aarch64" {
        KrunProbe {
            usable: true,
            reason: "macOS on Apple silicon: the krun backend uses Hypervisor.framework (not \
                     probed here; the helper must be signed with the \
                     com.apple.security.hypervisor entitlement, see `npx @torkbot/sandbox \
                     setup-macos`)"
                .to_string(),
        }
    } else {
        not_usable(format!(
            "the krun backend on macOS needs Apple silicon (aarch64), this host is {}; use the \
             qemu backend",
            facts.arch
        ))
    }
}

fn not_usable(reason: String) -> KrunProbe {
    KrunProbe {
        usable: false,
        reason,
    }
}

// ---------------------------------------------------------------------------
// Reading the facts
// ---------------------------------------------------------------------------

/// Gathers [`HostFacts`] from this system. Never fails: what cannot be read is
/// recorded as such.
pub fn read_host_facts() -> HostFacts {
    let os = if cfg!(target_os = "linux") {
        HostOs::Linux
    } else if cfg!(target_os = "macos") {
        HostOs::MacOs
    } else {
        HostOs::Other(std::env::consts::OS.to_string())
    };
    let arch = std::env::consts::ARCH.to_string();
    if os != HostOs::Linux {
        return HostFacts {
            os,
            arch,
            kvm_device: KvmDeviceState::Missing,
            cpuinfo: CpuInfoFacts::Unreadable("not Linux".to_string()),
            kvm_modules: Vec::new(),
            cmdline_mentions_pvm: false,
        };
    }

    let cpuinfo = match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => parse_cpuinfo(&text),
        Err(e) => CpuInfoFacts::Unreadable(e.to_string()),
    };

    let mut kvm_modules: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/module") {
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                if name.starts_with("kvm") {
                    kvm_modules.push(name.to_string());
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/modules") {
        kvm_modules.extend(parse_proc_modules(&text));
    }
    kvm_modules.sort();
    kvm_modules.dedup();

    let cmdline_mentions_pvm = std::fs::read_to_string("/proc/cmdline")
        .map(|c| cmdline_has_pvm(&c))
        .unwrap_or(false);

    HostFacts {
        os,
        arch,
        kvm_device: read_kvm_device(),
        cpuinfo,
        kvm_modules,
        cmdline_mentions_pvm,
    }
}

/// Extracts the virtualization flags of the first CPU in `/proc/cpuinfo`.
pub(crate) fn parse_cpuinfo(text: &str) -> CpuInfoFacts {
    let mut vmx = false;
    let mut svm = false;
    let mut hypervisor = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() == "flags" {
            for flag in value.split_whitespace() {
                match flag {
                    "vmx" => vmx = true,
                    "svm" => svm = true,
                    "hypervisor" => hypervisor = true,
                    _ => {}
                }
            }
            // All CPUs of a host report the same virtualization flags.
            break;
        }
    }
    CpuInfoFacts::Read {
        vmx,
        svm,
        hypervisor,
    }
}

/// Names of `kvm*` modules in the text of `/proc/modules`.
pub(crate) fn parse_proc_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("kvm"))
        .map(str::to_string)
        .collect()
}

pub(crate) fn cmdline_has_pvm(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| {
        let key = w.split('=').next().unwrap_or("");
        key == "nested_pvm" || key.starts_with("kvm_pvm.")
    })
}

#[cfg(target_os = "linux")]
fn read_kvm_device() -> KvmDeviceState {
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::io::AsRawFd;

    let path = "/dev/kvm";
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return KvmDeviceState::Missing,
        Err(e) => return KvmDeviceState::NoAccess(e.to_string()),
        Ok(m) if !m.file_type().is_char_device() => return KvmDeviceState::NotCharDevice,
        Ok(_) => {}
    }
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => {
            // KVM_GET_API_VERSION = _IO(KVMIO = 0xAE, 0x00); takes no argument.
            const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
            // SAFETY: the fd is open and owned by `file` for the duration of
            // the call; this ioctl reads no memory from us.
            let v = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
            KvmDeviceState::Usable {
                api_version: (v >= 0).then_some(v),
            }
        }
        Err(e) => KvmDeviceState::NoAccess(e.to_string()),
    }
}

#[cfg(not(target_os = "linux"))]
fn read_kvm_device() -> KvmDeviceState {
    KvmDeviceState::Missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(kvm: KvmDeviceState, vmx: bool, svm: bool, modules: &[&str]) -> HostFacts {
        HostFacts {
            os: HostOs::Linux,
            arch: "x86_64".into(),
            kvm_device: kvm,
            cpuinfo: CpuInfoFacts::Read {
                vmx,
                svm,
                hypervisor: true,
            },
            kvm_modules: modules.iter().map(|s| s.to_string()).collect(),
            cmdline_mentions_pvm: false,
        }
    }

    const OPEN: KvmDeviceState = KvmDeviceState::Usable {
        api_version: Some(12),
    };

    #[test]
    fn pvm_host_is_not_usable() {
        let mut facts = linux(OPEN, false, false, &["kvm", "kvm_pvm"]);
        facts.cmdline_mentions_pvm = true;
        let p = evaluate(&facts);
        assert!(!p.usable);
        assert!(p.reason.contains("kvm_pvm"), "{}", p.reason);
        assert!(p.reason.contains("neither vmx nor svm"), "{}", p.reason);
        assert!(p.reason.contains("qemu"), "{}", p.reason);
    }

    #[test]
    fn pvm_module_wins_even_with_vmx() {
        // A PVM host with nested VT-x exposed still hands out the PVM /dev/kvm.
        let p = evaluate(&linux(OPEN, true, false, &["kvm", "kvm_pvm"]));
        assert!(!p.usable);
        assert!(p.reason.contains("kvm_pvm"));
    }

    #[test]
    fn vmx_with_real_kvm_is_usable() {
        let p = evaluate(&linux(OPEN, true, false, &["kvm", "kvm_intel"]));
        assert!(p.usable, "{}", p.reason);
        assert!(p.reason.contains("vmx"));
        assert!(p.reason.contains("kvm_intel"));
    }

    #[test]
    fn svm_with_builtin_kvm_is_usable() {
        // Built-in KVM may not show up as a module at all.
        let p = evaluate(&linux(OPEN, false, true, &[]));
        assert!(p.usable, "{}", p.reason);
        assert!(p.reason.contains("svm"));
    }

    #[test]
    fn missing_dev_kvm_is_not_usable() {
        let p = evaluate(&linux(KvmDeviceState::Missing, true, false, &[]));
        assert!(!p.usable);
        assert!(p.reason.contains("/dev/kvm is missing"), "{}", p.reason);
        assert!(p.reason.contains("kvm_intel or kvm_amd"), "{}", p.reason);
    }

    #[test]
    fn inaccessible_dev_kvm_is_not_usable() {
        let p = evaluate(&linux(
            KvmDeviceState::NoAccess("Permission denied (os error 13)".into()),
            true,
            false,
            &["kvm", "kvm_intel"],
        ));
        assert!(!p.usable);
        assert!(p.reason.contains("Permission denied"));
        assert!(p.reason.contains("'kvm' group"));
    }

    #[test]
    fn no_virt_flags_is_not_usable_even_with_dev_kvm() {
        let p = evaluate(&linux(OPEN, false, false, &["kvm"]));
        assert!(!p.usable);
        assert!(p.reason.contains("neither vmx"), "{}", p.reason);
        assert!(p.reason.contains("nested virtualization"), "{}", p.reason);
    }

    #[test]
    fn pvm_cmdline_without_module_is_not_usable() {
        let mut facts = linux(OPEN, false, false, &["kvm"]);
        facts.cmdline_mentions_pvm = true;
        let p = evaluate(&facts);
        assert!(!p.usable);
        assert!(p.reason.contains("PVM"), "{}", p.reason);
    }

    #[test]
    fn unreadable_cpuinfo_is_not_usable_on_x86() {
        let mut facts = linux(OPEN, false, false, &["kvm", "kvm_intel"]);
        facts.cpuinfo = CpuInfoFacts::Unreadable("No such file or directory".into());
        let p = evaluate(&facts);
        assert!(!p.usable);
        assert!(p.reason.contains("/proc/cpuinfo cannot be read"));
    }

    #[test]
    fn aarch64_needs_no_cpu_flags() {
        let mut facts = linux(OPEN, false, false, &["kvm"]);
        facts.arch = "aarch64".into();
        assert!(evaluate(&facts).usable);
    }

    #[test]
    fn wrong_api_version_is_not_usable() {
        let p = evaluate(&linux(
            KvmDeviceState::Usable {
                api_version: Some(11),
            },
            true,
            false,
            &["kvm", "kvm_intel"],
        ));
        assert!(!p.usable);
        assert!(p.reason.contains("API version 11"));
    }

    #[test]
    fn macos_and_other_os() {
        let mut facts = linux(KvmDeviceState::Missing, false, false, &[]);
        facts.os = HostOs::MacOs;
        facts.arch = "aarch64".into();
        let p = evaluate(&facts);
        assert!(p.usable);
        assert!(p.reason.contains("Hypervisor.framework"));
        facts.arch = "x86_64".into();
        assert!(!evaluate(&facts).usable);
        facts.os = HostOs::Other("freebsd".into());
        let p = evaluate(&facts);
        assert!(!p.usable);
        assert!(p.reason.contains("freebsd"));
    }

    #[test]
    fn parses_cpuinfo_flags() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse2 vmx \
                    hypervisor lm\n\nprocessor\t: 1\nflags\t\t: fpu svm\n";
        assert_eq!(
            parse_cpuinfo(text),
            CpuInfoFacts::Read {
                vmx: true,
                svm: false,
                hypervisor: true
            }
        );
        assert_eq!(
            parse_cpuinfo("flags : fpu vmxnet svmx\n"),
            CpuInfoFacts::Read {
                vmx: false,
                svm: false,
                hypervisor: false
            }
        );
    }

    #[test]
    fn parses_proc_modules_and_cmdline() {
        let text =
            "kvm_pvm 131072 0 - Live 0x0\nkvm 1146880 1 kvm_pvm, Live 0x0\nfuse 1 0 - Live\n";
        assert_eq!(parse_proc_modules(text), vec!["kvm_pvm", "kvm"]);
        assert!(cmdline_has_pvm("quiet nested_pvm=1 panic=1"));
        assert!(!cmdline_has_pvm("quiet panic=1 my_nested_pvm=1"));
    }

    #[test]
    fn probe_host_is_fast_and_explains_itself() {
        let start = std::time::Instant::now();
        let p = probe_host();
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_millis(100), "{took:?}");
        assert!(!p.reason.is_empty());
        eprintln!(
            "probe_host: usable={} reason={} ({took:?})",
            p.usable, p.reason
        );
    }
}
