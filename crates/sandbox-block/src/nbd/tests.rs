//! Protocol tests with a hand-rolled (and sometimes hostile) client.

use std::sync::Arc;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::*;
use crate::disk::{Disk, ReadOnlyDisk};
use crate::overlay::{CowConfig, CowDisk, CowMode};
use crate::testutil::{mem_base, pattern};

const SIZE: usize = 256 * 1024;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

fn start(
    disk: Arc<dyn Disk>,
    config: ServeConfig,
) -> (DuplexStream, JoinHandle<Result<(), NbdError>>) {
    let (client, server) = duplex(1 << 20);
    let task = tokio::spawn(async move { serve_with(server, &*disk, &config).await });
    (client, task)
}

async fn cow(budget: u64) -> Arc<dyn Disk> {
    let cfg = CowConfig {
        block_size: 4096,
        max_dirty_bytes: budget,
        ..CowConfig::default()
    };
    Arc::new(
        CowDisk::new(mem_base(SIZE), cfg, CowMode::Ephemeral)
            .await
            .unwrap(),
    )
}

async fn send_opt(c: &mut DuplexStream, opt: u32, data: &[u8]) {
    c.write_u64(IHAVEOPT).await.unwrap();
    c.write_u32(opt).await.unwrap();
    c.write_u32(data.len() as u32).await.unwrap();
    c.write_all(data).await.unwrap();
}

/// (option, reply type, data)
async fn read_opt_reply(c: &mut DuplexStream) -> (u32, u32, Vec<u8>) {
    assert_eq!(c.read_u64().await.unwrap(), REPLY_MAGIC);
    let opt = c.read_u32().await.unwrap();
    let kind = c.read_u32().await.unwrap();
    let len = c.read_u32().await.unwrap();
    let mut data = vec![0u8; len as usize];
    c.read_exact(&mut data).await.unwrap();
    (opt, kind, data)
}

async fn greet(c: &mut DuplexStream) {
    let mut hello = [0u8; 18];
    c.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    assert_eq!(&hello[8..16], b"IHAVEOPT");
    c.write_u32(3).await.unwrap();
}

/// Handshake with NBD_OPT_GO; returns (size, transmission flags).
async fn go(c: &mut DuplexStream) -> (u64, u16) {
    greet(c).await;
    send_opt(c, 7, &[0, 0, 0, 0, 0, 0]).await;
    let mut export = None;
    loop {
        let (opt, kind, data) = read_opt_reply(c).await;
        assert_eq!(opt, 7);
        match kind {
            1 => break,
            3 if data[..2] == [0, 0] => {
                let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                export = Some((size, u16::from_be_bytes([data[10], data[11]])));
            }
            3 => {}
            other => panic!("unexpected reply {other:#x}"),
        }
    }
    export.expect("NBD_INFO_EXPORT")
}

async fn request(c: &mut DuplexStream, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
    c.write_u32(0x2560_9513).await.unwrap();
    c.write_u16(flags).await.unwrap();
    c.write_u16(kind).await.unwrap();
    c.write_u64(cookie).await.unwrap();
    c.write_u64(offset).await.unwrap();
    c.write_u32(len).await.unwrap();
}

/// Returns the error field after checking magic and cookie.
async fn simple_reply(c: &mut DuplexStream, cookie: u64) -> u32 {
    assert_eq!(c.read_u32().await.unwrap(), 0x6744_6698);
    let err = c.read_u32().await.unwrap();
    assert_eq!(c.read_u64().await.unwrap(), cookie);
    err
}

#[tokio::test]
async fn go_read_write_flush_disc() {
    let (mut c, task) = start(cow(1 << 20).await, ServeConfig::default());
    let (size, flags) = go(&mut c).await;
    assert_eq!(size, SIZE as u64);
    assert_eq!(flags, 1 | 4 | 8 | 32 | 64, "writable export flags");

    request(&mut c, 1, 1, 7, 1000, 5000).await;
    c.write_all(&[0xab; 5000]).await.unwrap();
    assert_eq!(simple_reply(&mut c, 7).await, 0);
    request(&mut c, 0, 0, 8, 900, 5200).await;
    assert_eq!(simple_reply(&mut c, 8).await, 0);
    let mut data = vec![0u8; 5200];
    c.read_exact(&mut data).await.unwrap();
    assert_eq!(data[..100], pattern(1000)[900..]);
    assert!(data[100..5100].iter().all(|&b| b == 0xab));
    request(&mut c, 6, 0, 9, 0, 100).await;
    assert_eq!(simple_reply(&mut c, 9).await, 0);
    request(&mut c, 4, 0, 10, 0, 4096).await;
    assert_eq!(simple_reply(&mut c, 10).await, 0);
    request(&mut c, 3, 0, 11, 0, 0).await;
    assert_eq!(simple_reply(&mut c, 11).await, 0);
    request(&mut c, 2, 0, 12, 0, 0).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn hostile_requests_get_error_replies() {
    let config = ServeConfig {
        max_request: 64 * 1024,
        preferred_block: 4096,
    };
    let (mut c, task) = start(cow(8 * 4096).await, config);
    go(&mut c).await;
    // Beyond the end, overflowing, oversized: EINVAL, and the stream stays in sync.
    request(&mut c, 0, 0, 1, SIZE as u64 - 10, 11).await;
    assert_eq!(simple_reply(&mut c, 1).await, EINVAL);
    request(&mut c, 0, 0, 2, u64::MAX - 5, 10).await;
    assert_eq!(simple_reply(&mut c, 2).await, EINVAL);
    request(&mut c, 0, 0, 3, 0, u32::MAX).await;
    assert_eq!(simple_reply(&mut c, 3).await, EINVAL);
    request(&mut c, 1, 0, 4, SIZE as u64, 16).await;
    c.write_all(&[1; 16]).await.unwrap();
    assert_eq!(simple_reply(&mut c, 4).await, EINVAL);
    request(&mut c, 6, 0, 5, u64::MAX, u32::MAX).await;
    assert_eq!(simple_reply(&mut c, 5).await, EINVAL);
    request(&mut c, 99, 0, 6, 0, 0).await;
    assert_eq!(simple_reply(&mut c, 6).await, EINVAL);
    // Over the dirty budget: ENOSPC.
    request(&mut c, 6, 0, 7, 0, 9 * 4096).await;
    assert_eq!(simple_reply(&mut c, 7).await, ENOSPC);
    request(&mut c, 0, 0, 8, 0, 16).await;
    assert_eq!(simple_reply(&mut c, 8).await, 0);
    let mut d = [0u8; 16];
    c.read_exact(&mut d).await.unwrap();
    assert_eq!(d[..], pattern(16)[..]);
    // A write payload we will not buffer ends the connection.
    request(&mut c, 1, 0, 9, 0, 64 * 1024 + 1).await;
    assert!(matches!(task.await.unwrap(), Err(NbdError::Protocol(_))));
}

#[tokio::test]
async fn bad_request_magic_ends_connection() {
    let (mut c, task) = start(cow(1 << 20).await, ServeConfig::default());
    go(&mut c).await;
    c.write_all(&[0x55; 28]).await.unwrap();
    assert!(matches!(task.await.unwrap(), Err(NbdError::Protocol(_))));
}

#[tokio::test]
async fn read_only_export_refuses_writes() {
    let disk: Arc<dyn Disk> = Arc::new(ReadOnlyDisk::new(mem_base(SIZE)));
    let (mut c, task) = start(disk, ServeConfig::default());
    let (_, flags) = go(&mut c).await;
    assert_eq!(flags, 1 | 2 | 4);
    request(&mut c, 1, 0, 1, 0, 4).await;
    c.write_all(&[1; 4]).await.unwrap();
    assert_eq!(simple_reply(&mut c, 1).await, EPERM);
    request(&mut c, 4, 0, 2, 0, 4).await;
    assert_eq!(simple_reply(&mut c, 2).await, EPERM);
    drop(c);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn option_haggling() {
    let (mut c, task) = start(cow(1 << 20).await, ServeConfig::default());
    greet(&mut c).await;
    send_opt(&mut c, 8, &[]).await; // STRUCTURED_REPLY: unsupported
    assert_eq!(read_opt_reply(&mut c).await.1, (1 << 31) | 1);
    send_opt(&mut c, 3, &[]).await; // LIST
    assert_eq!(read_opt_reply(&mut c).await, (3, 2, vec![0, 0, 0, 0]));
    assert_eq!(read_opt_reply(&mut c).await.1, 1);
    send_opt(&mut c, 6, &[0, 0, 0, 9, 0]).await; // INFO with a lying name length
    assert_eq!(read_opt_reply(&mut c).await.1, (1 << 31) | 3);
    send_opt(&mut c, 2, &[]).await; // ABORT
    assert_eq!(read_opt_reply(&mut c).await.1, 1);
    task.await.unwrap().unwrap();

    let (mut c, task) = start(cow(1 << 20).await, ServeConfig::default());
    greet(&mut c).await;
    c.write_u64(IHAVEOPT).await.unwrap();
    c.write_u32(7).await.unwrap();
    c.write_u32(u32::MAX).await.unwrap();
    assert!(matches!(task.await.unwrap(), Err(NbdError::Protocol(_))));

    // Old-style EXPORT_NAME with the 124 zero bytes (client without NO_ZEROES).
    let (mut c, task) = start(cow(1 << 20).await, ServeConfig::default());
    let mut hello = [0u8; 18];
    c.read_exact(&mut hello).await.unwrap();
    c.write_u32(1).await.unwrap();
    send_opt(&mut c, 1, b"root").await;
    assert_eq!(c.read_u64().await.unwrap(), SIZE as u64);
    c.read_u16().await.unwrap();
    let mut pad = [1u8; 124];
    c.read_exact(&mut pad).await.unwrap();
    assert!(pad.iter().all(|&b| b == 0));
    drop(c);
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_waiting_on_the_store_does_not_hold_up_other_requests() {
    use crate::overlay::test_store::TestStore;
    use crate::overlay::BlockStore;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let store = TestStore::new(4096);
    let shared: Arc<dyn BlockStore> = store.clone();
    let cfg = CowConfig {
        block_size: 4096,
        max_dirty_bytes: 1 << 20,
        ..CowConfig::default()
    };
    let disk = Arc::new(CowDisk::new(mem_base(SIZE), cfg, CowMode::Persistent(shared)).await.unwrap());
    let (mut c, task) = start(disk, ServeConfig::default());
    go(&mut c).await;
    request(&mut c, 1, 0, 1, 0, 4096).await;
    c.write_all(&[7; 4096]).await.unwrap();
    assert_eq!(simple_reply(&mut c, 1).await, 0);

    store.flushes.hold();
    request(&mut c, 3, 0, 2, 0, 0).await;
    while store.flushes_started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Answered while the FLUSH (cookie 2) is still out.
    let quick = async {
        request(&mut c, 0, 0, 3, 8192, 4096).await;
        assert_eq!(simple_reply(&mut c, 3).await, 0);
        let mut data = vec![0u8; 4096];
        c.read_exact(&mut data).await.unwrap();
        assert_eq!(data, pattern(SIZE)[8192..12288]);
        request(&mut c, 1, 0, 4, 4096, 10).await;
        c.write_all(&[8; 10]).await.unwrap();
        assert_eq!(simple_reply(&mut c, 4).await, 0);
    };
    tokio::time::timeout(Duration::from_secs(2), quick).await.expect("a READ waited behind a FLUSH");

    // DISC after the FLUSH: the server answers the FLUSH first, then ends.
    request(&mut c, 2, 0, 5, 0, 0).await;
    store.flushes.release();
    assert_eq!(simple_reply(&mut c, 2).await, 0);
    task.await.unwrap().unwrap();
    store.mem.crash();
    assert_eq!(store.mem.durable_blocks().len(), 2, "the DISC flushed the later write too");
}
