//! How the server finds exports by name. The server asks on every `NBD_OPT_INFO`, `GO`,
//! `EXPORT_NAME`, `LIST` and meta-context option, so exports may come and go while it serves;
//! a connection already in transmission keeps the device it was given.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::device::BlockDevice;

/// An export: the device to serve and a description for `NBD_INFO_DESCRIPTION`.
#[derive(Clone)]
pub struct Export {
    /// The storage behind the export.
    pub device: Arc<dyn BlockDevice>,
    /// Shown to people by `nbdinfo` and friends; may be empty.
    pub description: String,
}

impl Export {
    /// An export of `device` with a description.
    pub fn new(device: Arc<dyn BlockDevice>, description: impl Into<String>) -> Self {
        Export {
            device,
            description: description.into(),
        }
    }
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("size", &self.device.size())
            .field("read_only", &self.device.read_only())
            .field("description", &self.description)
            .finish()
    }
}

/// The catalogue the server consults. The empty name is the spec's "default export".
pub trait Exports: Send + Sync {
    /// The export called `name`, if it exists now.
    fn lookup(&self, name: &str) -> Option<Export>;

    /// The names to announce for `NBD_OPT_LIST`.
    fn names(&self) -> Vec<String>;
}

/// A simple mutable catalogue: insert and remove exports while the server runs.
#[derive(Debug, Default)]
pub struct ExportMap {
    exports: RwLock<BTreeMap<String, Export>>,
}

impl ExportMap {
    /// An empty catalogue.
    pub fn new() -> Self {
        ExportMap::default()
    }

    /// Adds or replaces the export called `name`; returns the one it replaced.
    pub fn insert(&self, name: impl Into<String>, export: Export) -> Option<Export> {
        self.exports.write().insert(name.into(), export)
    }

    /// Removes the export called `name`; connections already using it keep it.
    pub fn remove(&self, name: &str) -> Option<Export> {
        self.exports.write().remove(name)
    }
}

impl Exports for ExportMap {
    fn lookup(&self, name: &str) -> Option<Export> {
        self.exports.read().get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.exports.read().keys().cloned().collect()
    }
}

impl<T: Exports + ?Sized> Exports for Arc<T> {
    fn lookup(&self, name: &str) -> Option<Export> {
        (**self).lookup(name)
    }

    fn names(&self) -> Vec<String> {
        (**self).names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn export_map_lookups_follow_inserts_and_removals() {
        let map = ExportMap::new();
        assert!(map.lookup("a").is_none());
        map.insert("a", Export::new(Arc::new(MemDevice::new(10)), "first"));
        map.insert("b", Export::new(Arc::new(MemDevice::new(20)), ""));
        assert_eq!(map.names(), vec!["a".to_string(), "b".to_string()]);
        let a = map.lookup("a").unwrap();
        assert_eq!((a.device.size(), a.description.as_str()), (10, "first"));
        assert!(format!("{a:?}").contains("first"));
        assert!(map.remove("a").is_some());
        assert!(map.lookup("a").is_none());
        let shared: Arc<dyn Exports> = Arc::new(map);
        assert_eq!(shared.names(), vec!["b".to_string()]);
        assert!(shared.lookup("b").is_some());
    }
}
