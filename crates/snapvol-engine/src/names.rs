//! Names of volumes and snapshots: what users type, what export names and directories use.
//! Rules only: it looks nothing up and imports nothing but the error type.

use crate::error::{Error, Result};

/// Names of the store's own entries, beside the volumes' directories.
const RESERVED: &[&str] = &["control.sock"];

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
    if RESERVED.contains(&name) {
        return bad("the store uses that name for itself");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("names may contain only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What broke: a volume named `control.sock` took the place of the control socket, and
    /// `snapvol serve` failed with "Is a directory".
    #[test]
    fn the_control_sockets_name_is_not_a_volume_name() {
        assert!(validate_name("control.sock").is_err());
        assert!(validate_name("control.sock2").is_ok());
    }
}
