//! Serves in-memory disks over NBD until interrupted: `vol` (writable, SIZE MiB) and
//! `vol@snap` (read-only copy of it at start).
//!
//! `cargo run -p snapvol-nbd --example memserve -- 127.0.0.1:10809 64`

use std::sync::Arc;

use snapvol_nbd::{Export, ExportMap, MemDevice, Server};

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "snapvol_nbd=info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10809".into());
    let mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let exports = Arc::new(ExportMap::new());
    exports.insert(
        "vol",
        Export::new(Arc::new(MemDevice::new(mib << 20)), "in-memory volume"),
    );
    exports.insert(
        "vol@snap",
        Export::new(
            Arc::new(MemDevice::new(mib << 20).with_read_only(true)),
            "read-only snapshot",
        ),
    );
    let addr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    Server::builder(exports).tcp(addr).bind()?.serve()
}
