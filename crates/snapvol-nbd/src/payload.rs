//! Large write payloads, reused once nothing else holds them.
//!
//! A write's payload is read from the socket into an `Arc<[u8]>` that the device may keep (the
//! snapvol engine keeps it in its cache until the data is written out). A fresh allocation of
//! a large buffer costs a page fault per page, and, where the allocator returns large buffers
//! to the system (as `snapvol serve` makes glibc do, to bound its memory), an unmap with a TLB
//! shootdown on every core when it is freed: at 1 MiB per write, that was a quarter of the
//! server's time. So the pool keeps a clone of each large buffer it hands out; once every
//! other holder has let go, only the pool holds it, and the next payload of the same length
//! reuses it.
//!
//! What it keeps is bounded: buffers of [`MIN_LEN`] or more only, at most [`MAX_KEPT`] bytes of
//! them in all (in use or not), and a buffer seen free for [`IDLE`] is let go (by the next
//! caller, or by the pool's sweeper thread, started with the first large payload, which looks
//! every [`IDLE`]), so an idle server gives the memory back within about three seconds.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Payloads shorter than this come from the allocator's heap, where they are cheap.
pub const MIN_LEN: usize = 128 << 10;
/// The most bytes of buffers the pool keeps, in use or free.
pub const MAX_KEPT: usize = 192 << 20;
/// A buffer seen free this long is let go.
pub const IDLE: Duration = Duration::from_secs(1);

/// A buffer the pool keeps, and since when the pool has seen it free (nobody else holding
/// it), if it has.
struct Kept {
    buf: Arc<[u8]>,
    free_since: Option<Instant>,
}

/// Large payload buffers kept for reuse.
#[derive(Default)]
pub struct PayloadPool {
    kept: Mutex<Vec<Kept>>,
}

/// The process's pool, shared by every connection.
static POOL: LazyLock<PayloadPool> = LazyLock::new(|| {
    // Best effort: without the sweeper an idle server keeps its free buffers until the next
    // large write.
    let _ = std::thread::Builder::new()
        .name("nbd-payloads".into())
        .spawn(|| loop {
            std::thread::sleep(IDLE);
            POOL.sweep(Instant::now());
        });
    PayloadPool::default()
});

/// A buffer of `len` bytes for a write payload, its contents unspecified: the caller fills
/// every byte (with [`Arc::get_mut`], which succeeds: the buffer has one owner), then calls
/// [`keep`] with it.
pub fn take(len: usize) -> Arc<[u8]> {
    if len < MIN_LEN {
        return fresh(len);
    }
    POOL.take(len, Instant::now())
}

/// Lets the pool keep `buf` (taken with [`take`] and filled) for reuse once nobody else holds
/// it.
pub fn keep(buf: &Arc<[u8]>) {
    if buf.len() >= MIN_LEN {
        POOL.keep(buf);
    }
}

fn fresh(len: usize) -> Arc<[u8]> {
    std::iter::repeat_n(0u8, len).collect()
}

/// Whether only the pool holds `buf`.
fn free(buf: &Arc<[u8]>) -> bool {
    Arc::strong_count(buf) == 1
}

/// Takes out of `kept` the buffers seen free for [`IDLE`] (the caller drops them once it has
/// let go of the lock: freeing a large buffer unmaps it), and notes when the others it finds
/// free became so.
fn idle(kept: &mut Vec<Kept>, now: Instant) -> Vec<Kept> {
    let mut gone = Vec::new();
    let mut i = 0;
    while i < kept.len() {
        let k = &mut kept[i];
        if free(&k.buf) {
            let since = *k.free_since.get_or_insert(now);
            if now.duration_since(since) >= IDLE {
                gone.push(kept.swap_remove(i));
                continue;
            }
        }
        i += 1;
    }
    gone
}

impl PayloadPool {
    /// A free kept buffer of `len` bytes, taken out of the pool (so that it has one owner),
    /// or a fresh one.
    pub fn take(&self, len: usize, now: Instant) -> Arc<[u8]> {
        let mut kept = self.kept.lock();
        let gone = idle(&mut kept, now);
        let reused = kept
            .iter()
            .position(|k| k.buf.len() == len && free(&k.buf))
            .map(|i| kept.swap_remove(i).buf);
        drop(kept);
        drop(gone);
        reused.unwrap_or_else(|| fresh(len))
    }

    /// Keeps a clone of `buf`, if the pool has room for it.
    pub fn keep(&self, buf: &Arc<[u8]>) {
        let mut kept = self.kept.lock();
        let bytes: usize = kept.iter().map(|k| k.buf.len()).sum();
        if bytes + buf.len() <= MAX_KEPT {
            kept.push(Kept {
                buf: Arc::clone(buf),
                free_since: None,
            });
        }
    }

    /// Lets go of the buffers seen free for [`IDLE`].
    pub fn sweep(&self, now: Instant) {
        let gone = idle(&mut self.kept.lock(), now);
        drop(gone);
    }

    /// Buffers kept, and how many of them only the pool holds.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let kept = self.kept.lock();
        (kept.len(), kept.iter().filter(|k| free(&k.buf)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: usize = 1 << 20;

    #[test]
    fn a_buffer_is_reused_only_once_nobody_else_holds_it() {
        let pool = PayloadPool::default();
        let t = Instant::now();
        let mut a = pool.take(LEN, t);
        Arc::get_mut(&mut a).expect("one owner").fill(1);
        pool.keep(&a);
        let held = Arc::clone(&a); // the device keeps it
        drop(a);
        // Still held: a fresh buffer, not that one.
        let b = pool.take(LEN, t);
        assert!(!Arc::ptr_eq(&b, &held));
        assert_eq!(pool.counts(), (1, 0));
        let at = held.as_ptr();
        drop(held);
        assert_eq!(pool.counts(), (1, 1));
        // Free now: handed out again, with one owner, so the caller can fill it.
        let mut c = pool.take(LEN, t);
        assert_eq!(c.as_ptr(), at);
        assert!(Arc::get_mut(&mut c).is_some());
        assert_eq!(pool.counts(), (0, 0));
        // Another length is never handed out for it.
        pool.keep(&c);
        drop(c);
        let d = pool.take(LEN / 2, t);
        assert_eq!(d.len(), LEN / 2);
        assert_ne!(d.as_ptr(), at);
        assert_eq!(pool.counts(), (1, 1));
    }

    #[test]
    fn free_buffers_are_let_go_once_seen_idle_and_what_is_kept_is_bounded() {
        let pool = PayloadPool::default();
        let t = Instant::now();
        let in_use: Vec<_> = (0..MAX_KEPT / LEN + 10)
            .map(|_| {
                let b = pool.take(LEN, t);
                pool.keep(&b);
                b
            })
            .collect();
        assert_eq!(
            pool.counts(),
            (MAX_KEPT / LEN, 0),
            "at most MAX_KEPT bytes kept"
        );
        // Held by the device for a long while: never let go meanwhile.
        pool.sweep(t + 10 * IDLE);
        assert_eq!(pool.counts(), (MAX_KEPT / LEN, 0));
        drop(in_use);
        // Idle is counted from when the pool first sees a buffer free.
        pool.sweep(t + 11 * IDLE);
        assert_eq!(pool.counts(), (MAX_KEPT / LEN, MAX_KEPT / LEN));
        pool.sweep(t + 11 * IDLE + IDLE / 2);
        assert_eq!(pool.counts().0, MAX_KEPT / LEN, "not idle long enough yet");
        // A buffer taken and kept again starts over.
        let b = pool.take(LEN, t + 11 * IDLE + IDLE / 2);
        pool.keep(&b);
        drop(b);
        pool.sweep(t + 12 * IDLE);
        assert_eq!(pool.counts(), (1, 1), "seen free for IDLE: let go");
        pool.sweep(t + 13 * IDLE + IDLE / 2);
        assert_eq!(pool.counts(), (0, 0));
    }
}
