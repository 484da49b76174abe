//! `sandbox-host`: one helper process per sandbox VM.
//!
//! Spawned by the Node addon with the control socket as fd 3. Reads one
//! `Launch` frame, starts the VMM backend, then relays guest frames between
//! Node and the guest's control port until either side goes away. It dies
//! with its parent (PR_SET_PDEATHSIG + EOF on the socket) and takes the VMM
//! with it, so no VM outlives the Node process that asked for it.

// Wire code: a number that does not fit is an error, never silently cut.
#![warn(clippy::cast_possible_truncation)]

mod backend;
mod block_store;
mod console;
mod diag;
mod disk_capture;
mod error;
mod faults;
mod fs_bridge;
mod guest;
mod lifeline;
mod link;
mod net;
mod qmp;
mod rate;
mod relay;
mod service;
mod snapshot;

use diag::Diag;
use error::HostError;
use faults::Faults;
use link::{NodeTx, NODE_QUEUE};
use sandbox_protocol::{self as proto, FrameDecoder, Kind};
use service::{Router, Service};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// The descriptor the addon hands us the Node socket on.
const NODE_FD: i32 = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut faults = None;
    match args.as_slice() {
        [flag] if flag == "--version" => {
            println!("sandbox-host {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        [flag] if flag == "--probe-krun" => {
            let p = backend::probe_krun();
            println!("{}", serde_json::json!({ "usable": p.usable, "reason": p.reason, "hardwareVirtualization": p.hardware_virtualization }));
            return;
        }
        [flag] if flag == "--qemu-args" => {
            // Prints the QEMU argv for a Launch read from stdin, so benchmarks
            // can measure the very same machine without the project's stack.
            let mut input = String::new();
            let _ = std::io::stdin().read_to_string(&mut input);
            match serde_json::from_str::<proto::Launch>(&input).map_err(|e| e.to_string()).and_then(|l| backend::qemu_args(&l).map_err(|e| e.to_string())) {
                Ok(args) => println!("{}", serde_json::json!(args)),
                Err(e) => {
                    eprintln!("sandbox-host: {e}");
                    std::process::exit(2);
                }
            }
            return;
        }
        [flag, spec] if flag == "--inject-faults" => match Faults::parse(spec) {
            Ok(f) => faults = Some(Arc::new(f)),
            Err(e) => {
                eprintln!("sandbox-host: {e}");
                std::process::exit(2);
            }
        },
        [] => {}
        _ => {
            eprintln!("sandbox-host: unknown arguments {args:?}; this helper is started by @torkbot/sandbox");
            std::process::exit(2);
        }
    }
    if let Err(e) = lifeline::die_with_parent() {
        eprintln!("sandbox-host: {e}");
        std::process::exit(1);
    }
    // The inherited descriptor must not leak into the VMM or any other child.
    // SAFETY: fcntl on a descriptor number has no memory effects.
    if unsafe { libc::fcntl(NODE_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        eprintln!("sandbox-host: fd {NODE_FD} is not open: start this helper through @torkbot/sandbox");
        std::process::exit(2);
    }
    // SAFETY: the addon passes a connected socket as fd 3 and nothing else owns it.
    let mut node = unsafe { UnixStream::from_raw_fd(NODE_FD) };
    let code = match run(&mut node, faults) {
        Ok(()) => 0,
        Err(HostError::Reported) => 1,
        Err(e) => {
            // Best effort: Node may already be gone.
            let _ = node.write_all(&proto::encode(0, &e.to_wire()));
            1
        }
    };
    std::process::exit(code);
}

fn run(node: &mut UnixStream, faults: Option<Arc<Faults>>) -> Result<(), HostError> {
    let (launch, leftover) = read_launch(node)?;
    let rt = relay::runtime()?;
    let (tx, rx) = NodeTx::new(NODE_QUEUE);
    let diag = Diag::new(tx.clone());
    let service = |spec| Service::new(spec, tx.clone(), diag.clone(), faults.clone());
    let persistent = launch.disks.iter().find_map(|d| d.cow.as_ref().filter(|c| c.mode == proto::CowMode::Persistent));
    let block = persistent.map(|c| {
        let deadline = c.store_timeout_ms.map_or(block_store::STORE_DEADLINE, |ms| std::time::Duration::from_millis(ms.get()));
        service(block_store::spec(deadline))
    });
    let files = (!launch.mounts.is_empty()).then(|| service(fs_bridge::spec()));
    let net_cfg = launch.network.as_ref().map(net::config).transpose()?;
    let net = net_cfg.as_ref().map(|c| service(net::spec(c.policy_deadline)));
    let services = backend::Services { tx: tx.clone(), diag: diag.clone(), faults: faults.clone(), block, files };
    let mut router = Router::default();
    let mut vm = backend::launch(&launch, &services, &mut router, rt.handle())?;
    let forwards = net::PortForwards::new(tx.clone());
    if let (Some(cfg), Some(stream), Some(net)) = (net_cfg, vm.net.take(), net) {
        router.add_service(net.clone());
        net::start(cfg, stream, net, &forwards, tx.clone(), diag.clone())?;
    }
    let mut requests: HashMap<u8, Arc<dyn relay::NodeRequestHandler>> = HashMap::new();
    requests.insert(Kind::PortForward as u8, forwards);
    let (guest, guest_rx) = relay::GuestLink::new();
    if let Some(cap) = vm.snapshot.take() {
        requests.insert(Kind::Checkpoint as u8, Arc::new(snapshot::Checkpointer::new(cap, guest.clone(), tx.clone())));
    }
    if let Some(r) = &launch.restore {
        // Before anything of Node's: the restored guest waits for it.
        guest.send(relay::GuestOut::Own(snapshot::resume_frame(r).map_err(HostError::Setup)?));
    }
    let launched = proto::Launched { vmm_pid: vm.pid(), backend: launch.backend, accel: vm.accel() };
    // The queue is empty: the first frame always fits.
    let _ = tx.try_send(proto::encode(0, &launched));
    let node = node.try_clone().map_err(HostError::NodeIo)?;
    let restored = launch.restore.is_some();
    relay::run(rt, node, leftover, vm, relay::Wiring { tx, rx, router, requests, guest, guest_rx, restored })
}

/// Blocks for the first frame, which must be `Launch`.
fn read_launch(node: &mut UnixStream) -> Result<(proto::Launch, FrameDecoder), HostError> {
    let mut dec = FrameDecoder::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(frame) = dec.next_frame().map_err(|e| HostError::Protocol(e.to_string()))? {
            if frame.kind != Kind::Launch {
                return Err(HostError::Protocol(format!("expected a Launch frame first, got {}", frame.kind.name())));
            }
            let launch = proto::decode(&frame.payload).map_err(|e| HostError::InvalidLaunch(e.to_string()))?;
            return Ok((launch, dec));
        }
        let n = node.read(&mut buf).map_err(HostError::NodeIo)?;
        if n == 0 {
            return Err(HostError::ParentGone);
        }
        dec.push(&buf[..n]);
    }
}
