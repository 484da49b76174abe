//! The guest side of the network: loopback, `eth0` with a static address and a
//! default route (ioctls: images need not ship `ip`), and /etc/resolv.conf pointing
//! at the sandbox resolver without writing to a read-only root.

use crate::boot::BootError;
use sandbox_protocol::BootStage;
use sandbox_protocol::GuestNet;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NET_MODULE_LIST: &str = "/etc/sandbox/modules.net";
const RESOLV: &str = "/etc/resolv.conf";
const RUN_RESOLV: &str = "/run/sandbox/resolv.conf";

fn fail(message: impl Into<String>) -> BootError {
    BootError { stage: BootStage::Network, message: message.into() }
}

/// Loads the NIC driver; called from the initramfs, before the root switch.
pub fn load_modules() -> Result<(), BootError> {
    let list = fs::read_to_string(NET_MODULE_LIST).map_err(|e| fail(format!("{NET_MODULE_LIST}: {e} (initramfs built without network modules)")))?;
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        crate::sys::finit_module(Path::new(line)).map_err(|e| fail(format!("load {line}: {e}")))?;
    }
    Ok(())
}

/// `lo` up in every guest: local services work with or without a network.
pub fn loopback_up() -> Result<(), BootError> {
    let s = Sock::new().map_err(|e| fail(format!("socket: {e}")))?;
    s.up("lo").map_err(|e| fail(format!("bring lo up: {e}")))
}

/// Configures eth0, the resolver and the guest's own name.
pub fn configure(n: &GuestNet, hostname: &str) -> Result<(), BootError> {
    let parse = |what: &str, v: &str| v.parse::<Ipv4Addr>().map_err(|_| fail(format!("{what} {v:?} is not an IPv4 address")));
    let addr = parse("address", &n.address)?;
    let gw = parse("gateway", &n.gateway)?;
    let ns = parse("nameserver", &n.nameserver)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new("/sys/class/net/eth0").exists() {
        if Instant::now() > deadline {
            return Err(fail("no eth0 appeared within 10 s (is the virtio-net device attached?)"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mask = Ipv4Addr::from(u32::MAX << (32 - n.prefix_len.get()));
    let s = Sock::new().map_err(|e| fail(format!("socket: {e}")))?;
    s.set_addr("eth0", libc::SIOCSIFADDR, addr).map_err(|e| fail(format!("eth0 address {addr}: {e}")))?;
    s.set_addr("eth0", libc::SIOCSIFNETMASK, mask).map_err(|e| fail(format!("eth0 netmask {mask}: {e}")))?;
    s.set_mtu("eth0", n.mtu.get()).map_err(|e| fail(format!("eth0 mtu: {e}")))?;
    s.up("eth0").map_err(|e| fail(format!("bring eth0 up: {e}")))?;
    s.default_route(gw).map_err(|e| fail(format!("default route via {gw}: {e}")))?;
    if let Some(v6) = &n.ipv6 {
        configure_v6(v6)?;
    }
    resolv_conf(ns)?;
    hosts(hostname);
    Ok(())
}

/// A static IPv6 address and default route on eth0. Duplicate address detection and
/// router advertisements are turned off first: nothing else is on this link, and a
/// tentative address would make the first connections fail.
fn configure_v6(n: &sandbox_protocol::GuestNet6) -> Result<(), BootError> {
    let parse = |what: &str, v: &str| v.parse::<Ipv6Addr>().map_err(|_| fail(format!("{what} {v:?} is not an IPv6 address")));
    let addr = parse("ipv6 address", &n.address)?;
    let gw = parse("ipv6 gateway", &n.gateway)?;
    let conf = Path::new("/proc/sys/net/ipv6/conf/eth0");
    if !conf.exists() {
        // A kernel without IPv6 (some libkrunfw builds): the guest stays IPv4-only.
        eprintln!("sandbox-init: no IPv6 on eth0 (kernel without CONFIG_IPV6); the guest network is IPv4 only");
        return Ok(());
    }
    // Best effort: without them the address is only tentative for a moment.
    for (knob, value) in [("accept_dad", "0"), ("accept_ra", "0"), ("autoconf", "0"), ("router_solicitations", "0")] {
        let _ = fs::write(conf.join(knob), value);
    }
    let index = if_index("eth0").map_err(|e| fail(format!("eth0 index: {e}")))?;
    let s = Sock::new_v6().map_err(|e| fail(format!("socket(AF_INET6): {e}")))?;
    let mut req = libc::in6_ifreq { ifr6_addr: in6(addr), ifr6_prefixlen: n.prefix_len.get(), ifr6_ifindex: index };
    s.ioctl(libc::SIOCSIFADDR, &mut req).map_err(|e| fail(format!("eth0 address {addr}/{}: {e}", n.prefix_len.get())))?;
    let mut rt = Rt6Msg {
        dst: in6(Ipv6Addr::UNSPECIFIED),
        src: in6(Ipv6Addr::UNSPECIFIED),
        gateway: in6(gw),
        kind: 0,
        dst_len: 0,
        src_len: 0,
        metric: 1,
        info: 0,
        flags: (libc::RTF_UP | libc::RTF_GATEWAY) as u32,
        ifindex: index,
    };
    s.ioctl(libc::SIOCADDRT, &mut rt).map_err(|e| fail(format!("IPv6 default route via {gw}: {e}")))
}

fn in6(a: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: a.octets() }
}

fn if_index(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string alive for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(i).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// The guest's own hostname resolves locally (as on any Linux host), so programs
/// that look it up do not send it to the policy and upstream resolvers. Best effort:
/// an image without a regular /etc/hosts keeps its own arrangement.
fn hosts(hostname: &str) {
    let etc = Path::new("/etc/hosts");
    if !fs::symlink_metadata(etc).is_ok_and(|m| m.file_type().is_file()) {
        return;
    }
    let text = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let run = Path::new("/run/sandbox/hosts");
    if fs::write(run, text).is_ok() {
        let _ = crate::sys::mount("/run/sandbox/hosts", etc, "", libc::MS_BIND, None);
    }
}

/// Points /etc/resolv.conf at `ns`. The file lives on init's /run tmpfs and is
/// bind-mounted over the image's (or written where the image's symlink points into
/// /run), so a read-only root stays untouched.
fn resolv_conf(ns: Ipv4Addr) -> Result<(), BootError> {
    let text = format!("# written by sandbox-init: the sandbox resolver answers per the host's policy\nnameserver {ns}\noptions edns0\n");
    let run = Path::new(RUN_RESOLV);
    let _ = fs::create_dir_all("/run/sandbox");
    fs::write(run, &text).map_err(|e| fail(format!("{RUN_RESOLV}: {e}")))?;
    let etc = Path::new(RESOLV);
    match fs::symlink_metadata(etc) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = fs::read_link(etc).map_err(|e| fail(format!("{RESOLV}: {e}")))?;
            let abs = if target.is_absolute() { target } else { Path::new("/etc").join(target) };
            let abs = normalize(&abs);
            if !abs.starts_with("/run") {
                return Err(fail(format!("{RESOLV} is a symlink to {} outside /run; cannot point it at the sandbox resolver", abs.display())));
            }
            if let Some(dir) = abs.parent() {
                let _ = fs::create_dir_all(dir);
            }
            fs::write(&abs, &text).map_err(|e| fail(format!("{}: {e}", abs.display())))
        }
        Ok(_) => crate::sys::mount(RUN_RESOLV, etc, "", libc::MS_BIND, None).map_err(|e| fail(format!("bind {RUN_RESOLV} over {RESOLV}: {e}"))),
        Err(_) => fs::write(etc, &text).map_err(|e| {
            fail(format!("the image has no {RESOLV} and it cannot be created ({e}); add an empty /etc/resolv.conf to the image"))
        }),
    }
}

/// Resolves `.` and `..` lexically (the link target may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(x) => out.push(x),
            _ => {}
        }
    }
    out
}

/// An AF_INET (or AF_INET6) datagram socket used only for interface ioctls.
struct Sock(i32);

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

/// `struct rtentry` of <net/route.h> (x86-64 and aarch64 layouts agree).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

/// `struct in6_rtmsg` of <linux/ipv6_route.h> (libc's has private fields).
#[repr(C)]
struct Rt6Msg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(a).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the API is used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

impl Sock {
    fn new() -> io::Result<Self> {
        Self::of(libc::AF_INET)
    }

    fn new_v6() -> io::Result<Self> {
        Self::of(libc::AF_INET6)
    }

    fn of(family: libc::c_int) -> io::Result<Self> {
        // SAFETY: socket(2) takes plain integers; the descriptor is owned by the returned Sock.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn req(name: &str) -> IfReq {
        let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }

    fn ioctl<T>(&self, op: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is the structure this request expects, alive for the call.
        let rc = unsafe { libc::ioctl(self.0, op as _, arg as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn set_addr(&self, dev: &str, op: libc::c_ulong, a: Ipv4Addr) -> io::Result<()> {
        let mut r = Self::req(dev);
        let sa = sockaddr_in(a);
        // SAFETY: plain bytes of a 16-byte sockaddr into the 24-byte union.
        let bytes: [u8; 16] = unsafe { std::mem::transmute(sa) };
        r.data[..16].copy_from_slice(&bytes);
        self.ioctl(op, &mut r)
    }

    fn set_mtu(&self, dev: &str, mtu: u32) -> io::Result<()> {
        let mut r = Self::req(dev);
        r.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
        self.ioctl(libc::SIOCSIFMTU, &mut r)
    }

    fn up(&self, dev: &str) -> io::Result<()> {
        let mut r = Self::req(dev);
        self.ioctl(libc::SIOCGIFFLAGS, &mut r)?;
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        self.ioctl(libc::SIOCSIFFLAGS, &mut r)
    }

    fn default_route(&self, gw: Ipv4Addr) -> io::Result<()> {
        let mut rt = RtEntry {
            pad1: 0,
            dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            gateway: sockaddr_in(gw),
            genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            pad2: 0,
            pad3: 0,
            pad4: std::ptr::null_mut(),
            metric: 0,
            dev: std::ptr::null_mut(),
            mtu: 0,
            window: 0,
            irtt: 0,
        };
        self.ioctl(libc::SIOCADDRT, &mut rt)
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: the Sock owns this descriptor and closes it exactly once.
        unsafe { libc::close(self.0) };
    }
}
