//! Serving a store that hosts share (`--store rbd:POOL`): every volume is served by whichever
//! server holds its lock. This server keeps trying the volumes it does not hold, so it stands
//! by for them and takes each over when its holder goes (the catalog fences the old holder
//! before the volume is opened and its journal replayed); and it stops serving at once a
//! volume whose lock it lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use snapvol_engine::{Error, Store};

use super::StoreExports;

/// How often the volumes not held are tried, and held ones looked at. A takeover happens
/// within this much of the old holder's lease running out.
pub const POLL: Duration = Duration::from_secs(2);

/// The thread that takes volumes over and lets lost ones go.
pub struct Supervisor {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts watching `store`'s volumes for `exports`.
    pub fn start(store: Store, exports: Arc<StoreExports>) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("takeover".into())
            .spawn(move || {
                let mut next = Instant::now() + POLL;
                let mut warned = HashMap::new();
                loop {
                    {
                        let (lock, wake) = &*s;
                        let mut stop = lock.lock();
                        while !*stop && Instant::now() < next {
                            wake.wait_until(&mut stop, next);
                        }
                        if *stop {
                            break;
                        }
                    }
                    round(&store, &exports, &mut warned);
                    next = Instant::now() + POLL;
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (before the volumes are closed).
    pub fn stop(mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One look: lost volumes are let go, free ones taken. `warned` keeps the last warning of
/// each volume, so that a volume that keeps failing the same way is logged once.
fn round(store: &Store, exports: &StoreExports, warned: &mut HashMap<String, String>) {
    for (name, vol) in exports.volumes() {
        if let Some(why) = vol.lock_lost() {
            tracing::error!(volume = %name, reason = %why, "lost the lock on the volume: no longer serving it");
            exports.forget(&name);
        }
    }
    let names = match store.list() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(store = %store.name(), error = %e, "cannot list the store's volumes");
            return;
        }
    };
    for name in names {
        if exports.holds(&name) {
            continue;
        }
        let started = Instant::now();
        match exports.volume(&name) {
            Ok(_) => {
                warned.remove(&name);
                tracing::info!(
                    volume = %name,
                    seconds = started.elapsed().as_secs_f64(),
                    "took the volume over: serving it"
                );
            }
            Err(Error::Locked { .. }) => {}
            Err(e) => {
                let e = e.to_string();
                if warned.get(&name) != Some(&e) {
                    tracing::warn!(volume = %name, error = %e, "the volume is free but cannot be opened here");
                    warned.insert(name, e);
                }
            }
        }
    }
}
