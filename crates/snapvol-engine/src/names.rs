//! Names of volumes and snapshots: what users type, what export names and directories use.

use crate::error::{Error, Result};

/// Checks a volume or snapshot name: 1 to 128 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("names must not be empty");
    }
    if name.len() > 128 {
        return bad("names are at most 128 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("names may contain only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}
