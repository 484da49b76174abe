//! Processes: one channel (chosen by the host, ≥ 1) per process.

use crate::bounded::{I32In, Text, U16In, U32In};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Output window a process starts with when `Start.window` is absent.
pub const DEFAULT_WINDOW: u32 = 1024 * 1024;
/// Stdin bytes the host may have in flight before an acknowledgement.
pub const STDIN_WINDOW: u32 = 256 * 1024;
/// Largest initial output window the host may ask for.
pub const MAX_WINDOW: u32 = 16 * 1024 * 1024;

/// host → guest: start a process on this channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Start {
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<Text<4096>>,
    /// Whether the host will send stdin; otherwise stdin is /dev/null.
    pub stdin: bool,
    /// Kill the process group and report exit code 124 after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<U32In<1, 2147483648>>,
    /// Run under a new pseudo-terminal of this size (stdout carries the terminal output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Resize>,
    /// Initial output window per stream in bytes; the host extends it with `Credit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<U32In<1, MAX_WINDOW>>,
}

impl Start {
    /// The output window this process starts with, per stream.
    pub fn initial_window(&self) -> u32 {
        self.window.map_or(DEFAULT_WINDOW, U32In::get)
    }
}

/// host → guest: the terminal size of a pty process (also `Start.pty`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resize {
    pub rows: U16In<1, 65535>,
    pub cols: U16In<1, 65535>,
}

/// host → guest: the host consumed output; the guest may send this many more bytes per stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credit {
    #[serde(default)]
    pub stdout: u32,
    #[serde(default)]
    pub stderr: u32,
}

/// guest → host: stdin bytes handed to the process; the host may send this many more.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StdinAck {
    pub bytes: U32In<1, STDIN_WINDOW>,
}

/// guest → host: the process runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Started {
    pub pid: I32In<2, 4194304>,
}

/// guest → host: the process could not be started; the channel is finished.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartFailed {
    /// errno name, e.g. `ENOENT`.
    pub code: Text<32>,
    pub errno: I32In<1, 4095>,
    pub message: Text<4096>,
}

/// guest → host: the process ended; the channel is finished.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exit {
    /// Exit status; 128+signal when killed by a signal; 124 on timeout.
    pub exit_code: I32In<0, 255>,
    pub signal: Option<I32In<1, 64>>,
    pub timed_out: bool,
    /// The kernel's OOM killer ended the command (its process tree, killed as one).
    #[serde(default)]
    pub oom_killed: bool,
}

/// host → guest: signal the whole process group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Signal {
    pub signal: I32In<1, 64>,
}
