//! Against real QEMU tools: qcow2 fixtures made by `qemu-img`, and `qemu-img` /
//! `qemu-io` as NBD clients of `serve` on a unix socket.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sandbox_block::base::Qcow2Error;
use sandbox_block::overlay::{CowConfig, CowDisk, CowMode, MemBlockStore};
use sandbox_block::{nbd, BaseImage, Disk, Qcow2Base, RawBase, ReadOnlyDisk};
use tokio::net::UnixListener;
use tokio::process::Command;

const BUSYBOX: &str = "../../platform-packages/linux-x64-gnu/artifacts/images/busybox.qcow2";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sandbox-block-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_qemu() -> bool {
    let ok = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("qemu-img not installed: skipping");
    }
    ok
}

async fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .expect("spawn");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// 4 MiB with varied content, a zero hole and an incompressible-ish region.
fn sample_data() -> Vec<u8> {
    let mut v: Vec<u8> = (0..4usize << 20)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    v[1 << 20..(1 << 20) + 300_000].fill(0);
    let mut x = 1u32;
    for b in &mut v[3 << 20..(3 << 20) + 100_000] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    v
}

async fn qcow2_fixture(dir: &TempDir, name: &str, data: &[u8], extra: &[&str]) -> PathBuf {
    let raw = dir.path("src.raw");
    std::fs::write(&raw, data).unwrap();
    let out = dir.path(name);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.push(raw.to_str().unwrap());
    args.push(out.to_str().unwrap());
    run("qemu-img", &args).await;
    out
}

fn read_all(base: &dyn BaseImage) -> Vec<u8> {
    let mut v = vec![0u8; base.size() as usize];
    base.read_at(0, &mut v).unwrap();
    v
}

#[tokio::test]
async fn qcow2_matches_source_in_every_flavour() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new();
    let data = sample_data();
    for (name, extra) in [
        ("plain.qcow2", &[][..]),
        ("compressed.qcow2", &["-c"][..]),
        ("v2.qcow2", &["-c", "-o", "compat=0.10"][..]),
        (
            "small-clusters.qcow2",
            &["-c", "-o", "cluster_size=4096"][..],
        ),
    ] {
        let path = qcow2_fixture(&dir, name, &data, extra).await;
        let q = Qcow2Base::open(&path, "id").unwrap();
        assert_eq!(q.size(), data.len() as u64, "{name}");
        assert!(read_all(&q) == data, "{name}: contents differ");
        // Unaligned reads across cluster boundaries.
        let mut buf = vec![0u8; 70_001];
        q.read_at(65_000, &mut buf).unwrap();
        assert!(buf[..] == data[65_000..135_001], "{name}");
        assert!(q.read_at(data.len() as u64 - 1, &mut [0; 2]).is_err());
    }

    // Zero clusters (v3 zero flag) over allocated data.
    let path = qcow2_fixture(&dir, "zeroed.qcow2", &data, &[]).await;
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -z 65536 131072",
            path.to_str().unwrap(),
        ],
    )
    .await;
    let mut expect = data.clone();
    expect[65536..196608].fill(0);
    assert!(read_all(&Qcow2Base::open(&path, "id").unwrap()) == expect);
}

#[tokio::test]
async fn qcow2_rejects_what_it_cannot_read_faithfully() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new();
    let base = qcow2_fixture(&dir, "base.qcow2", &[7u8; 65536], &[]).await;
    let over = dir.path("over.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            over.to_str().unwrap(),
        ],
    )
    .await;
    assert!(matches!(
        Qcow2Base::open(&over, "x"),
        Err(Qcow2Error::BackingFile)
    ));

    let ext = dir.path("ext.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            ext.to_str().unwrap(),
            "1M",
        ],
    )
    .await;
    assert!(matches!(
        Qcow2Base::open(&ext, "x"),
        Err(Qcow2Error::ExtendedL2)
    ));

    // Header fields patched in a valid image: crypt_method, then incompatible
    // feature bits (corrupt; unknown).
    let good = std::fs::read(&base).unwrap();
    let patched = dir.path("patched.qcow2");
    let patch = |at: usize, bytes: &[u8]| {
        let mut img = good.clone();
        img[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&patched, img).unwrap();
        Qcow2Base::open(&patched, "x")
    };
    assert!(matches!(
        patch(32, &1u32.to_be_bytes()),
        Err(Qcow2Error::Encrypted)
    ));
    assert!(matches!(
        patch(72, &2u64.to_be_bytes()),
        Err(Qcow2Error::Corrupt)
    ));
    assert!(matches!(
        patch(72, &(1u64 << 40).to_be_bytes()),
        Err(Qcow2Error::IncompatibleFeatures(_))
    ));
    assert!(
        patch(72, &1u64.to_be_bytes()).is_ok(),
        "the dirty bit alone is fine"
    );

    let zstd = dir.path("zstd.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd",
            zstd.to_str().unwrap(),
            "1M",
        ],
    )
    .await;
    assert!(matches!(
        Qcow2Base::open(&zstd, "x"),
        Err(Qcow2Error::CompressionType(1))
    ));

    let raw = dir.path("not.qcow2");
    std::fs::write(&raw, [0u8; 4096]).unwrap();
    assert!(matches!(
        Qcow2Base::open(&raw, "x"),
        Err(Qcow2Error::BadMagic)
    ));
}

#[tokio::test]
async fn corrupted_qcow2_fails_cleanly() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new();
    let data = &sample_data()[..512 * 1024];
    let path = qcow2_fixture(&dir, "c.qcow2", data, &["-c", "-o", "cluster_size=4096"]).await;
    let good = std::fs::read(&path).unwrap();
    let bad = dir.path("bad.qcow2");
    let mut x = 0x9e37_79b9u32;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let mut img = good.clone();
        // Metadata lives in the first clusters; hit it often.
        let at = (x as usize >> 4) % img.len().min(64 * 1024);
        img[at] ^= (x >> 3) as u8 | 1;
        std::fs::write(&bad, &img).unwrap();
        // Errors are fine; panics and absurd allocations are not.
        if let Ok(q) = Qcow2Base::open(&bad, "x") {
            let mut buf = vec![0u8; q.size().min(1 << 20) as usize];
            let _ = q.read_at(0, &mut buf);
        }
    }
}

/// Serve `disk` on a fresh unix socket, one task per connection.
fn serve_unix(dir: &TempDir, disk: Arc<dyn Disk>) -> String {
    let sock = dir.path("nbd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let disk = disk.clone();
            tokio::spawn(async move {
                if let Err(e) = nbd::serve(stream, &*disk).await {
                    eprintln!("nbd connection: {e}");
                }
            });
        }
    });
    format!("nbd+unix:///?socket={}", sock.display())
}

async fn export_to_raw(url: &str, out: &Path) -> Vec<u8> {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            url,
            out.to_str().unwrap(),
        ],
    )
    .await;
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_clients_read_and_write_through_the_cow() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new();
    let data = sample_data();
    let path = qcow2_fixture(&dir, "base.qcow2", &data, &["-c"]).await;
    let before = std::fs::read(&path).unwrap();
    let base: Arc<dyn BaseImage> = Arc::new(Qcow2Base::open(&path, "sha").unwrap());
    let disk = Arc::new(
        CowDisk::new(base, CowConfig::default(), CowMode::Ephemeral)
            .await
            .unwrap(),
    );
    let url = serve_unix(&dir, disk.clone());

    assert!(
        export_to_raw(&url, &dir.path("a.raw")).await == data,
        "full read equals the base"
    );

    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 4096 8192",
            "-c",
            "read -P 0xab 4096 8192",
            &url,
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("fail") && text.contains("read 8192/8192"),
        "{text}"
    );

    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -z 2097152 65536",
            "-c",
            "read -P 0 2097152 65536",
            "-c",
            "discard 131072 65536",
            "-c",
            "flush",
            "-c",
            "write -f -P 0xcd 1000000 3000",
            &url,
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("fail"), "{text}");

    let mut expect = data.clone();
    expect[4096..12288].fill(0xab);
    expect[2097152..2097152 + 65536].fill(0);
    expect[1_000_000..1_003_000].fill(0xcd);
    assert!(
        export_to_raw(&url, &dir.path("b.raw")).await == expect,
        "second connection sees the writes"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "base image untouched"
    );
    assert_eq!(disk.stats().dirty_bytes, 3 * 65536, "blocks 0, 15 and 32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_overlay_through_qemu_reaches_the_store() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new();
    let data = sample_data();
    let raw = dir.path("base.raw");
    std::fs::write(&raw, &data).unwrap();
    let base: Arc<dyn BaseImage> = Arc::new(RawBase::open(&raw, "sha").unwrap());
    let store = Arc::new(MemBlockStore::new(65536));
    let cfg = CowConfig {
        block_size: 65536,
        max_dirty_bytes: 4 * 65536,
        ..CowConfig::default()
    };
    let disk = Arc::new(
        CowDisk::new(base.clone(), cfg, CowMode::Persistent(store.clone()))
            .await
            .unwrap(),
    );
    let url = serve_unix(&dir, disk.clone());

    // 1 MiB of writes through a 256 KiB budget, then an explicit flush.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5e 100000 1048576",
            "-c",
            "flush",
            &url,
        ],
    )
    .await;
    assert!(disk.stats().store_writes >= 3);
    store.crash(); // only flushed data may remain
    let again = Arc::new(
        CowDisk::new(base, cfg, CowMode::Persistent(store.clone()))
            .await
            .unwrap(),
    );
    let dir2 = TempDir::new();
    let url2 = serve_unix(&dir2, again);
    let mut expect = data.clone();
    expect[100000..100000 + 1048576].fill(0x5e);
    assert!(export_to_raw(&url2, &dir2.path("c.raw")).await == expect);
    assert_eq!(std::fs::read(&raw).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_image_served_read_only_equals_qemu_img_convert() {
    if !have_qemu() {
        return;
    }
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join(BUSYBOX);
    if !image.exists() {
        eprintln!("{} missing (run scripts/setup): skipping", image.display());
        return;
    }
    let dir = TempDir::new();
    let reference = dir.path("ref.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            reference.to_str().unwrap(),
        ],
    )
    .await;
    let base: Arc<dyn BaseImage> = Arc::new(Qcow2Base::open(&image, "busybox").unwrap());
    let url = serve_unix(&dir, Arc::new(ReadOnlyDisk::new(base)));
    let served = export_to_raw(&url, &dir.path("served.raw")).await;
    assert!(
        served == std::fs::read(&reference).unwrap(),
        "busybox differs"
    );

    // The export is read-only: qemu-io cannot write to it.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512", &url])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || text.contains("error") || text.contains("denied"),
        "{text}"
    );
    assert!(!text.contains("wrote 512/512"), "{text}");
}
