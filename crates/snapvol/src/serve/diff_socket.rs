//! Incremental export and import of a volume that `snapvol serve` holds, both ends of the
//! control socket. The server runs the same [`crate::diff_transfer`] code as a command that
//! opens the volume itself.
//!
//! - `export_diff`: the request line, the answer `{"size", "changed_bytes", "extents"}` (or
//!   an error, before anything is sent), then the `rbd diff v1` stream carried in the frames
//!   of [`super::image_stream`]; a read that fails part-way ends it with an error frame.
//! - `import_diff`: the request line, the answer `"ready"` (or an error: no such volume),
//!   then the client sends the stream's bytes as they are and shuts its side down; the server
//!   applies them as it reads and answers once with the `ImportReport` or the error. A client
//!   that goes away part-way cuts the stream short, which the server treats as any truncated
//!   stream: the live volume goes back to the from-snapshot.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use anyhow::{anyhow, Context, Result};
use indicatif::ProgressBar;
use snapvol_engine::Store;

use super::control::{converse, send, Request, Response, REPLY_TIMEOUT, STREAM_TIMEOUT};
use super::devices::StoreExports;
use super::image_stream::{write_error, FrameReader, FrameWriter};
use crate::diff_transfer::{apply_diff, drain, plan_export, write_diff, DiffSummary, ImportReport};
use crate::rbd_diff::{Event, Reader, Writer};

/// Answers an `export_diff` request on `stream`.
pub(super) fn serve_export(
    exports: &StoreExports,
    stream: &UnixStream,
    volume: &str,
    from: &str,
    to: Option<String>,
) {
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let planned = exports
        .volume(volume)
        .and_then(|vol| Ok((plan_export(&vol, from, to.as_deref())?, vol)));
    let (plan, vol) = match planned {
        Ok(p) => p,
        Err(e) => return send(stream, &Response::from_error(e)),
    };
    let value = serde_json::json!({
        "size": plan.header.size,
        "changed_bytes": plan.changed_bytes(),
        "extents": plan.extents.len(),
    });
    send(stream, &Response::Ok { value });
    let _ = stream.set_write_timeout(Some(STREAM_TIMEOUT));
    let mut out = FrameWriter::new(stream);
    match write_diff(&vol, &plan, &mut out, &mut |_| {}) {
        Ok(_) => {
            let _ = out.finish();
        }
        Err(e) => {
            tracing::warn!(volume, from, to, error = %e, "incremental export through the control socket failed");
            let answer = serde_json::to_vec(&Response::from_anyhow(e)).unwrap_or_default();
            let _ = write_error(&mut out.into_inner(), &answer);
        }
    }
}

/// Answers an `import_diff` request on `stream`.
pub(super) fn serve_import(exports: &StoreExports, stream: &UnixStream, volume: &str, force: bool) {
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let vol = match exports.volume(volume) {
        Ok(v) => v,
        Err(e) => return send(stream, &Response::from_error(e)),
    };
    let ready = Response::Ok {
        value: serde_json::Value::String("ready".into()),
    };
    send(stream, &ready);
    // A client that stops sending for this long is taken for gone: the stream is cut short.
    let _ = stream.set_read_timeout(Some(STREAM_TIMEOUT));
    let applied = Reader::new(BufReader::with_capacity(1 << 20, stream))
        .map_err(anyhow::Error::from)
        .and_then(|mut reader| apply_diff(&vol, &mut reader, force, &mut |_| {}));
    let response = match applied {
        Ok(report) => {
            tracing::info!(volume, created = ?report.created, "incremental stream applied through the control socket");
            Response::Ok {
                value: serde_json::to_value(&report).unwrap_or_default(),
            }
        }
        Err(e) => {
            tracing::warn!(volume, error = %crate::output::error_message(&e), "import-diff through the control socket failed");
            Response::from_anyhow(e)
        }
    };
    send(stream, &response);
}

/// An incremental export coming from the server.
#[derive(Debug)]
pub struct DiffDownload {
    /// Bytes of the volume the stream covers.
    pub changed_bytes: u64,
    /// Changed extents.
    pub extents: u64,
    frames: FrameReader<BufReader<UnixStream>>,
}

/// Asks the server holding `store` for the stream from `volume@from` to `to` (a snapshot, or
/// the live volume); `None` when no server answers there. A missing snapshot or a `to` not
/// newer than `from` is answered before anything is sent.
pub fn export_diff(
    store: &Store,
    volume: &str,
    from: &str,
    to: Option<&str>,
) -> Result<Option<DiffDownload>> {
    let req = Request::ExportDiff {
        volume: volume.to_owned(),
        from: from.to_owned(),
        to: to.map(str::to_owned),
    };
    let Some((value, rest)) = converse(store, &req)? else {
        return Ok(None);
    };
    let field = |name: &str| {
        value[name]
            .as_u64()
            .ok_or_else(|| anyhow!("the server's answer has no {name}: {value}"))
    };
    Ok(Some(DiffDownload {
        changed_bytes: field("changed_bytes")?,
        extents: field("extents")?,
        frames: FrameReader::new(rest),
    }))
}

impl DiffDownload {
    /// Writes the server's stream to `out`, record by record, checking it as it goes (a
    /// stream cut short or malformed is an error, never a short file). `bar` counts the
    /// volume's bytes covered.
    pub fn copy_to(&mut self, out: impl Write, bar: &ProgressBar) -> Result<DiffSummary> {
        let relayed = relay(&mut self.frames, out, bar);
        match (relayed, self.frames.failure.take()) {
            (Ok(summary), _) => Ok(summary),
            (Err(_), Some(answer)) => {
                let response: Response = serde_json::from_slice(&answer)
                    .context("the server's stream ended with an unreadable error")?;
                Err(response
                    .into_result()
                    .err()
                    .unwrap_or_else(|| anyhow!("the server's stream ended with an error"))
                    .context("the server could not read the volume"))
            }
            (Err(e), None) => Err(e.context("the server's stream broke off")),
        }
    }
}

fn relay(input: impl Read, out: impl Write, bar: &ProgressBar) -> Result<DiffSummary> {
    let mut reader = Reader::new(input)?;
    let mut writer = Writer::new(out, reader.header())?;
    let summary = drain(&mut reader, |event, _| {
        match event {
            Event::Data { offset, data } => {
                writer.data(offset, data)?;
                bar.inc(data.len() as u64);
            }
            Event::Zero { offset, len } => {
                writer.zero(offset, len)?;
                bar.inc(len);
            }
        }
        Ok(())
    })?;
    writer.end()?;
    Ok(summary)
}

/// Sends the stream in `input` to the server holding `store`, which applies it to `volume`;
/// `None` when no server answers there. `progress` is told the bytes sent.
pub fn import_diff(
    store: &Store,
    volume: &str,
    force: bool,
    mut input: impl Read,
    progress: &mut dyn FnMut(u64),
) -> Result<Option<ImportReport>> {
    let req = Request::ImportDiff {
        volume: volume.to_owned(),
        force,
    };
    let Some((_, mut conn)) = converse(store, &req)? else {
        return Ok(None);
    };
    let socket = conn.get_ref().try_clone()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    // A failed send (the server refused the stream and stopped reading) still has an answer
    // to read; a failed read of the input cuts the stream short on purpose.
    let input_failed = loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        };
        if (&socket).write_all(&buf[..n]).is_err() {
            break None;
        }
        sent += n as u64;
        progress(sent);
    };
    let _ = socket.shutdown(Shutdown::Write);
    if let Some(e) = input_failed {
        return Err(anyhow::Error::new(e).context(
            "reading the stream failed; the server was sent a stream cut short, so it left the \
             volume as it was",
        ));
    }
    let mut line = String::new();
    let _ = conn.read_line(&mut line);
    if line.trim().is_empty() {
        return Err(anyhow!(
            "the snapvol server stopped before answering: the stream may or may not have been \
             applied; `snapvol snapshot list {volume}` shows whether its to-snapshot exists"
        ));
    }
    let response: Response = serde_json::from_str(&line)?;
    Ok(Some(serde_json::from_value(response.into_result()?)?))
}
