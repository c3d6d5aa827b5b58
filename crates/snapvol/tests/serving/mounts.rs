//! FUSE and loop mounts, always undone.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::tools::{output_within, run_ok, text, tool, wait_child};
use super::LIMIT;

/// An NBD export as the file `DIR/disk` through nbdfuse; unmounted when dropped.
#[derive(Debug)]
pub struct FuseDisk {
    dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl FuseDisk {
    pub fn mount(dir: &Path, uri: &str, read_only: bool) -> Self {
        fs::create_dir_all(dir).expect("FUSE mount point");
        let log = dir.with_extension("nbdfuse.log");
        let mut cmd = tool("nbdfuse");
        if read_only {
            cmd.arg("--readonly");
        }
        let child = cmd
            .arg(dir.join("disk"))
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("nbdfuse log"))
            .stderr(OpenOptions::new().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start nbdfuse");
        let mut fuse = Self {
            dir: dir.to_owned(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fuse.disk().exists() {
            if let Some(status) = fuse
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                fuse.child = None;
                panic!(
                    "nbdfuse {uri} exited with {status} before mounting:\n{}",
                    fs::read_to_string(&fuse.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nbdfuse {uri} did not mount within 30 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        fuse
    }

    /// The file that is the export.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }

    /// fsync on the file: FUSE sends it to nbdfuse, which sends an NBD FLUSH.
    pub fn flush(&self) {
        File::options()
            .write(true)
            .open(self.disk())
            .and_then(|f| f.sync_all())
            .expect("fsync the nbdfuse file");
    }

    /// Unmounts and waits for nbdfuse to exit.
    pub fn unmount(mut self) {
        self.release(true);
    }

    fn release(&mut self, strict: bool) {
        let Some(child) = self.child.take() else {
            return;
        };
        // A loop device that was just detached may hold the file for a moment.
        let mut last = None;
        for _ in 0..100 {
            let out = output_within(tool("umount").arg(&self.dir), LIMIT);
            if out.status.success() {
                last = None;
                break;
            }
            last = Some(text(&out.stderr));
            thread::sleep(Duration::from_millis(100));
        }
        if let Some(err) = last {
            let _ = output_within(tool("umount").arg("-l").arg(&self.dir), LIMIT);
            assert!(!strict, "umount {} failed: {err}", self.dir.display());
        }
        let (status, _) = wait_child(child, Duration::from_secs(30));
        if strict {
            assert!(
                status.is_some(),
                "nbdfuse did not exit after umount:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        self.release(false);
    }
}

/// A filesystem image mounted through a loop device; unmounted when dropped.
#[derive(Debug)]
pub struct LoopMount {
    image: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

impl LoopMount {
    /// `mount -o loop,OPTIONS IMAGE MNT`.
    pub fn mount(image: &Path, mnt: &Path, options: &str) -> Self {
        fs::create_dir_all(mnt).expect("mount point");
        let opts = if options.is_empty() {
            "loop".to_owned()
        } else {
            format!("loop,{options}")
        };
        run_ok(
            tool("mount")
                .args(["-t", "ext4", "-o", &opts])
                .arg(image)
                .arg(mnt),
        );
        Self {
            image: image.to_owned(),
            mnt: mnt.to_owned(),
            mounted: true,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// Unmounts, and waits until the loop device let go of the image.
    pub fn unmount(mut self) {
        self.mounted = false;
        run_ok(tool("umount").arg(&self.mnt));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = run_ok(tool("losetup").arg("-j").arg(&self.image));
            if out.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the loop device still holds {}: {}",
                self.image.display(),
                text(&out.stdout)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let out = output_within(tool("umount").arg(&self.mnt), LIMIT);
            if !out.status.success() {
                let _ = output_within(tool("umount").arg("-l").arg(&self.mnt), LIMIT);
            }
        }
    }
}
