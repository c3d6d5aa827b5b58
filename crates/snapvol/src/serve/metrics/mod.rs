//! `serve --metrics ADDR`: Prometheus metrics at `http://ADDR/metrics`.
//!
//! `collect` gathers them at each scrape (prometheus-client writes the text format), `http`
//! serves them, and `http_head` holds the bytes of the little HTTP it speaks.

mod collect;
mod http;
pub mod http_head;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use snapvol_nbd::ConnectionStats;

use super::StoreExports;
pub use http::Endpoint;

/// Starts serving the metrics of `exports` and of the NBD server's `connections` on `addr`.
pub fn start(
    addr: &str,
    exports: Arc<StoreExports>,
    connections: ConnectionStats,
) -> Result<Endpoint> {
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("--metrics {addr}: not an address like 127.0.0.1:9108"))?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collect::Gather {
        exports,
        connections,
    }));
    let registry = Arc::new(registry);
    let render: Arc<http::Render> = Arc::new(move || {
        let mut body = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut body, &registry);
        (body, prometheus_text::CONTENT_TYPE)
    });
    let endpoint = Endpoint::start(sock, render)
        .with_context(|| format!("cannot listen on {sock} for --metrics"))?;
    tracing::info!(address = %endpoint.local_addr(), "serving metrics at /metrics");
    Ok(endpoint)
}
