//! Fixed newstyle option haggling.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{transmission_flags, NbdError, ServeConfig};
use crate::disk::Disk;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
const CLIENT_NO_ZEROES: u32 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// Option payloads carry at most a name (≤ 4096 bytes) and a few info codes.
const MAX_OPTION_LEN: u32 = 8192;
/// A client haggling forever is stalling, not negotiating.
const MAX_OPTIONS: usize = 64;

pub(super) enum Outcome {
    Transmit,
    Closed,
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut msg = Vec::with_capacity(20 + data.len());
    msg.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    msg.extend_from_slice(&opt.to_be_bytes());
    msg.extend_from_slice(&kind.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    s.write_all(&msg).await?;
    Ok(())
}

/// Payload of NBD_OPT_INFO / NBD_OPT_GO is valid: name length, name, count,
/// count info codes, and nothing else.
fn info_request_valid(data: &[u8]) -> bool {
    let Some(name_len) = data
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return false;
    };
    let Some(rest) = data.get(4..).and_then(|r| r.get(name_len..)) else {
        return false;
    };
    let Some(n) = rest
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    else {
        return false;
    };
    rest.len() == 2 + 2 * n
}

pub(super) async fn negotiate<S, D>(
    s: &mut S,
    disk: &D,
    config: &ServeConfig,
) -> Result<Outcome, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Disk + ?Sized,
{
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    s.flush().await?;

    let client_flags = s.read_u32().await?;
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let size = disk.size();
    let flags = transmission_flags(disk);

    for _ in 0..MAX_OPTIONS {
        let magic = s.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION_LEN {
            return Err(NbdError::Protocol(format!(
                "option {opt} payload of {len} bytes"
            )));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;

        match opt {
            OPT_EXPORT_NAME => {
                // Single export: any name selects it.
                let mut msg = Vec::with_capacity(10 + 124);
                msg.extend_from_slice(&size.to_be_bytes());
                msg.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    msg.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&msg).await?;
                s.flush().await?;
                return Ok(Outcome::Transmit);
            }
            OPT_ABORT => {
                // The client may already be gone; its ACK is a courtesy.
                let _ = reply(s, opt, REP_ACK, &[]).await;
                let _ = s.flush().await;
                return Ok(Outcome::Closed);
            }
            OPT_LIST if len == 0 => {
                reply(s, opt, REP_SERVER, &0u32.to_be_bytes()).await?;
                reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO if info_request_valid(&data) => {
                let mut export = Vec::with_capacity(12);
                export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                export.extend_from_slice(&size.to_be_bytes());
                export.extend_from_slice(&flags.to_be_bytes());
                reply(s, opt, REP_INFO, &export).await?;
                let mut bsize = Vec::with_capacity(14);
                bsize.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                bsize.extend_from_slice(&1u32.to_be_bytes());
                bsize.extend_from_slice(&config.preferred_block.to_be_bytes());
                bsize.extend_from_slice(&config.max_request.to_be_bytes());
                reply(s, opt, REP_INFO, &bsize).await?;
                reply(s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    s.flush().await?;
                    return Ok(Outcome::Transmit);
                }
            }
            OPT_LIST | OPT_INFO | OPT_GO => reply(s, opt, REP_ERR_INVALID, &[]).await?,
            // STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers...
            _ => reply(s, opt, REP_ERR_UNSUP, &[]).await?,
        }
        s.flush().await?;
    }
    Err(NbdError::Protocol(format!(
        "more than {MAX_OPTIONS} options"
    )))
}
