//! Everything the commands print: JSON documents, aligned tables, times, progress bars and
//! error messages.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use snapvol_engine::{SnapshotInfo, VolumeInfo};

/// `info --json`: one volume.
#[derive(Debug, Serialize)]
pub struct InfoJson {
    /// Volume name.
    pub name: String,
    /// Volume size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// How writes are made durable: `atomic` or `throughput` (`create --write-mode`).
    pub write_mode: snapvol_engine::WriteMode,
    /// Cap on the target VLUN in bytes; `null` when it grows as needed.
    pub target_size: Option<u64>,
    /// Bytes of the target's data area that hold preserved chunks.
    pub target_used_bytes: u64,
    /// Bytes of snapshot metadata in the target.
    pub metadata_bytes: u64,
    /// Current size of the target VLUN.
    pub target_file_bytes: u64,
    /// Number of preserved chunks.
    pub preserved_chunks: u64,
    /// Bytes of originals that writes still in the cache will preserve once destaged (only
    /// a volume that is being served, or one left by a crash, has any).
    pub pending_preserve_bytes: u64,
    /// Reads of preserved chunks that failed their checksum since the volume was opened (each
    /// answered with EIO); non-zero means a damaged snapshot store: run `check --data`.
    pub checksum_errors: u64,
    /// The snapshot an unfinished rollback is restoring (see `snapshot rollback`), or `null`.
    pub rollback_to: Option<String>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotJson>,
}

/// One snapshot, in `info --json` and `snapshot list --json`.
#[derive(Debug, Serialize)]
pub struct SnapshotJson {
    /// Snapshot name (without the volume).
    pub name: String,
    /// When it was taken, RFC 3339 UTC.
    pub created: String,
    /// Preserved bytes only this snapshot uses (freed when it is deleted).
    pub exclusive_bytes: u64,
    /// Preserved bytes this snapshot shares with other snapshots.
    pub shared_bytes: u64,
}

/// `list --json`: one volume.
#[derive(Debug, Serialize)]
pub struct ListEntryJson {
    /// Volume name.
    pub name: String,
    /// Volume size in bytes (`null` when the volume could not be opened).
    pub size: Option<u64>,
    /// Chunk size in bytes (`null` when the volume could not be opened).
    pub chunk_size: Option<u32>,
    /// Number of snapshots (`null` when the volume could not be opened).
    pub snapshots: Option<usize>,
    /// Whether another process holds the volume open.
    pub in_use: bool,
    /// Whether that process is the store's `snapvol serve` (the figures then come from it).
    pub served: bool,
    /// Who holds it, when `in_use`.
    pub holder: Option<String>,
    /// Why the volume could not be opened, other than being in use.
    pub error: Option<String>,
}

impl From<&SnapshotInfo> for SnapshotJson {
    fn from(s: &SnapshotInfo) -> Self {
        Self {
            name: s.name.clone(),
            created: rfc3339(s.created),
            exclusive_bytes: s.exclusive_bytes,
            shared_bytes: s.shared_bytes,
        }
    }
}

impl From<&VolumeInfo> for InfoJson {
    fn from(v: &VolumeInfo) -> Self {
        Self {
            name: v.name.clone(),
            size: v.size,
            chunk_size: v.chunk_size,
            write_mode: v.write_mode,
            target_size: v.target_size,
            target_used_bytes: v.target_used_bytes,
            metadata_bytes: v.metadata_bytes,
            target_file_bytes: v.target_file_bytes,
            preserved_chunks: v.preserved_chunks,
            pending_preserve_bytes: v.pending_preserve_bytes,
            checksum_errors: v.checksum_errors,
            rollback_to: v.rollback_to.clone(),
            snapshots: v.snapshots.iter().map(SnapshotJson::from).collect(),
        }
    }
}

/// Prints a value as pretty JSON followed by a newline.
pub fn print_json<T: Serialize>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    // Whole, then written once: stdout is line-buffered, and a diff's JSON has a line per
    // extent.
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    out.write_all(&text)?;
    Ok(())
}

/// A time as RFC 3339 UTC with seconds (`2024-05-06T07:08:09Z`).
///
/// Times outside what RFC 3339 can write (before 1970 or after 9999, only possible with a
/// broken clock) are clamped rather than allowed to abort the program.
pub fn rfc3339(t: SystemTime) -> String {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().min(LAST),
        Err(_) => 0,
    };
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Column alignment in a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Pad on the right (text).
    Left,
    /// Pad on the left (numbers).
    Right,
}

/// A plain text table: a header and rows, columns separated by two spaces.
#[derive(Debug)]
pub struct Table {
    header: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[(&'static str, Align)]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table; lines carry no trailing spaces.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let header: Vec<String> = self.header.iter().map(|(h, _)| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((_, align), width)) in self.header.iter().zip(&widths).enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = width.saturating_sub(cell.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        if i + 1 < n {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Key/value lines with the values aligned: `key:   value`.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut text = String::new();
    for (k, v) in pairs {
        let key = format!("{k}:");
        text.push_str(&format!("{key:<width$}  {v}\n"));
    }
    text
}

/// A byte-count progress bar on stderr, or a hidden one when stderr is not a terminal.
pub fn progress(total: u64, message: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

/// The one-line message for a failure: the error and its causes joined by `": "`, leaving
/// out a cause whose text the message already contains (engine errors print their cause).
pub fn error_message(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right)]);
        t.row(vec!["monday".into(), "4K".into()]);
        t.row(vec!["x".into(), "128M".into()]);
        assert_eq!(t.render(), "NAME    SIZE\nmonday    4K\nx       128M\n");
    }

    #[test]
    fn the_last_text_column_is_not_padded() {
        let mut t = Table::new(&[("A", Align::Right), ("NOTE", Align::Left)]);
        t.row(vec!["1".into(), String::new()]);
        t.row(vec!["22".into(), "in use".into()]);
        assert_eq!(t.render(), " A  NOTE\n 1\n22  in use\n");
    }

    #[test]
    fn key_values_are_aligned() {
        let text = key_values(&[("name", "v".into()), ("chunk size", "64K".into())]);
        assert_eq!(text, "name:        v\nchunk size:  64K\n");
    }

    #[test]
    fn times_are_rfc3339_utc_and_never_panic() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn error_messages_are_one_line_without_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::new(io).context("cannot open disk.img");
        assert_eq!(error_message(&err), "cannot open disk.img: No such file");

        #[derive(Debug)]
        struct Repeats(std::io::Error);
        impl std::fmt::Display for Repeats {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "read failed: {}", self.0)
            }
        }
        impl std::error::Error for Repeats {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = Repeats(std::io::Error::other("disk on fire"));
        let err = Err::<(), _>(inner).context("export").unwrap_err();
        assert_eq!(error_message(&err), "export: read failed: disk on fire");
    }

    #[test]
    fn snapshot_json_has_the_documented_fields() {
        let s = SnapshotJson {
            name: "monday".into(),
            created: rfc3339(UNIX_EPOCH),
            exclusive_bytes: 1,
            shared_bytes: 2,
        };
        let v = serde_json::to_value(&s).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({"name": "monday", "created": "1970-01-01T00:00:00Z",
                               "exclusive_bytes": 1, "shared_bytes": 2})
        );
    }
}
