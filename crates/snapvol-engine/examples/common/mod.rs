//! What the examples share.

/// The number in environment variable `name`, else `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A fresh directory for an example's store, in `SNAPVOL_BENCH_DIR` (else /var/tmp); it is
/// removed when the guard drops.
pub fn store_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("SNAPVOL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("tempdir")
}
