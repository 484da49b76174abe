//! `sandbox-host`: one helper process per sandbox VM.
//!
//! Spawned by the Node addon with the control socket as fd 3. Reads one
//! `Launch` frame, starts the VMM backend, then relays guest frames between
//! Node and the guest's control port until either side goes away. It dies
//! with its parent (PR_SET_PDEATHSIG + EOF on the socket) and takes the VMM
//! with it, so no VM outlives the Node process that asked for it.

mod backend;
mod console;
mod error;
mod fs_bridge;
mod lifeline;
mod net;
mod node_store;
mod relay;

use error::HostError;
use sandbox_protocol::{self as proto, FrameDecoder, Kind};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

/// The descriptor the addon hands us the Node socket on.
const NODE_FD: i32 = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("sandbox-host {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some("--probe-krun") => {
            let p = backend::probe_krun();
            println!("{}", serde_json::json!({ "usable": p.usable, "reason": p.reason, "hardwareVirtualization": p.hardware_virtualization }));
            return;
        }
        Some("--qemu-args") => {
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
        Some(other) => {
            eprintln!("sandbox-host: unknown argument {other:?}; this helper is started by @torkbot/sandbox");
            std::process::exit(2);
        }
        None => {}
    }
    if let Err(e) = lifeline::die_with_parent() {
        eprintln!("sandbox-host: {e}");
        std::process::exit(1);
    }
    // The inherited descriptor must not leak into the VMM or any other child.
    if unsafe { libc::fcntl(NODE_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        eprintln!("sandbox-host: fd {NODE_FD} is not open: start this helper through @torkbot/sandbox");
        std::process::exit(2);
    }
    // SAFETY: the addon passes a connected socket as fd 3 and nothing else owns it.
    let mut node = unsafe { UnixStream::from_raw_fd(NODE_FD) };
    let code = match run(&mut node) {
        Ok(()) => 0,
        Err(e) => {
            let msg = proto::HelperError { message: e.to_string() };
            let mut out = Vec::new();
            proto::frame_into(&mut out, Kind::HelperError, 0, &proto::encode(&msg));
            let _ = node.write_all(&out);
            eprintln!("sandbox-host: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run(node: &mut UnixStream) -> Result<(), HostError> {
    let (launch, leftover) = read_launch(node)?;
    let deadline = launch
        .disks
        .iter()
        .find_map(|d| d.cow.as_ref()?.store_timeout_ms)
        .map(|ms| std::time::Duration::from_millis(ms.clamp(1, node_store::MAX_STORE_DEADLINE_MS)))
        .unwrap_or(node_store::STORE_DEADLINE);
    let (bridge, block_requests) = node_store::Bridge::new(deadline);
    let (fs_bridge, fs_requests) = fs_bridge::FsBridge::new(fs_bridge::FS_DEADLINE);
    let rt = relay::runtime()?;
    let net_cfg = launch.network.as_ref().map(net::config).transpose()?;
    let mut vm = backend::launch(&launch, &bridge, &fs_bridge, rt.handle())?;
    let (net_out, net_rx) = tokio::sync::mpsc::unbounded_channel();
    let net_bridge = net::NetBridge::new(net_out);
    if let (Some(cfg), Some(stream)) = (net_cfg, vm.net.take()) {
        net::start(cfg, stream, net_bridge.clone())?;
    }
    let launched = proto::Launched { vmm_pid: vm.pid(), backend: launch.backend, accel: vm.accel().to_string() };
    let mut out = Vec::new();
    proto::frame_into(&mut out, Kind::Launched, 0, &proto::encode(&launched));
    node.write_all(&out).map_err(HostError::NodeIo)?;
    let node = node.try_clone().map_err(HostError::NodeIo)?;
    relay::run(
        rt,
        node,
        leftover,
        vm,
        relay::Blocks { bridge, requests: block_requests },
        relay::Net { bridge: net_bridge, frames: net_rx },
        relay::Files { bridge: fs_bridge, requests: fs_requests },
    )
}

/// Blocks for the first frame, which must be `Launch`.
fn read_launch(node: &mut UnixStream) -> Result<(proto::Launch, FrameDecoder), HostError> {
    let mut dec = FrameDecoder::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(frame) = dec.next_frame().map_err(|e| HostError::Protocol(e.to_string()))? {
            if frame.kind != Kind::Launch {
                return Err(HostError::Protocol(format!("expected a Launch frame first, got {:?}", frame.kind)));
            }
            let launch = proto::decode(&frame.payload).map_err(|e| HostError::Protocol(format!("bad Launch: {e}")))?;
            return Ok((launch, dec));
        }
        let n = node.read(&mut buf).map_err(HostError::NodeIo)?;
        if n == 0 {
            return Err(HostError::ParentGone);
        }
        dec.push(&buf[..n]);
    }
}
