//! `snapvol serve`: every volume of the store over NBD — `VOL` read-write, `VOL@SNAP`
//! read-only — plus the control socket that lets other `snapvol` commands manage the volumes
//! while they are served.

mod bitmaps;
pub mod control;
mod devices;
pub mod diff_socket;
pub mod image_stream;
mod io_stats;
pub mod metrics;
mod takeover;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use snapvol_engine::{CreateOptions, Error, Store, VolumeOptions};
use snapvol_nbd::Server;

use crate::cli::ServeArgs;
pub use devices::StoreExports;

/// Name of the volume `serve` creates in an empty store.
pub const DEFAULT_VOLUME: &str = "vol";
/// Its size (sparse: it costs nothing until written).
pub const DEFAULT_SIZE: u64 = 10 << 30;

/// Runs the server until SIGTERM or SIGINT, then stops accepting, finishes the requests in
/// flight, destages every volume and returns. SIGHUP reloads the TLS credentials.
pub fn run(store: &Store, args: ServeArgs) -> Result<()> {
    bound_allocator_retention();
    // Bad TLS files are found before anything is opened.
    let tls = args.tls_files().map(tls::Tls::load).transpose()?;
    store
        .prepare()
        .with_context(|| format!("cannot create the store {}", store.name()))?;
    if store.list()?.is_empty() {
        store
            .create(
                DEFAULT_VOLUME,
                &CreateOptions::new(DEFAULT_SIZE),
                VolumeOptions::default(),
            )?
            .close()?;
        tracing::info!(
            volume = DEFAULT_VOLUME,
            size = DEFAULT_SIZE,
            "the store was empty: created the default volume"
        );
    }
    let mut volumes = BTreeMap::new();
    let mut unavailable = Vec::new();
    let mut standing_by = Vec::new();
    for name in store.list()? {
        match store.open(&name, VolumeOptions::default()) {
            Ok(v) => {
                volumes.insert(name, Arc::new(v));
            }
            // In a store that hosts share, another server holding a volume is normal: this one
            // stands by and takes the volume over if that server goes.
            Err(e @ Error::Locked { .. }) if store.shared() => {
                tracing::info!(volume = %name, reason = %e, "standing by for the volume");
                standing_by.push(name);
            }
            Err(e @ Error::Locked { .. }) => {
                return Err(anyhow::anyhow!(
                    "{e}; is another snapvol serve using this store?"
                ))
            }
            // One volume that cannot be opened must not keep the others from being served.
            // It is left out (and opened again the next time a client or a command asks for
            // it, so that a `check --repair` meanwhile brings it back).
            Err(e) => {
                tracing::error!(volume = %name, error = %e, "volume cannot be opened: not served; the others are");
                unavailable.push(name);
            }
        }
    }
    let exports = Arc::new(StoreExports::new(store.clone(), volumes));
    let control = control::ControlServer::start(store, exports.clone())?;
    let supervisor = store
        .shared()
        .then(|| takeover::Supervisor::start(store.clone(), exports.clone()))
        .transpose()?;

    let mut builder = Server::builder(exports.clone());
    let addr: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {}: not an address like 127.0.0.1:10809",
            args.listen
        )
    })?;
    builder = builder.tcp(addr).max_connections(args.max_connections);
    if let Some(path) = &args.unix {
        builder = builder.unix(path);
    }
    tls::warn_if_exposed(addr, tls.is_some());
    if let Some(tls) = &tls {
        builder = builder.tls(tls.acceptor());
    }
    let server = builder
        .bind()
        .with_context(|| format!("cannot listen on {addr}"))?;
    let shutdown = server.shutdown_handle();
    let metrics = args
        .metrics
        .as_deref()
        .map(|a| metrics::start(a, exports.clone(), server.connection_stats()))
        .transpose()?;

    let scheme = if tls.is_some() { "nbds" } else { "nbd" };
    // SIGTERM and SIGINT stop the server gracefully; SIGHUP reloads the TLS credentials.
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let signal_handle = signals.handle();
    let flag = stop.clone();
    let watcher = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    match &tls {
                        Some(tls) => tls.reload(),
                        None => tracing::info!("SIGHUP: no TLS credentials to reload"),
                    }
                    continue;
                }
                tracing::info!(signal = sig, "stopping: finishing requests in flight");
                flag.store(true, Ordering::SeqCst);
                shutdown.shutdown();
                break;
            }
        })?;

    let names: Vec<String> = exports.volumes().into_iter().map(|(n, _)| n).collect();
    let local = server
        .local_addr()
        .map_or(args.listen.clone(), |a| a.to_string());
    eprintln!(
        "snapvol: serving {} from {} on {scheme}://{local}/ (export names: VOL, VOL@SNAP); Ctrl-C stops",
        if names.is_empty() {
            "no volume".to_owned()
        } else {
            names.join(", ")
        },
        store.name()
    );
    if !standing_by.is_empty() {
        eprintln!(
            "snapvol: standing by for {}: held by another server; taken over if it goes",
            standing_by.join(", ")
        );
    }
    if !unavailable.is_empty() {
        eprintln!(
            "snapvol: not serving {}: cannot be opened (see the log above; `snapvol check VOL`)",
            unavailable.join(", ")
        );
    }
    if let Some(m) = &metrics {
        eprintln!("snapvol: metrics on http://{}/metrics", m.local_addr());
    }
    let served = server.serve();
    signal_handle.close();
    let _ = watcher.join();
    if let Some(m) = metrics {
        m.stop();
    }
    if let Some(s) = supervisor {
        s.stop();
    }
    control.stop();

    // Every volume is destaged and closed: the source VLUNs are the volumes again.
    let mut result = served.map_err(anyhow::Error::from);
    for (name, vol) in exports.take_volumes() {
        // A volume whose lock was lost belongs to another server now: nothing to close here.
        if let Some(why) = vol.lock_lost() {
            tracing::warn!(volume = %name, reason = %why, "not closing the volume: another server holds it");
            continue;
        }
        match Arc::try_unwrap(vol) {
            Ok(vol) => {
                if let Err(e) = vol.close() {
                    tracing::error!(volume = %name, error = %e, "closing failed");
                    result = result.and(Err(e.into()));
                }
            }
            Err(vol) => {
                // Still referenced by a connection that did not go away: make it durable.
                if let Err(e) = vol.destage_all() {
                    result = result.and(Err(e.into()));
                }
            }
        }
    }
    tracing::info!("stopped");
    result
}

/// A long-running server frees request and destage buffers of a MiB or more all the time.
/// glibc would raise its mmap threshold after the first such free and then keep those sizes in
/// per-thread heaps it rarely gives back, so the resident size grew with the work done (about
/// 390 MiB beyond the 128 MiB cache after 10 GiB of writes). A fixed threshold sends every
/// buffer of 128 KiB or more back to the system when freed, and two arenas bound the per-thread
/// heaps; the cost is a page fault per page of each new large buffer.
///
/// Reusing the NBD server's payload buffers from a pool instead was measured and is no
/// substitute: without these settings, 1 GiB of 1 MiB writes at depth 16 left the server at
/// 50 to 112 MiB resident once idle (peaks 126 to 145 MiB), pool or no pool, against 5 to 6 MiB
/// (peaks 78 to 103 MiB) with them (that was while the engine kept a copy of each write of its
/// own, freed on another thread once destaged). The pool the NBD server has now
/// (`snapvol_nbd`'s `payload` module) works with these settings: the buffers it keeps are
/// never freed while kept, so they cost neither the faults nor the unmaps, and the ones it
/// lets go are given back to the system.
fn bound_allocator_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes glibc's allocation parameters; it is called before the
    // server starts any thread, and failure (a zero return) leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
