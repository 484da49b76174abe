//! The guest's frame stream: decoding into frames for the engine, encoding its output.

use super::*;

pub(super) async fn read_frames<R: AsyncRead>(rd: R, tx: mpsc::Sender<Vec<u8>>, sink: EventSink) -> io::Result<()> {
    tokio::pin!(rd);
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Vec::new();
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        dec.push(&buf[..n], |r| match r {
            Ok(f) => frames.push(f.to_vec()),
            Err(e) => {
                Stats::bump(&sink.stats().malformed);
                sink.emit(NetEvent::MalformedFrame { reason: Malformed::Codec(e) });
            }
        });
        for f in frames.drain(..) {
            // Awaiting here is the backpressure on the guest's transmit side.
            if tx.send(f).await.is_err() {
                return Ok(());
            }
        }
    }
}

pub(super) async fn write_frames<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Vec<u8>>) -> io::Result<()> {
    tokio::pin!(wr);
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        let _ = frames::encode(&f, &mut buf);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => {
                    let _ = frames::encode(&f, &mut buf);
                }
                Err(_) => break,
            }
        }
        wr.write_all(&buf).await?;
        wr.flush().await?;
    }
    Ok(())
}
