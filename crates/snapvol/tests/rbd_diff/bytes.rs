//! The stream is exactly the bytes the format says.

use std::fs;

use crate::serving::*;
use crate::{create, edit, export_diff, parse_stream, Rec};

const SIZE: u64 = MIB;

#[test]
fn a_small_diff_is_header_metadata_then_records_in_offset_order_then_the_end() {
    let env = Env::new();
    create(&env, "v", "1M", "4K");
    let tail = pattern(8192, 7);
    edit(&env, "v", |v| {
        v.write(0, &vec![0x11; SIZE as usize]).expect("write");
        v.snapshot_create("s1").expect("s1");
        v.write(8192, &[0xab; 4096]).expect("write");
        v.write_zeroes(65536, 4096).expect("zero");
        v.write(SIZE - 8192, &tail).expect("write");
        v.snapshot_create("s2").expect("s2");
    });

    let path = export_diff(&env, "v@s2", "v@s1", "d");
    let bytes = fs::read(&path).expect("read the stream");
    let records = vec![
        Rec::Write(8192, vec![0xab; 4096]),
        Rec::Zero(65536, 4096),
        Rec::Write(SIZE - 8192, tail.clone()),
        Rec::End,
    ];
    let mut want = vec![
        Rec::From("s1".into()),
        Rec::To("s2".into()),
        Rec::Size(SIZE),
    ];
    want.extend(records.iter().cloned());
    assert_eq!(parse_stream(&bytes), want);
    // 12 header + (1+4+2)*2 names + 9 size + (17+4096) + 17 + (17+8192) + 1 end.
    assert_eq!(bytes.len(), 12 + 14 + 9 + 4113 + 17 + 8209 + 1);

    // To the live volume: no 't' record; the records are the same (nothing changed since s2).
    let path = export_diff(&env, "v", "v@s1", "live");
    let mut want = vec![Rec::From("s1".into()), Rec::Size(SIZE)];
    want.extend(records);
    assert_eq!(parse_stream(&fs::read(&path).expect("read")), want);
}
