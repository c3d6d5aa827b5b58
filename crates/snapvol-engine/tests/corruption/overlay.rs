//! A copy-on-write VLUN over a pristine image.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use snapvol_engine::vlun::Vlun;

const PAGE: usize = 4096;

/// A VLUN that reads a shared pristine image and keeps its own writes in private pages, so a
/// test can damage and open "a fresh copy" of a multi-MiB image without copying it.
#[derive(Debug)]
pub(crate) struct Overlay {
    base: Arc<Vec<u8>>,
    state: Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    pages: HashMap<u64, Box<[u8]>>,
    len: u64,
}

impl Overlay {
    pub(crate) fn new(base: &Arc<Vec<u8>>) -> Self {
        Self {
            base: Arc::clone(base),
            state: Mutex::new(OverlayState {
                pages: HashMap::new(),
                len: base.len() as u64,
            }),
        }
    }

    fn base_page(&self, page: u64) -> Box<[u8]> {
        let mut p = vec![0u8; PAGE].into_boxed_slice();
        let start = (page as usize * PAGE).min(self.base.len());
        let end = (start + PAGE).min(self.base.len());
        p[..end - start].copy_from_slice(&self.base[start..end]);
        p
    }

    /// XORs the byte at `offset` with `mask`.
    pub(crate) fn flip(&self, offset: u64, mask: u8) {
        let mut b = [0u8];
        self.read_at(&mut b, offset).expect("overlay read");
        b[0] ^= mask;
        self.write_at(&b, offset).expect("overlay write");
    }
}

impl Vlun for Overlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.state.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let page = pos / PAGE as u64;
            let within = (pos % PAGE as u64) as usize;
            let n = (PAGE - within).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match st.pages.get(&page) {
                Some(p) => dst.copy_from_slice(&p[within..within + n]),
                None => {
                    let start = (pos as usize).min(self.base.len());
                    let end = (pos as usize + n).min(self.base.len());
                    dst[..end - start].copy_from_slice(&self.base[start..end]);
                    dst[end - start..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let page = pos / PAGE as u64;
            let within = (pos % PAGE as u64) as usize;
            let n = (PAGE - within).min(buf.len() - done);
            let p = match st.pages.entry(page) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.base_page(page)),
            };
            p[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        st.len = st.len.max(offset + buf.len() as u64);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().len)
    }

    fn growable(&self) -> bool {
        true
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.state.lock().len = len;
        Ok(())
    }
}
