//! Every message type, grouped by who speaks it.

mod block;
mod boot;
mod files;
mod fs;
mod helper;
mod net;
mod process;
mod snapshot;
mod watch;

pub use block::*;
pub use boot::*;
pub use files::*;
pub use fs::*;
pub use helper::*;
pub use net::*;
pub use process::*;
pub use snapshot::*;
pub use watch::*;
