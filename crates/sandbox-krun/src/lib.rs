//! The `krun` VMM backend: libkrun (through the `msb_krun` crates) inside the
//! per-VM helper process.
//!
//! This crate has three parts:
//!
//! * [`probe`]: a quick (no VM boot) answer to "can a libkrun guest really
//!   run on this host?", split into a fact reader ([`read_host_facts`]) and a
//!   pure decision ([`evaluate`]) so the decision can be unit tested.
//! * [`launch`]: the launch description ([`KrunLaunch`]), its validation
//!   ([`validate`]), its translation into an `msb_krun::VmBuilder`
//!   ([`prepare`] / [`KrunPlan`]) and [`enter`], which hands the calling
//!   process over to the VMM (it never returns on success).
//! * [`snapshot`]: checkpoint ([`snapshot::checkpoint`], on a running VM's
//!   `VmControl`) and restore ([`KrunLaunch::restore`]) of a VM.
//! * [`KrunError`]: every failure, as a value; nothing here panics on user
//!   input.
//!
//! `Vm::enter()` installs process-wide signal handlers and `_exit`s when the
//! guest shuts down: call [`enter`] only in a dedicated helper process (one VM
//! per process), never inside Node.
//!
//! TSI (transparent socket impersonation) is never enabled: the guest's only
//! network path is the virtio-net device backed by the project's own userspace
//! network stack (see [`KrunLaunch::net_fd`]).

pub mod fs;
pub mod error;
pub mod launch;
pub mod probe;
pub mod snapshot;

pub use error::KrunError;
pub use launch::{
    enter, kernel_cmdline_preview, prepare, validate, BuiltVm, ControlPort, DiskFormat, KrunDisk,
    KrunFsMount, KrunLaunch, KrunPlan, PlannedDisk, PreparedVm, DISK_ID_MAX_LEN, KERNEL_CMDLINE_MAX, MAX_CPUS,
    MAX_DISKS, MAX_MEMORY_MIB, MIN_MEMORY_MIB,
};
pub use snapshot::{checkpoint, CheckpointStats, KrunRestore, MemoryRestore};
pub use probe::{
    evaluate, probe_host, read_host_facts, CpuInfoFacts, HostFacts, HostOs, KrunProbe,
    KvmDeviceState,
};
