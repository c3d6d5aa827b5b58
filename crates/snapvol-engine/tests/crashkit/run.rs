//! Running a workload, up to its end or the crash.

use std::sync::Arc;

use snapvol_engine::Volume;

use super::devices::Devices;
use super::judge::{assert_running_volume, first_diff};
use super::oracle::{Model, Req, SnapModel, SnapState};
use super::workload::{pattern, Op, Workload};

/// A workload run up to its end or its first failed operation.
#[derive(Debug)]
pub struct Run {
    pub model: Model,
    pub devices: Devices,
    /// I/O calls the workload made after the volume was created.
    pub ios: u64,
}

/// Creates the volume (never crashed: a creation that did not finish is not a volume), arms a
/// power loss at workload I/O index `crash_at`, and runs the workload until it ends or an
/// operation fails. The volume is then killed, never closed. With `background_destage`, the
/// power is cut right after the last operation returns, so the destager thread cannot run on.
pub fn run_workload(w: &Workload, crash_at: Option<u64>, background_destage: bool) -> Run {
    let dev = Devices::blank(w.size());
    let opts = w.options(background_destage);
    let mut vol = Some(
        Volume::create_on("crash", dev.vluns(), w.layout(), opts.clone()).expect("create volume"),
    );
    let base = dev.ctl.io_count();
    if let Some(k) = crash_at {
        dev.ctl.crash_at(base + k);
    }
    let mut m = Model::new(w.size(), u64::from(w.chunk_size));
    for (i, op) in w.ops.iter().enumerate() {
        let v = vol.as_ref().expect("volume open while ops run");
        let result: Result<(), snapvol_engine::Error> = match *op {
            Op::Write { off, len } | Op::Fua { off, len } => {
                let data: Arc<[u8]> = Arc::from(pattern(i as u64 + 1, len));
                let fua = matches!(op, Op::Fua { .. });
                let r = if fua {
                    v.write_fua(off, &data)
                } else {
                    v.write(off, &data)
                };
                let req = Req {
                    op: i,
                    off,
                    len,
                    data: Some(data),
                    epoch: m.epoch,
                    tearable: w.tearable(len, true, fua),
                };
                m.write(req, r.is_ok());
                if fua && r.is_ok() {
                    m.settle_fua();
                }
                r
            }
            Op::Zero { off, len } | Op::Trim { off, len } => {
                let r = if matches!(op, Op::Zero { .. }) {
                    v.write_zeroes(off, len)
                } else {
                    v.trim(off, len)
                };
                let req = Req {
                    op: i,
                    off,
                    len,
                    data: None,
                    epoch: m.epoch,
                    tearable: w.tearable(len, false, false),
                };
                m.write(req, r.is_ok());
                r
            }
            Op::Flush => v.flush().map(|()| m.settle()),
            Op::DestageAll => v.destage_all().map(|()| m.settle()),
            Op::Snap(name) => {
                let r = v.snapshot_create(name);
                let image = Arc::new(m.image.clone());
                match &r {
                    Ok(info) => {
                        m.epoch = info.seq.0;
                        m.settle();
                        m.snaps.push(SnapModel {
                            name,
                            seq: Some(info.seq),
                            image,
                            state: SnapState::Acked,
                        });
                    }
                    Err(_) => m.snaps.push(SnapModel {
                        name,
                        seq: None,
                        image,
                        state: SnapState::CreateInFlight,
                    }),
                }
                r.map(drop)
            }
            Op::Delete(name) => {
                let r = v.snapshot_delete(name);
                m.snap_mut(name).state = if r.is_ok() {
                    SnapState::Deleted
                } else {
                    SnapState::DeleteInFlight
                };
                r
            }
            Op::Reopen => {
                let v = vol.take().expect("open");
                match v.close() {
                    Ok(()) => {
                        m.settle();
                        match Volume::open_on("crash", dev.vluns(), opts.clone()) {
                            Ok(v) => {
                                vol = Some(v);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Read { off, len } => {
                let mut buf = vec![0u8; len as usize];
                let r = v.read(off, &mut buf);
                if r.is_ok() {
                    let want = &m.image[off as usize..(off + len) as usize];
                    if let Some(at) = first_diff(&buf, want) {
                        panic!(
                            "op {i}: a read of the running volume differs from what was written \
                             at byte {:#x} (got {:#04x}, want {:#04x})",
                            off + at as u64,
                            buf[at],
                            want[at]
                        );
                    }
                }
                r
            }
        };
        match result {
            Ok(()) => m.ops_done = i + 1,
            Err(e) => {
                assert!(
                    dev.ctl.crashed(),
                    "op {i} {op:?} failed without a power loss: {e}"
                );
                m.failed_op = Some((i, e.to_string()));
                break;
            }
        }
    }
    let ios = dev.ctl.io_count() - base;
    if crash_at.is_none() {
        if let Some(v) = &vol {
            assert_running_volume(&m, v);
        }
    }
    dev.ctl.crash_now();
    if let Some(v) = vol {
        v.kill();
    }
    Run {
        model: m,
        devices: dev,
        ios,
    }
}
