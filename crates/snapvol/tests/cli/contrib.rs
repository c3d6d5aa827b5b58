//! The files in `contrib/`: the systemd unit passes `systemd-analyze verify` (no running
//! systemd needed), and every flag it gives `snapvol serve` is one that serve takes.

use std::path::Path;
use std::process::Command;

use crate::{text, BIN};

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/snapvol.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze verify` reports problems (an unknown option, a bad value) as warnings and
/// still exits 0, so the test wants it silent. The unit's ExecStart names the installed binary,
/// which it checks exists: the copy verified names the one under test instead.
#[test]
fn the_service_unit_passes_systemd_analyze_verify_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("snapvol.service");
    let unit = unit();
    assert!(unit.contains("ExecStart=/usr/local/bin/snapvol serve"));
    std::fs::write(&copy, unit.replace("/usr/local/bin/snapvol", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect(
            "systemd-analyze is not installed, and this test checks the unit with it: install \
             the Debian package `systemd` (apt-get install systemd; it need not run)",
        );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn every_flag_the_unit_gives_serve_is_one_serve_takes() {
    let unit = unit();
    let exec = unit
        .split("\nExecStart=")
        .nth(1)
        .expect("an ExecStart line")
        .split("\n\n")
        .next()
        .unwrap_or_default();
    // The command runs to the first line that is not continued with a backslash.
    let mut command = String::new();
    for line in exec.lines() {
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if !line.ends_with('\\') {
            break;
        }
    }
    let flags: Vec<&str> = command
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect();
    assert!(flags.len() >= 5, "{command}");
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = text(&help.stdout);
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")),
            "serve takes no {flag}:\n{help}"
        );
    }
    for needed in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
}
