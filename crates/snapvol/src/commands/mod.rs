//! One module per command; [`run`] dispatches.

mod check;
mod create;
pub(crate) mod diff;
mod export;
mod export_diff;
mod import;
mod import_diff;
mod info;
mod list;
mod snapshot;

use anyhow::{anyhow, bail, Context, Result};
use snapvol_engine::{validate_name, Error, Store, Volume, VolumeOptions};

use crate::cli::{Cli, Command, SnapshotCommand};

/// Runs the command the user asked for.
pub fn run(cli: Cli) -> Result<()> {
    // rbd:POOL/IMAGE locations and rbd:POOL stores; Ceph is loaded the first time one is used.
    snapvol_rbd::register(cli.ceph_conf.clone(), cli.ceph_id.clone());
    let store = Store::at(&cli.store)?;
    if cli.store.exists() && !cli.store.is_dir() {
        bail!(
            "the store {} is not a directory (set --store or SNAPVOL_STORE to a directory)",
            cli.store.display()
        );
    }
    match cli.command {
        Command::Create(args) => create::run(&store, args),
        Command::List(args) => list::run(&store, args.json),
        Command::Info(args) => info::run(&store, &args.volume, args.json),
        Command::Snapshot(SnapshotCommand::Create { snapshot }) => {
            snapshot::create(&store, &snapshot)
        }
        Command::Snapshot(SnapshotCommand::List { volume, json }) => {
            snapshot::list(&store, &volume, json)
        }
        Command::Snapshot(SnapshotCommand::Delete { snapshot }) => {
            snapshot::delete(&store, &snapshot)
        }
        Command::Snapshot(SnapshotCommand::Rollback { snapshot, force }) => {
            snapshot::rollback(&store, &snapshot, force)
        }
        Command::Diff(args) => diff::run(&store, args),
        Command::Import(args) => import::run(&store, args),
        Command::Export(args) => export::run(&store, args),
        Command::ImportDiff(args) => import_diff::run(&store, args),
        Command::Check(args) => check::run(&store, args),
        Command::Serve(args) => crate::serve::run(&store, args),
    }
}

/// Checks that `spec` names a volume (not a snapshot).
fn parse_volume(spec: &str) -> Result<&str> {
    if spec.contains('@') {
        bail!("'{spec}' names a snapshot; this command takes a volume name (VOL)");
    }
    validate_name(spec)?;
    Ok(spec)
}

/// Engine options with the cache size overridden when one was given.
fn volume_options(cache_size: Option<u64>) -> VolumeOptions {
    let mut opts = VolumeOptions::default();
    if let Some(bytes) = cache_size {
        opts.cache_size = bytes;
    }
    opts
}

/// An error opening a volume, saying which store it was looked for in when it is not there.
fn open_error(store: &Store, e: Error) -> anyhow::Error {
    match e {
        Error::VolumeNotFound(_) => anyhow!("{e} in store {}", store.name()),
        e => e.into(),
    }
}

/// Where a management command runs: on the volume opened here, or — when `snapvol serve`
/// holds it — in the server, through the store's control socket.
enum Access {
    Local(Volume),
    Served,
}

/// Opens `name` here to change it, or finds the server that has it open.
fn access(store: &Store, name: &str) -> Result<Access> {
    let opened = unless_served(store, name, || store.open(name, VolumeOptions::default()));
    served_if_locked(store, name, opened)
}

/// Opens `name` here to look at it (writing nothing, so this works on a store mounted
/// read-only), or finds the server that has it open.
fn access_read_only(store: &Store, name: &str) -> Result<Access> {
    let opened = unless_served(store, name, || store.open_read_only(name));
    served_if_locked(store, name, opened)
}

/// `open()`, unless a server on this host holds `volume` of a shared store (`rbd:POOL`) and
/// answers: then the [`Error::Locked`] that sends the command to it, without trying the
/// volume's lock. Trying it first can win it when the server's lease ran out only because
/// the cluster was unreachable for longer than the lease (its renewal waited, as every
/// request did): an exclusive open would then fence the live server, a shared one make its
/// renewal fail, and either way the server stops serving the volume.
fn unless_served<T>(
    store: &Store,
    volume: &str,
    open: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    if store.shared() && is_served(store, volume) {
        return Err(Error::Locked {
            volume: volume.to_owned(),
            holder: "snapvol serve on this host".to_owned(),
        });
    }
    open()
}

fn served_if_locked(store: &Store, name: &str, opened: Result<Volume, Error>) -> Result<Access> {
    match opened {
        Ok(v) => Ok(Access::Local(v)),
        Err(Error::Locked { .. }) if is_served(store, name) => Ok(Access::Served),
        Err(e) => Err(open_error(store, e)),
    }
}

/// Whether a `snapvol serve` on this host holds `volume` and answers on its control socket.
fn is_served(store: &Store, volume: &str) -> bool {
    store
        .server_socket(volume)
        .is_some_and(|path| crate::serve::control::is_live(&path))
}

/// Runs `req` in the server that holds the store.
fn remote<T: serde::de::DeserializeOwned>(
    store: &Store,
    req: crate::serve::control::Request,
) -> Result<T> {
    let response = crate::serve::control::request(store, &req)?
        .ok_or_else(|| anyhow!("the snapvol server holding the store stopped answering"))?;
    Ok(serde_json::from_value(response.into_result()?)?)
}

/// Names snapshots in engine errors as `VOL@SNAP`, the way the user wrote them.
fn qualify(volume: &str, err: Error) -> anyhow::Error {
    let full = |snap: &str| {
        if snap.contains('@') {
            snap.to_owned()
        } else {
            format!("{volume}@{snap}")
        }
    };
    match err {
        Error::SnapshotNotFound(snap) => anyhow!(
            "snapshot '{}' not found (see: snapvol snapshot list {volume})",
            full(&snap)
        ),
        Error::SnapshotExists(snap) => anyhow!("snapshot '{}' already exists", full(&snap)),
        e => e.into(),
    }
}

/// Engine errors that came back from the server, named the way the user wrote them.
fn requalify(volume: &str, err: anyhow::Error) -> anyhow::Error {
    match err.downcast::<snapvol_engine::Error>() {
        Ok(e) => qualify(volume, e),
        Err(e) => e,
    }
}

/// Runs `f` on an open volume and always closes it; the first error wins.
fn with_volume<T>(vol: Volume, f: impl FnOnce(&Volume) -> Result<T>) -> Result<T> {
    let result = f(&vol);
    let name = vol.name().to_owned();
    let closed = vol.close();
    let value = result?;
    closed.with_context(|| format!("closing volume '{name}'"))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_errors_name_the_snapshot_as_vol_at_snap_exactly_once() {
        let bare = qualify("v", Error::SnapshotNotFound("s".into())).to_string();
        let full = qualify("v", Error::SnapshotNotFound("v@s".into())).to_string();
        assert!(bare.starts_with("snapshot 'v@s' not found"), "{bare}");
        assert_eq!(bare, full);
        let exists = qualify("v", Error::SnapshotExists("s".into())).to_string();
        assert_eq!(exists, "snapshot 'v@s' already exists");
    }

    #[test]
    fn a_volume_argument_may_not_name_a_snapshot() {
        assert!(parse_volume("v").is_ok());
        assert!(parse_volume("v@s")
            .expect_err("refused")
            .to_string()
            .contains("names a snapshot"));
        assert!(parse_volume("a/b").is_err());
    }
}
