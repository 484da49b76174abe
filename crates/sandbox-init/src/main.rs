//! `sandbox-init`: PID 1 of every sandbox guest.
//!
//! Runs from the initramfs: mounts the kernel filesystems, loads the virtio
//! modules, opens the control port, says hello, receives its configuration,
//! switches into the block rootfs and then supervises processes until the
//! host asks it to power off. Every failure is reported to the host when the
//! control port is up, and printed on the console otherwise.

mod boot;
mod ca;
mod cgroups;
mod files;
mod net;
mod process;
mod resume;
mod server;
mod shutdown;
mod sys;

use sandbox_protocol::{self as proto, BootStage, FrameDecoder, Kind};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};

fn main() {
    if std::process::id() != 1 {
        eprintln!("sandbox-init {}: the sandbox guest's PID 1; it only runs inside a sandbox VM", env!("CARGO_PKG_VERSION"));
        std::process::exit(2);
    }
    let init_started_ms = sys::uptime_ms();
    if let Err(e) = boot::early_mounts().and_then(|_| boot::load_modules()) {
        console_fatal(&e.to_string());
    }
    let modules_loaded_ms = sys::uptime_ms();
    let port = match boot::open_control_port() {
        Ok(p) => p,
        Err(e) => console_fatal(&e.to_string()),
    };
    let mut link = Link { port, decoder: FrameDecoder::new() };
    let hello = proto::Hello {
        protocol: proto::PROTOCOL_VERSION,
        uptime_ms: ms(sys::uptime_ms()),
        init_started_ms: ms(init_started_ms),
        modules_loaded_ms: ms(modules_loaded_ms),
    };
    if link.send(&hello).is_err() {
        console_fatal("cannot write to the control port");
    }
    let cfg: proto::Configure = match link.wait_for(Kind::Configure) {
        Some(payload) => match proto::decode(&payload) {
            Ok(cfg) => cfg,
            Err(e) => link.fail(BootStage::Configure, &format!("bad configuration from host: {e}")),
        },
        None => power_off(),
    };
    let booted = (|| -> Result<boot::CaSetup, boot::BootError> {
        // Modules come from the initramfs, so they load before the switch.
        if cfg.network.is_some() {
            net::load_modules()?;
        }
        boot::load_fs_modules(&cfg)?;
        boot::switch_root(&cfg)?;
        boot::mount_virtual(&cfg)?;
        let ca = boot::setup_ca(&cfg)?;
        boot::finish(&cfg)?;
        net::loopback_up()?;
        cfg.network.as_ref().map_or(Ok(()), |n| net::configure(n, &cfg.hostname))?;
        Ok(ca)
    })();
    let boot::CaSetup { env: ca_env, warning: ca_warning } = match booted {
        Ok(ca) => ca,
        Err(e) => link.fail(e.stage, &e.message),
    };
    let mut warnings: Vec<_> = ca_warning.into_iter().map(proto::Text::truncated).collect();
    // Containment is what keeps init answering whatever the workload does; a
    // kernel without cgroup v2 boots without it, and the host is told.
    let containment = match cgroups::Containment::setup(cfg.limits.max_processes.get(), cfg.limits.workload_memory_mib.get()) {
        Ok(c) => Some(c),
        Err(e) => {
            warnings.push(proto::Text::truncated(format!("no cgroup containment, commands run without process and memory limits: {e}")));
            None
        }
    };
    let ready = proto::Ready { uptime_ms: ms(sys::uptime_ms()), kernel: proto::Text::truncated(boot::kernel_release()), warnings };
    if link.send(&ready).is_err() {
        power_off();
    }
    let mut env = BTreeMap::from([
        ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOME".to_string(), "/root".to_string()),
        ("HOSTNAME".to_string(), cfg.hostname.to_string()),
    ]);
    // The CA variables come before the host's env so a caller can still override them.
    env.extend(ca_env);
    env.extend(cfg.env.clone());
    process::set_default_user(cfg.user.clone());
    let server = match server::Server::new(link.port, link.decoder, env, cfg.cwd.to_string(), containment) {
        Ok(s) => s.with_mounts(cfg.mounts.clone()),
        Err(e) => console_fatal(&format!("control loop: {e}")),
    };
    if let Err(e) = server.run() {
        eprintln!("sandbox-init: control loop ended: {e}");
    }
    power_off();
}

/// The control port before the process server takes it over.
struct Link {
    port: File,
    decoder: FrameDecoder,
}

impl Link {
    fn send<M: proto::Message>(&mut self, msg: &M) -> std::io::Result<()> {
        self.port.write_all(&proto::encode(0, msg))
    }

    /// Blocks until a frame of `kind` arrives; `None` on EOF, Shutdown or a corrupt stream.
    fn wait_for(&mut self, kind: Kind) -> Option<Vec<u8>> {
        let mut buf = [0u8; 8192];
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) if f.kind == kind => return Some(f.payload),
                Ok(Some(f)) if f.kind == Kind::Shutdown => return None,
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return None,
            }
            match self.port.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Reports a boot failure to the host, then waits to be shut down.
    fn fail(&mut self, stage: BootStage, message: &str) -> ! {
        eprintln!("sandbox-init: {}: {message}", stage.as_str());
        let err = proto::InitError { stage, message: proto::Text::truncated(message) };
        let _ = self.send(&err);
        while self.wait_for(Kind::Shutdown).is_some() {}
        power_off()
    }
}

/// A guest uptime as a wire number (uptimes never approach 2^53 ms).
fn ms(v: u64) -> proto::JsU64 {
    proto::JsU64::saturating(v)
}

fn console_fatal(message: &str) -> ! {
    eprintln!("sandbox-init: fatal: {message}");
    power_off()
}

fn power_off() -> ! {
    shutdown::power_off()
}
