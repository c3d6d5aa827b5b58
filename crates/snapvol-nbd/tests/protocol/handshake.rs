//! The handshake: unknown options, unknown exports, `NBD_OPT_EXPORT_NAME`, client flags,
//! abort, and what info and list describe.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use snapvol_nbd::handshake::frame::{self as hf, InfoRequest};
use snapvol_nbd::proto::*;
use snapvol_nbd::transmission::frame::Command;

use crate::client::Client;
use crate::common::*;

#[test]
fn unknown_options_get_err_unsup_and_go_still_works() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    for option in [NBD_OPT_STARTTLS, NBD_OPT_EXTENDED_HEADERS, 0x4242] {
        let r = c.option(option, b"whatever");
        assert_eq!(Client::last_type(&r), NBD_REP_ERR_UNSUP);
        assert_eq!(r.len(), 1);
    }
    assert_eq!(c.go("vol", true, &[]).0, 4096);
    c.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(c.reply().data, vec![0; 16]);
}

#[test]
fn go_to_an_unknown_export_gets_err_unknown_and_the_handshake_continues() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let r = c.option(
        NBD_OPT_GO,
        &hf::encode_info_request(&InfoRequest {
            name: "missing".into(),
            requests: vec![],
        }),
    );
    assert_eq!(r.len(), 1);
    assert_eq!(Client::last_type(&r), NBD_REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].data).contains("missing"));
    assert_eq!(c.go("vol@snap", false, &[]).0, 4096);
}

#[test]
fn export_name_of_an_unknown_export_closes_the_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let mut out = Vec::new();
    hf::encode_option(&mut out, NBD_OPT_EXPORT_NAME, b"missing");
    c.send_raw(&out);
    assert!(c.closed());
}

#[test]
fn export_name_enters_transmission_without_zero_padding_when_negotiated() {
    let (exports, _, _) = volume_and_snapshot(8192, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let mut out = Vec::new();
    hf::encode_option(&mut out, NBD_OPT_EXPORT_NAME, b"vol");
    c.send_raw(&out);
    let (size, flags) = c.frame(|b| Ok::<_, ()>(hf::parse_export_name_reply(b, true)));
    assert_eq!(size, 8192);
    assert_eq!(flags & NBD_FLAG_READ_ONLY, 0);
    c.request(Command::Read, 0, 7, 0, 8);
    let r = c.reply();
    assert_eq!((r.cookie, r.error, r.data.len()), (7, None, 8));
}

#[test]
fn export_name_sends_124_zero_bytes_to_a_client_without_no_zeroes() {
    let (exports, _, _) = volume_and_snapshot(8192, vec![0; 4096]);
    let h = serve(exports);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    let mut out = Vec::new();
    hf::encode_client_flags(&mut out, NBD_FLAG_C_FIXED_NEWSTYLE);
    hf::encode_option(&mut out, NBD_OPT_EXPORT_NAME, b"vol");
    s.write_all(&out).unwrap();
    let mut reply = [0u8; 134];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        hf::parse_export_name_reply(&reply, false)
            .frame()
            .unwrap()
            .0,
        8192
    );
    assert!(reply[10..].iter().all(|&b| b == 0));
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&0x80u32.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0);
}

#[test]
fn abort_is_acknowledged_and_the_server_closes() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let r = c.option(NBD_OPT_ABORT, &[]);
    assert_eq!(Client::last_type(&r), NBD_REP_ACK);
    assert!(c.closed());
}

#[test]
fn info_and_list_describe_the_exports() {
    let (exports, _, _) = volume_and_snapshot(8192, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let r = c.option(NBD_OPT_LIST, &[]);
    let names: Vec<String> = r[..r.len() - 1]
        .iter()
        .map(|r| hf::parse_server_entry(&r.data).unwrap().0)
        .collect();
    assert_eq!(names, vec!["vol", "vol@snap"]);
    let r = c.option(
        NBD_OPT_INFO,
        &hf::encode_info_request(&InfoRequest {
            name: "vol@snap".into(),
            requests: vec![NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE],
        }),
    );
    let infos: Vec<hf::Info> = r[..r.len() - 1]
        .iter()
        .map(|r| hf::Info::parse(&r.data).unwrap())
        .collect();
    assert!(infos.contains(&hf::Info::Name("vol@snap".into())));
    assert!(infos.contains(&hf::Info::Description("a snapshot".into())));
    assert!(infos.contains(&hf::Info::BlockSize {
        min: 1,
        preferred: 4096,
        max: 32 << 20
    }));
    // INFO does not end the handshake: GO still works.
    let (_, flags, _) = c.go("vol@snap", false, &[]);
    assert_ne!(flags & NBD_FLAG_READ_ONLY, 0);
}
