//! `snapvol create`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use snapvol_engine::units::{MAX_CHUNK, MIN_CHUNK};
use snapvol_engine::{validate_name, CreateOptions, Location, Store, VolumeOptions};

use crate::cli::CreateArgs;
use crate::size::{format_exact, format_size};

pub fn run(store: &Store, args: CreateArgs) -> Result<()> {
    validate_name(&args.volume)?;
    let chunk_size = check_chunk_size(args.chunk_size)?;
    check_volume_size(args.size, chunk_size)?;
    let opts = CreateOptions {
        size: args.size,
        chunk_size,
        source: args.source.as_deref().map(location).transpose()?,
        target: args.target.as_deref().map(location).transpose()?,
        target_size: args.target_size,
        cache: args.cache.as_deref().map(location).transpose()?,
        journal_size: args.journal_size,
        write_mode: args.write_mode,
    };
    let vol = store.create(&args.volume, &opts, VolumeOptions::default())?;
    vol.close()
        .with_context(|| format!("closing new volume '{}'", args.volume))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created volume {} ({}, chunk size {}, write mode {}) in {}",
        args.volume,
        format_size(args.size),
        format_size(u64::from(chunk_size)),
        args.write_mode,
        store.name()
    )?;
    Ok(())
}

/// Where the user put a device. Paths are recorded in the volume directory, so a relative one
/// is made absolute against the current directory (where the user meant it) rather than
/// resolved later against the volume's.
fn location(given: &Path) -> Result<Location> {
    match given.to_str().map(Location::parse) {
        Some(backend @ Location::Backend { .. }) => Ok(backend),
        _ => std::path::absolute(given)
            .map(Location::Path)
            .with_context(|| format!("cannot resolve path {}", given.display())),
    }
}

/// A chunk size must be a power of two from 4K to 1M.
pub fn check_chunk_size(chunk_size: u64) -> Result<u32> {
    let in_range = (u64::from(MIN_CHUNK)..=u64::from(MAX_CHUNK)).contains(&chunk_size);
    if !in_range || !chunk_size.is_power_of_two() {
        bail!(
            "chunk size {} is not a power of two from {} to {} (e.g. 4K, 64K, 1M)",
            describe(chunk_size),
            format_size(u64::from(MIN_CHUNK)),
            format_size(u64::from(MAX_CHUNK))
        );
    }
    u32::try_from(chunk_size).context("chunk size out of range")
}

/// A volume size must be a whole number of chunks.
pub fn check_volume_size(size: u64, chunk_size: u32) -> Result<()> {
    let chunk = u64::from(chunk_size);
    if size % chunk != 0 {
        let down = size - size % chunk;
        let up = down.checked_add(chunk);
        let suggestion = match (down, up) {
            (0, Some(up)) => format!("try {}", format_exact(up)),
            (down, Some(up)) => format!("try {} or {}", format_exact(down), format_exact(up)),
            (down, None) => format!("try {}", format_exact(down)),
        };
        bail!(
            "volume size {} is not a multiple of the chunk size {}; {suggestion}",
            describe(size),
            format_size(chunk)
        );
    }
    Ok(())
}

/// `64K` as is, `5000` as `5000 bytes`, `1028K` as is: exact, as the user could have typed it.
fn describe(bytes: u64) -> String {
    let exact = format_exact(bytes);
    if exact == bytes.to_string() {
        format!("{bytes} bytes")
    } else {
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_must_be_powers_of_two_from_4k_to_1m() {
        assert_eq!(check_chunk_size(4096).ok(), Some(4096));
        assert_eq!(check_chunk_size(64 << 10).ok(), Some(64 << 10));
        assert_eq!(check_chunk_size(1 << 20).ok(), Some(1 << 20));
        for bad in [1u64, 2048, 3000, 96 << 10, 2 << 20, 1 << 40] {
            let err = check_chunk_size(bad).expect_err("refused").to_string();
            assert!(err.contains("power of two from 4K to 1M"), "{err}");
        }
        assert!(check_chunk_size(3000)
            .expect_err("refused")
            .to_string()
            .contains("3000 bytes"));
    }

    #[test]
    fn volume_sizes_must_be_whole_chunks_and_the_message_suggests_sizes() {
        assert!(check_volume_size(10 << 30, 64 << 10).is_ok());
        let err = check_volume_size((1 << 20) + 4096, 64 << 10)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("not a multiple of the chunk size 64K"),
            "{err}"
        );
        assert!(err.contains("volume size 1028K"), "{err}");
        assert!(err.contains("try 1M or 1088K"), "{err}");
        let err = check_volume_size(4096, 64 << 10)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("try 64K"), "{err}");
        assert!(!err.contains(" or "), "{err}");
    }

    #[test]
    fn relative_paths_are_made_absolute_and_backend_locations_kept() {
        let Location::Path(p) = location(Path::new("disk.raw")).expect("resolves") else {
            panic!("a path");
        };
        assert!(p.is_absolute());
        assert!(p.ends_with("disk.raw"));
        assert_eq!(
            location(Path::new("rbd:pool/img")).expect("resolves"),
            Location::parse("rbd:pool/img")
        );
    }
}
