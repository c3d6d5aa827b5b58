//! A minimal NBD client, for requests that well-behaved clients refuse to send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Just enough of the NBD protocol (fixed newstyle, OPT_GO, simple replies) to send requests
/// that qemu and libnbd refuse to send themselves, such as a write to a read-only export.
#[derive(Debug)]
pub struct RawNbd {
    stream: TcpStream,
    /// The transmission flags the server sent.
    pub flags: u16,
    /// The export size.
    pub size: u64,
    cookie: u64,
}

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;

/// Reads the server's greeting and answers with the client flags FIXED_NEWSTYLE | NO_ZEROES.
fn hello(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).expect("server greeting");
    assert_eq!(&greeting[..8], b"NBDMAGIC", "greeting");
    s.write_all(&3u32.to_be_bytes()).expect("client flags");
}

/// An option request.
fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut opt = Vec::new();
    opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&option.to_be_bytes());
    opt.extend_from_slice(&u32::try_from(data.len()).expect("len").to_be_bytes());
    opt.extend_from_slice(data);
    opt
}

/// Connects, sends NBD_OPT_EXPORT_NAME `export` as the first option and returns every byte
/// the server sends after its greeting, up to the end of the connection.
pub fn export_name_answer(port: u16, export: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    hello(&mut s);
    s.write_all(&option(1, export.as_bytes()))
        .expect("NBD_OPT_EXPORT_NAME");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .expect("read until the server closes");
    answer
}

impl RawNbd {
    /// Connects and selects `export` with NBD_OPT_GO; `Err` with the option error type when
    /// the server refuses it.
    pub fn connect(port: u16, export: &str) -> Result<Self, u32> {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Self::over(s, export)
    }

    /// [`RawNbd::connect`] over a connection already made, whose greeting is not read yet.
    pub fn over(mut s: TcpStream, export: &str) -> Result<Self, u32> {
        hello(&mut s);
        let mut data = Vec::new();
        data.extend_from_slice(&u32::try_from(export.len()).expect("len").to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&option(7, &data)).expect("NBD_OPT_GO");
        let (mut flags, mut size) = (0, 0);
        loop {
            let mut head = [0u8; 20];
            s.read_exact(&mut head).expect("option reply");
            let kind = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).expect("option reply data");
            match kind {
                1 => break, // ACK
                3 if data.len() >= 12 && data[..2] == [0, 0] => {
                    size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                    flags = u16::from_be_bytes(data[10..12].try_into().expect("2 bytes"));
                }
                k if k >= 1 << 31 => return Err(k),
                _ => {}
            }
        }
        Ok(Self {
            stream: s,
            flags,
            size,
            cookie: 0,
        })
    }

    fn request(&mut self, kind: u16, offset: u64, len: u32, data: &[u8]) -> u32 {
        self.cookie += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&self.cookie.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.stream.write_all(&req).expect("send request");
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply).expect("simple reply");
        assert_eq!(reply[..4], 0x6744_6698u32.to_be_bytes(), "reply magic");
        assert_eq!(reply[8..], self.cookie.to_be_bytes(), "reply cookie");
        u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"))
    }

    /// NBD_CMD_WRITE; returns the error value (0 for success).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let len = u32::try_from(data.len()).expect("len");
        self.request(1, offset, len, data)
    }

    /// NBD_CMD_FLUSH; returns the error value (0 for success).
    pub fn flush(&mut self) -> u32 {
        self.request(3, 0, 0, &[])
    }

    /// NBD_CMD_READ; the data, or the error value.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        match self.request(0, offset, len, &[]) {
            0 => {
                let mut buf = vec![0u8; len as usize];
                self.stream.read_exact(&mut buf).expect("read data");
                Ok(buf)
            }
            e => Err(e),
        }
    }
}
