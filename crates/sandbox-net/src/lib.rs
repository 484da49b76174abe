//! Userspace termination of a guest's network for the per-VM helper. See README.md.

pub mod addr;
pub mod config;
pub mod device;
pub mod dns;
pub mod event;
pub mod flows;
pub mod frames;
mod host;
pub mod packet;
pub mod stack;

pub use addr::{Category, Cidr};
pub use config::{HostAddrs, NetConfig};
pub use event::{Malformed, NetEvent, Stats, Verdict};
pub use flows::{BoxFuture, Decision, FlowInfo, Policy, PolicyError, PolicyFailure, Proto};
pub use stack::{NetControl, NetError, NetStack};
