//! Failures: exit code 1 and a message that names the problem (including a server that dies
//! while taking a snapshot), and usage errors with exit code 2.

use std::fs;
use std::process::Command;

use serde_json::Value;
use snapvol_engine::{Store, VolumeOptions};

use crate::{path_str, random_image, text, u64_of, Env, SIZE};

// ---------------------------------------------------------------------------------------------
// failures: exit code 1 and a message that names the problem

#[test]
fn a_store_that_is_not_a_directory_is_refused() {
    let env = Env::new();
    fs::write(env.store(), b"not a directory").expect("write");
    let err = env.fails(&["list"]);
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn create_refuses_a_volume_that_already_exists() {
    let env = Env::new();
    env.create("v");
    let err = env.fails(&["create", "v", "--size", "4M"]);
    assert!(err.contains("'v' already exists"), "{err}");
}

#[test]
fn create_refuses_a_size_that_is_not_a_multiple_of_the_chunk_size() {
    let env = Env::new();
    let err = env.fails(&["create", "v", "--size", "4100K"]);
    assert!(
        err.contains("not a multiple of the chunk size 64K"),
        "{err}"
    );
    assert!(!env.store().join("v").exists(), "nothing is left behind");
}

#[test]
fn create_refuses_a_chunk_size_that_is_not_a_power_of_two_from_4k_to_1m() {
    let env = Env::new();
    for bad in ["3000", "2K", "96K", "2M"] {
        let err = env.fails(&["create", "v", "--size", "4M", "--chunk-size", bad]);
        assert!(err.contains("power of two from 4K to 1M"), "{bad}: {err}");
    }
}

#[test]
fn bad_names_are_refused_with_the_allowed_alphabet() {
    let env = Env::new();
    for bad in ["a/b", "a b", "..", "caf\u{e9}"] {
        let err = env.fails(&["create", bad, "--size", "4M"]);
        assert!(err.contains("invalid name"), "{bad}: {err}");
    }
    let err = env.fails(&["create", "a/b", "--size", "4M"]);
    assert!(err.contains("letters, digits"), "{err}");
    env.create("v");
    let err = env.fails(&["snapshot", "create", "v@no/pe"]);
    assert!(err.contains("invalid name 'no/pe'"), "{err}");
}

#[test]
fn snapshot_commands_need_a_vol_at_snap_name() {
    let env = Env::new();
    env.create("v");
    for cmd in ["create", "delete"] {
        let err = env.fails(&["snapshot", cmd, "v"]);
        assert!(err.contains("VOL@SNAP"), "{cmd}: {err}");
    }
    let err = env.fails(&["info", "v@s"]);
    assert!(err.contains("names a snapshot"), "{err}");
}

#[test]
fn commands_on_a_missing_volume_say_it_was_not_found() {
    let env = Env::new();
    fs::write(env.path("a.img"), [1u8; 4096]).expect("write");
    let image = path_str(&env.path("a.img")).to_owned();
    let out = path_str(&env.path("out.img")).to_owned();
    for args in [
        vec!["info", "nope"],
        vec!["info", "nope", "--json"],
        vec!["snapshot", "create", "nope@s"],
        vec!["snapshot", "list", "nope"],
        vec!["snapshot", "delete", "nope@s"],
        vec!["import", "nope", &image],
        vec!["export", "nope", &out],
        vec!["export", "nope@s", &out],
    ] {
        let err = env.fails(&args);
        assert!(err.contains("volume 'nope' not found"), "{args:?}: {err}");
    }
    assert!(
        !env.path("out.img").exists(),
        "a failed export creates no file"
    );
}

#[test]
fn snapshot_create_refuses_a_snapshot_that_already_exists() {
    let env = Env::new();
    env.create("v");
    env.ok(&["snapshot", "create", "v@s"]);
    let err = env.fails(&["snapshot", "create", "v@s"]);
    assert!(err.contains("snapshot 'v@s' already exists"), "{err}");
}

#[test]
fn snapshot_delete_refuses_a_snapshot_that_does_not_exist() {
    let env = Env::new();
    env.create("v");
    let err = env.fails(&["snapshot", "delete", "v@nope"]);
    assert!(err.contains("snapshot 'v@nope' not found"), "{err}");
}

#[test]
fn export_of_a_missing_snapshot_fails_without_touching_the_output() {
    let env = Env::new();
    env.create("v");
    fs::write(env.path("keep.img"), b"precious").expect("write");
    let err = env.fails(&["export", "v@nope", path_str(&env.path("keep.img"))]);
    assert!(err.contains("snapshot 'v@nope' not found"), "{err}");
    assert_eq!(fs::read(env.path("keep.img")).expect("read"), b"precious");
}

#[test]
fn import_refuses_a_file_larger_than_the_volume_before_writing_anything() {
    let env = Env::new();
    env.create("v");
    let image = random_image(SIZE, 21);
    env.import("v", "a.img", &image);
    env.ok(&["snapshot", "create", "v@s"]);

    fs::write(env.path("big.img"), random_image(SIZE + 1, 22)).expect("write");
    let err = env.fails(&["import", "v", path_str(&env.path("big.img"))]);
    assert!(err.contains("larger than volume 'v'"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");

    assert!(env.export("v", "out.img") == image);
    assert_eq!(u64_of(&env.info("v")["target_used_bytes"]), 0);
}

/// What broke: `import v /dev/urandom` measured the character device by seeking to its end,
/// found 0 bytes, and reported success having imported nothing.
#[test]
fn import_refuses_a_stream_whose_size_it_cannot_know_and_writes_nothing() {
    let env = Env::new();
    env.create("v");
    let image = random_image(SIZE, 23);
    env.import("v", "a.img", &image);
    for stream in ["/dev/urandom", "/dev/zero"] {
        let err = env.fails(&["import", "v", stream]);
        assert!(err.contains(stream), "{err}");
        assert!(err.contains("character device"), "{err}");
        assert!(err.contains("nothing was written"), "{err}");
    }
    assert!(env.export("v", "out.img") == image);
}

#[test]
fn import_of_a_missing_file_names_the_file() {
    let env = Env::new();
    env.create("v");
    let err = env.fails(&["import", "v", "no-such.img"]);
    assert!(err.contains("no-such.img"), "{err}");
}

#[test]
fn a_volume_held_by_another_process_is_refused_as_in_use() {
    let env = Env::new();
    env.create("v");
    fs::write(env.path("a.img"), [1u8; 4096]).expect("write");
    let image = path_str(&env.path("a.img")).to_owned();
    let out = path_str(&env.path("out.img")).to_owned();

    let held = Store::new(env.store())
        .open("v", VolumeOptions::default())
        .expect("the test opens the volume");
    for args in [
        vec!["info", "v"],
        vec!["snapshot", "create", "v@s"],
        vec!["snapshot", "list", "v"],
        vec!["import", "v", &image],
        vec!["export", "v", &out],
    ] {
        let err = env.fails(&args);
        assert!(err.contains("in use"), "{args:?}: {err}");
        assert!(err.contains("'v'"), "{args:?}: {err}");
    }
    held.close().expect("close");
    env.ok(&["info", "v"]);
}

#[test]
fn list_shows_a_volume_in_use_instead_of_failing() {
    let env = Env::new();
    env.create("busy");
    env.create("free");
    let held = Store::new(env.store())
        .open("busy", VolumeOptions::default())
        .expect("the test opens the volume");

    let list = env.json(&["list", "--json"]);
    assert_eq!(list[0]["name"], "busy");
    assert_eq!(list[0]["in_use"], true);
    assert!(list[0]["holder"].is_string(), "{list:#}");
    assert_eq!(list[0]["size"], Value::Null);
    assert_eq!(list[1]["name"], "free");
    assert_eq!(list[1]["in_use"], false);
    assert_eq!(u64_of(&list[1]["size"]), SIZE);

    let out = env.ok(&["list"]);
    let busy = out
        .lines()
        .find(|l| l.starts_with("busy"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(busy.contains("in use"), "{out}");
    held.close().expect("close");
}

/// What broke: when the server died while taking a snapshot, the CLI reported a plain error,
/// yet the snapshot could exist after a restart. A broken connection after the request went
/// out now says that the outcome is unknown and how to find it out.
#[test]
fn a_server_that_dies_during_snapshot_create_leaves_an_error_that_says_the_outcome_is_unknown() {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    let env = Env::new();
    env.create("v");
    // A stand-in for a server that holds the volume, reads the request and dies before
    // answering.
    let mut holder = Command::new("flock")
        .args([
            "-x",
            path_str(&env.store().join("v").join("lock")),
            "sleep",
            "60",
        ])
        .spawn()
        .expect("flock(1) runs");
    // Until flock(1) has the lock, `info` (a reader) succeeds; then it says the volume is in use.
    while env.run(&["info", "v"]).status.success() {
        std::thread::yield_now();
    }
    assert!(text(&env.run(&["info", "v"]).stderr).contains("in use"));
    let listener = UnixListener::bind(env.store().join("control.sock")).expect("bind");
    let dying = std::thread::spawn(move || {
        // The CLI connects once to see the server is there, then once with its request.
        let mut requests = Vec::new();
        for conn in listener.incoming().take(2) {
            let conn = conn.expect("accept");
            let mut line = String::new();
            std::io::BufReader::new(&conn)
                .read_line(&mut line)
                .expect("read");
            requests.push(line);
        }
        requests
    });
    let err = env.fails(&["snapshot", "create", "v@s1"]);
    assert!(
        err.contains("may or may not have been taken") && err.contains("snapvol snapshot list v"),
        "{err}"
    );
    let requests = dying.join().expect("the stand-in server");
    assert!(
        requests
            .iter()
            .any(|r| r.contains("snapshot_create") && r.contains("s1")),
        "{requests:?}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

// ---------------------------------------------------------------------------------------------
// usage errors: exit code 2

#[test]
fn junk_sizes_are_usage_errors_that_name_the_value() {
    let env = Env::new();
    for bad in ["ten", "10X", "1.5G", "0", "16E", "-4M", ""] {
        let err = env.usage_error(&["create", "v", "--size", bad]);
        assert!(err.contains("--size"), "{bad:?}: {err}");
    }
    let err = env.usage_error(&["create", "v", "--size", "4M", "--chunk-size", "64Q"]);
    assert!(err.contains("unknown unit 'Q'"), "{err}");
    let err = env.usage_error(&["create", "v", "--size", "16E"]);
    assert!(err.contains("too large"), "{err}");
    let err = env.usage_error(&["create", "v", "--size", "0"]);
    assert!(err.contains("zero"), "{err}");
    assert!(!env.store().exists());
}

#[test]
fn an_unknown_write_mode_is_a_usage_error_that_names_the_allowed_values_and_creates_nothing() {
    let env = Env::new();
    for bad in ["bogus", "Throughput", "fast", ""] {
        let err = env.usage_error(&["create", "v", "--size", "4M", "--write-mode", bad]);
        assert!(err.contains("--write-mode"), "{bad:?}: {err}");
        assert!(
            err.contains("atomic") && err.contains("throughput"),
            "{bad:?}: the allowed values are not named: {err}"
        );
        assert!(!env.store().exists(), "{bad:?}: a store was created");
    }
    let err = env.usage_error(&["create", "v", "--size", "4M", "--write-mode", "bogus"]);
    assert!(err.contains("'bogus'"), "{err}");
    // Not in an existing store either.
    env.create("other");
    env.usage_error(&["create", "v", "--size", "4M", "--write-mode", "bogus"]);
    assert!(!env.store().join("v").exists(), "a volume was created");
    let list = env.json(&["list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
}

#[test]
fn missing_arguments_and_unknown_commands_are_usage_errors() {
    let env = Env::new();
    env.usage_error(&["create", "v"]);
    env.usage_error(&["export", "v"]);
    env.usage_error(&["snapshot"]);
    env.usage_error(&["frobnicate"]);
    env.usage_error(&[]);
}

#[test]
fn help_teaches_with_examples() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    assert!(
        top.contains("source VLUN") && top.contains("target VLUN"),
        "{top}"
    );
    for args in [
        vec!["--help"],
        vec!["create", "--help"],
        vec!["import", "--help"],
        vec!["export", "--help"],
        vec!["snapshot", "--help"],
    ] {
        let help = env.ok(&args);
        assert!(help.contains("Examples:"), "{args:?}:\n{help}");
        assert!(help.contains("snapvol "), "{args:?}:\n{help}");
    }
}
