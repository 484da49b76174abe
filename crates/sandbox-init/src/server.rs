//! The control loop: one poll(2) over the control port, SIGCHLD and every
//! process pipe. Single-threaded on purpose: PID 1 must stay simple.

use crate::cgroups::Containment;
use crate::files::watch::Watch;
use crate::process::{start_failed, Process};
use sandbox_protocol::{self as proto, Frame, FrameDecoder, Kind, Message};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

const READ_CHUNK: usize = 256 * 1024;
/// How often lingering command cgroups are checked for removal.
const SWEEP_MS: i32 = 500;
/// Watches one guest may hold at once (each is an inotify instance).
const MAX_WATCHES: usize = 64;
/// `owners` marker of a watch's inotify descriptor.
const WATCH_FD: u8 = 0xff;

pub struct Server {
    port: File,
    decoder: FrameDecoder,
    sigchld: OwnedFd,
    procs: HashMap<u32, Process>,
    by_pid: HashMap<i32, u32>,
    base_env: BTreeMap<String, String>,
    default_cwd: String,
    /// The workload's cgroups; `None` when the kernel has none (reported at boot).
    containment: Option<Containment>,
    out: Vec<u8>,
    /// Reply buffer of file requests (kept: a read places its data in it).
    file_out: Vec<u8>,
    /// `lane.fs.watch` watches, by watch id.
    watches: HashMap<u32, Watch>,
    /// The virtio-fs mounts, parents first: released around a checkpoint.
    mounts: Vec<proto::GuestMount>,
    /// Frames may still wait in the decoder: dispatching stopped after a Start so
    /// that the pipes of the processes already running are read first.
    backlog: bool,
}

/// What the loop should do after handling input.
enum Flow {
    Continue,
    Shutdown,
}

impl Server {
    pub fn new(
        port: File,
        decoder: FrameDecoder,
        base_env: BTreeMap<String, String>,
        default_cwd: String,
        containment: Option<Containment>,
    ) -> io::Result<Self> {
        Ok(Server {
            containment,
            port,
            decoder,
            sigchld: sigchld_fd()?,
            procs: HashMap::new(),
            by_pid: HashMap::new(),
            base_env,
            default_cwd,
            out: Vec::with_capacity(READ_CHUNK + 64),
            file_out: Vec::new(),
            watches: HashMap::new(),
            mounts: Vec::new(),
            backlog: false,
        })
    }

    /// The virtio-fs mounts init made at boot (released around checkpoints).
    pub fn with_mounts(mut self, mounts: Vec<proto::GuestMount>) -> Self {
        self.mounts = mounts;
        self
    }

    fn send<M: Message>(&mut self, channel: u32, msg: &M) -> io::Result<()> {
        self.out.clear();
        proto::encode_into(&mut self.out, channel, msg);
        self.port.write_all(&self.out)
    }

    pub fn run(mut self) -> io::Result<()> {
        // Frames that arrived together with Configure.
        if let Flow::Shutdown = self.dispatch_buffered()? {
            return Ok(());
        }
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let mut fds = vec![
                pollfd(self.port.as_raw_fd(), libc::POLLIN),
                pollfd(self.sigchld.as_raw_fd(), libc::POLLIN),
            ];
            // (channel, which) for every pipe entry after the first two.
            let mut owners: Vec<(u32, u8)> = Vec::new();
            for (&ch, p) in &self.procs {
                // A stream without credit is not polled: the pipe fills and the
                // writer blocks, which is the backpressure the host asked for.
                for (i, o) in p.out.iter().enumerate() {
                    if let (true, Some(f)) = (o.wants_read(), &o.file) {
                        fds.push(pollfd(f.as_raw_fd(), libc::POLLIN));
                        owners.push((ch, i as u8 + 1));
                    }
                }
                if let (Some(f), false) = (&p.stdin, p.stdin_queue.is_empty()) {
                    fds.push(pollfd(f.as_raw_fd(), libc::POLLOUT));
                    owners.push((ch, 0));
                }
            }
            // Always read: events go into the watch's bounded queue (or its overflow).
            for (&id, w) in &self.watches {
                fds.push(pollfd(w.fd(), libc::POLLIN));
                owners.push((id, WATCH_FD));
            }
            let timeout = if self.backlog { 0 } else { self.next_timeout_ms() };
            // SAFETY: `fds` is a live, exclusively borrowed array of exactly `fds.len()` pollfds.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.expire_deadlines();
            if let Some(c) = self.containment.as_mut().filter(|c| c.has_lingering()) {
                c.sweep();
            }
            for (i, &(ch, which)) in owners.iter().enumerate() {
                let revents = fds[i + 2].revents;
                if revents == 0 {
                    continue;
                }
                if which == WATCH_FD {
                    if let Some(w) = self.watches.get_mut(&ch) {
                        w.read();
                    }
                    self.flush_watch(ch)?;
                } else if which == 0 {
                    if let Some(p) = self.procs.get_mut(&ch) {
                        p.pump_stdin();
                    }
                    self.ack_stdin(ch)?;
                } else {
                    self.read_output(ch, which as usize - 1, &mut buf)?;
                    self.finish_if_done(ch)?;
                }
            }
            if fds[1].revents != 0 {
                self.drain_sigchld();
                self.reap(&mut buf)?;
            }
            if self.backlog {
                if let Flow::Shutdown = self.dispatch_buffered()? {
                    return Ok(());
                }
            }
            if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                let n = match self.port.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    // The host end is gone: nobody can ever talk to this guest again.
                    return Ok(());
                }
                self.decoder.push(&buf[..n]);
                if let Flow::Shutdown = self.dispatch_buffered()? {
                    return Ok(());
                }
            }
        }
    }

    /// Dispatches the frames the decoder holds, up to and including one Start:
    /// starting a process blocks this loop until it has exec'd (tens of ms under
    /// TCG), so a burst of Starts is interleaved with reading the output of the
    /// processes already started instead of holding all of it back.
    fn dispatch_buffered(&mut self) -> io::Result<Flow> {
        self.backlog = false;
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(Flow::Continue),
                Err(e) => {
                    // A corrupt stream cannot be resynchronised; the host ends the VM.
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            };
            let start = frame.kind == Kind::Start;
            if let Flow::Shutdown = self.dispatch(frame)? {
                return Ok(Flow::Shutdown);
            }
            if start {
                self.backlog = true;
                return Ok(Flow::Continue);
            }
        }
    }

    fn dispatch(&mut self, frame: Frame) -> io::Result<Flow> {
        let ch = frame.channel;
        match frame.kind {
            Kind::Start => {
                let start: proto::Start = match proto::decode(&frame.payload) {
                    Ok(s) => s,
                    Err(e) => {
                        return self.send(ch, &start_failed(libc::EINVAL, format!("bad start request: {e}"))).map(|_| Flow::Continue);
                    }
                };
                if self.procs.contains_key(&ch) {
                    return self.send(ch, &start_failed(libc::EEXIST, format!("channel {ch} is already in use"))).map(|_| Flow::Continue);
                }
                let leaf = match self.containment.as_mut().map(|c| c.leaf(ch)).transpose() {
                    Ok(leaf) => leaf,
                    Err(e) => return self.send(ch, &start_failed(libc::EAGAIN, format!("no cgroup for the command: {e}"))).map(|_| Flow::Continue),
                };
                match Process::spawn(&start, &self.base_env, &self.default_cwd, leaf) {
                    Ok(p) => {
                        let Some(pid) = proto::I32In::new(p.pid) else {
                            return Ok(Flow::Continue);
                        };
                        let started = proto::Started { pid };
                        self.by_pid.insert(p.pid, ch);
                        self.procs.insert(ch, p);
                        self.send(ch, &started)?;
                    }
                    Err(failed) => self.send(ch, &failed)?,
                }
            }
            Kind::Stdin => {
                if let Some(p) = self.procs.get_mut(&ch) {
                    if p.stdin.is_some() && !frame.payload.is_empty() {
                        p.stdin_queue.push_back(frame.payload);
                        p.pump_stdin();
                    } else {
                        // Nobody will read it: acknowledge so the host's writer is not stuck.
                        p.stdin_unacked += frame.payload.len() as u64;
                    }
                }
                self.ack_stdin(ch)?;
            }
            Kind::StdinEof => {
                if let Some(p) = self.procs.get_mut(&ch) {
                    p.stdin_eof = true;
                    p.pump_stdin();
                }
                self.ack_stdin(ch)?;
            }
            Kind::Credit => {
                if let (Some(p), Ok(c)) = (self.procs.get_mut(&ch), proto::decode::<proto::Credit>(&frame.payload)) {
                    p.out[0].credit = p.out[0].credit.saturating_add(c.stdout as u64);
                    p.out[1].credit = p.out[1].credit.saturating_add(c.stderr as u64);
                }
                if self.procs.get(&ch).is_some_and(|p| p.status.is_some()) {
                    let mut buf = vec![0u8; READ_CHUNK];
                    self.drain_exited(ch, &mut buf)?;
                }
            }
            Kind::Resize => {
                if let (Some(p), Ok(size)) = (self.procs.get(&ch), proto::decode::<proto::Resize>(&frame.payload)) {
                    p.resize(size);
                }
            }
            Kind::Signal => {
                if let (Some(p), Ok(sig)) = (self.procs.get(&ch), proto::decode::<proto::Signal>(&frame.payload)) {
                    p.kill_group(sig.signal.get());
                }
            }
            Kind::FileRequest => {
                let n = crate::files::serve(ch, &frame.payload, &mut self.file_out);
                self.port.write_all(&self.file_out[..n])?;
            }
            Kind::WatchStart => self.start_watch(ch, &frame.payload)?,
            Kind::WatchCredit => {
                if let (Some(w), Ok(c)) = (self.watches.get_mut(&ch), proto::decode::<proto::WatchCredit>(&frame.payload)) {
                    w.grant(c.events.get());
                    self.flush_watch(ch)?;
                }
            }
            Kind::WatchStop => {
                // A watch that already ended (its path gone) has nothing to answer.
                let stopped = self.watches.remove(&ch).is_some();
                if stopped {
                    self.send(ch, &proto::WatchEnd::Stopped {})?;
                }
            }
            Kind::Ping => self.port.write_all(&proto::encode_raw(Kind::Pong, 0, &[]))?,
            Kind::Quiesce => return self.quiesce(),
            Kind::Shutdown => return Ok(Flow::Shutdown),
            // Anything else is not meant for the guest; ignore it rather than trust it.
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn start_watch(&mut self, ch: u32, payload: &[u8]) -> io::Result<()> {
        let started = match proto::decode::<proto::WatchStart>(payload) {
            Err(_) => Err(libc::EINVAL),
            Ok(_) if self.watches.contains_key(&ch) => Err(libc::EEXIST),
            Ok(_) if self.watches.len() >= MAX_WATCHES => Err(libc::EMFILE),
            Ok(req) => Watch::start(&req),
        };
        match started {
            Ok(w) => {
                self.watches.insert(ch, w);
                self.port.write_all(&proto::encode_raw(Kind::Watching, ch, &[]))
            }
            Err(errno) => {
                let errno = if (1..=4095).contains(&errno) { errno } else { libc::EIO };
                let end = proto::WatchEnd::Error { code: proto::Text::truncated(crate::sys::errno_name(errno)), errno: proto::I32In::saturating(errno) };
                self.send(ch, &end)
            }
        }
    }

    /// Sends what a watch's credit allows; ends it once its path is gone and all is told.
    fn flush_watch(&mut self, ch: u32) -> io::Result<()> {
        while let Some(batch) = self.watches.get_mut(&ch).and_then(Watch::take_batch) {
            self.send(ch, &batch)?;
        }
        if self.watches.get(&ch).is_some_and(Watch::finished) {
            self.watches.remove(&ch);
            self.send(ch, &proto::WatchEnd::Gone {})?;
        }
        Ok(())
    }

    /// Reads one chunk (bounded by the stream's credit) and forwards it.
    /// Returns false when the stream had nothing to give (empty or closed).
    fn read_output(&mut self, ch: u32, idx: usize, buf: &mut [u8]) -> io::Result<bool> {
        let Some(p) = self.procs.get_mut(&ch) else { return Ok(false) };
        let exited = p.status.is_some();
        let pty = p.pty_master.is_some();
        let o = &mut p.out[idx];
        let Some(file) = o.file.as_mut() else {
            o.drained = true;
            return Ok(false);
        };
        // The payload is read straight into its place after the frame header:
        // under TCG every guest copy is emulated, so one fewer pass is real time.
        let room = buf.len() - proto::HEADER_LEN;
        let want = (o.credit.min(room as u64)) as usize;
        if want == 0 {
            return Ok(false);
        }
        let kind = if idx == 0 { Kind::Stdout } else { Kind::Stderr };
        match file.read(&mut buf[proto::HEADER_LEN..proto::HEADER_LEN + want]) {
            Ok(0) => {
                o.file = None;
                o.drained = true;
                Ok(false)
            }
            Ok(_) if p.detached => Ok(true),
            Ok(n) => {
                o.credit -= n as u64;
                buf[..proto::HEADER_LEN].copy_from_slice(&proto::frame_header(kind, ch, n));
                self.port.write_all(&buf[..proto::HEADER_LEN + n])?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A pipe is done at EOF, when every process holding it has
                // closed it (as a shell's `$(…)` and Node's execFile wait): the
                // command's tree is done. A pty is done when the session leader
                // exited and the terminal has nothing more to read.
                if exited && pty {
                    o.drained = true;
                }
                Ok(false)
            }
            Err(_) => {
                // EIO is how a pty master says every slave closed.
                o.file = None;
                o.drained = true;
                Ok(false)
            }
        }
    }

    /// After exit: forward what is left while credit lasts, then report Exit.
    fn drain_exited(&mut self, ch: u32, buf: &mut [u8]) -> io::Result<()> {
        for idx in 0..2 {
            while self.procs.get(&ch).is_some_and(|p| !p.out[idx].drained && p.out[idx].credit > 0) {
                if !self.read_output(ch, idx, buf)? {
                    break;
                }
            }
        }
        self.finish_if_done(ch)
    }

    fn finish_if_done(&mut self, ch: u32) -> io::Result<()> {
        if !self.procs.get(&ch).is_some_and(|p| p.finished()) {
            return Ok(());
        }
        let Some(mut p) = self.procs.remove(&ch) else { return Ok(()) };
        let exit = exit_of(p.status.unwrap_or(0), p.timed_out, p.oom_killed());
        if let (Some(c), Some(leaf)) = (self.containment.as_mut(), p.leaf.take()) {
            c.release(leaf);
        }
        if p.detached {
            return Ok(());
        }
        self.send(ch, &exit)
    }

    fn ack_stdin(&mut self, ch: u32) -> io::Result<()> {
        loop {
            let Some(p) = self.procs.get_mut(&ch) else { return Ok(()) };
            if p.detached {
                p.stdin_unacked = 0;
                return Ok(());
            }
            // One ack is at most the stdin window (the host never has more in flight).
            let bytes = u32::try_from(p.stdin_unacked.min(u64::from(proto::STDIN_WINDOW))).unwrap_or(proto::STDIN_WINDOW);
            let Some(ack) = proto::U32In::new(bytes) else { return Ok(()) };
            p.stdin_unacked -= u64::from(bytes);
            self.send(ch, &proto::StdinAck { bytes: ack })?;
        }
    }

    fn drain_sigchld(&mut self) {
        let mut info = [0u8; 128];
        loop {
            // SAFETY: reads at most `info.len()` bytes into `info`, from the signalfd we own.
            let n = unsafe { libc::read(self.sigchld.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if n <= 0 {
                break;
            }
        }
    }

    /// Reaps every exited child; PID 1 also inherits orphans, reaped here too.
    fn reap(&mut self, buf: &mut [u8]) -> io::Result<()> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes one int into `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return Ok(());
            }
            let Some(ch) = self.by_pid.remove(&pid) else { continue };
            if let Some(p) = self.procs.get_mut(&ch) {
                // The deadline stays armed: processes of the command that outlive
                // its leader (and hold its output open) are killed with it.
                p.status = Some(status);
                // Nobody reads stdin any more; unblock the host's writer.
                p.stdin_unacked += p.stdin_queue.iter().map(|b| b.len() as u64).sum::<u64>();
                p.stdin_queue.clear();
                p.stdin = None;
            }
            self.ack_stdin(ch)?;
            // Output written before exit is still in the pipes: deliver it first.
            self.drain_exited(ch, buf)?;
        }
    }

    fn next_timeout_ms(&self) -> i32 {
        let now = Instant::now();
        let deadline = self
            .procs
            .values()
            .filter_map(|p| p.deadline)
            .map(|d| i32::try_from(d.saturating_duration_since(now).as_millis()).unwrap_or(i32::MAX))
            .min();
        // Leaves of finished commands are removed once empty: look again soon.
        let sweep = self.containment.as_ref().is_some_and(Containment::has_lingering).then_some(SWEEP_MS);
        deadline.into_iter().chain(sweep).min().unwrap_or(-1)
    }

    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        for p in self.procs.values_mut() {
            if p.deadline.is_some_and(|d| d <= now) {
                p.deadline = None;
                p.timed_out = true;
                p.kill_group(libc::SIGKILL);
            }
        }
    }
}

/// Detached processes move to channels from here, out of the host's way.
const DETACHED_CHANNELS: u32 = 0x8000_0000;

impl Server {
    /// Acknowledges a `Quiesce`, then writes nothing until `Resume` arrives
    /// (the host captures the VM meanwhile). A restored guest wakes up here.
    ///
    /// QEMU cannot capture virtio-fs devices: the mounts are detached first
    /// (lazily: descriptors and working directories inside them stay valid
    /// handles but fail with ENOTCONN once the host unplugs the device) and
    /// mounted anew at the same paths once the host plugged the devices back.
    fn quiesce(&mut self) -> io::Result<Flow> {
        let mut warnings = Vec::new();
        for m in self.mounts.iter().rev() {
            if let Err(e) = crate::sys::umount(std::path::Path::new(&m.target), libc::MNT_DETACH) {
                warnings.push(format!("releasing mount {} for the checkpoint: {e}", m.target));
            }
        }
        self.port.write_all(&proto::encode_raw(Kind::Quiesced, 0, &[]))?;
        let mut buf = vec![0u8; 64 * 1024];
        let frame = loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            let mut fds = [pollfd(self.port.as_raw_fd(), libc::POLLIN)];
            // SAFETY: one live pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
            match self.port.read(&mut buf) {
                Ok(0) => return Ok(Flow::Shutdown),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        };
        match frame.kind {
            Kind::Resume => {}
            Kind::Shutdown => return Ok(Flow::Shutdown),
            // The helper sends nothing else while quiesced.
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} while quiesced", frame.kind.name()))),
        }
        let resume: proto::Resume = proto::decode(&frame.payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        for m in &self.mounts {
            if let Err(e) = crate::boot::mount_virtiofs(m) {
                warnings.push(format!("mount {} is gone after the checkpoint: mounting virtio-fs {} again failed: {e}", m.target, m.tag));
            }
        }
        if resume.restored {
            // Added to, not replaced: a mount that did not come back must be reported.
            warnings.extend(crate::resume::apply(&resume));
            if let Some(h) = &resume.hostname {
                self.base_env.insert("HOSTNAME".into(), h.to_string());
            }
            if let Some(pem) = &resume.ca_cert_pem {
                match crate::resume::install_ca(pem) {
                    Ok(env) => self.base_env.extend(env),
                    Err(e) => warnings.push(format!("the new interception CA could not be installed: {e}")),
                }
            }
            self.detach_all();
            // Their host is gone with its iterators.
            self.watches.clear();
        }
        let msg = crate::resume::resumed(self.procs.len(), warnings);
        self.send(0, &msg)?;
        Ok(Flow::Continue)
    }

    /// The host that started these processes is gone: they keep running with
    /// their output drained into nothing, on channels no host will use.
    fn detach_all(&mut self) {
        let procs = std::mem::take(&mut self.procs);
        self.by_pid.clear();
        for (i, (_, mut p)) in procs.into_iter().enumerate() {
            let ch = DETACHED_CHANNELS + u32::try_from(i).unwrap_or(0);
            p.detached = true;
            p.deadline = None;
            for o in &mut p.out {
                o.credit = u64::MAX;
            }
            p.stdin_queue.clear();
            p.stdin_unacked = 0;
            if p.status.is_none() {
                self.by_pid.insert(p.pid, ch);
            }
            self.procs.insert(ch, p);
        }
    }
}

/// The exit code of a status that is neither an exit nor a signal.
const EXIT_UNKNOWN: proto::I32In<0, 255> = match proto::I32In::new(255) {
    Some(c) => c,
    None => panic!("255 is an exit code"),
};

fn exit_of(status: i32, timed_out: bool, oom_killed: bool) -> proto::Exit {
    let (code, signal) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (255, None)
    };
    let code = if timed_out { 124 } else { code };
    proto::Exit {
        exit_code: proto::I32In::new(code).unwrap_or(EXIT_UNKNOWN),
        signal: signal.and_then(proto::I32In::new),
        timed_out,
        oom_killed,
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// Blocks SIGCHLD and returns a signalfd for it, so reaping happens in the loop.
fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: an all-zero sigset_t is valid before sigemptyset; every call gets a
    // pointer to that local set; the new descriptor is owned by the OwnedFd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
