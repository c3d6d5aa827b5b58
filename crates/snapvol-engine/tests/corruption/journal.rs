//! The journal: records counted, a torn tail, a record outside the volume, another volume's
//! journal.

use snapvol_engine::check::check;
use snapvol_engine::journal::{RING_OFFSET, SECTOR};
use snapvol_engine::vlun::Vlun;
use snapvol_engine::Error;

use crate::on_disk::{layout_of, zero_record};
use crate::overlay::Overlay;
use crate::volume::{build, describe, open};
use crate::{CHUNK, SIZE};

#[test]
fn journal_records_are_counted_a_torn_tail_is_normal_and_a_record_outside_the_volume_is_not() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    let head = RING_OFFSET + sb.journal_head;
    let seq = sb.journal_head_seq;

    // Two good records, then a torn one: two records, no problem.
    let (s, t, j) = img.overlays();
    j.write_at(&zero_record(seq, 0, CHUNK, &sb.volume_id), head)
        .expect("write");
    j.write_at(
        &zero_record(seq + 1, CHUNK, CHUNK, &sb.volume_id),
        head + SECTOR,
    )
    .expect("write");
    let mut torn = zero_record(seq + 2, 0, CHUNK, &sb.volume_id);
    torn[30] ^= 1;
    j.write_at(&torn, head + 2 * SECTOR).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.summary.journal_records, 2);

    // A record that writes past the end of the volume.
    let (s, t, j) = img.overlays();
    j.write_at(&zero_record(seq, SIZE - 512, 4096, &sb.volume_id), head)
        .expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("journal record at {head:#x}")
                && p.detail.contains("beyond the end of the volume")),
        "{}",
        describe(&r)
    );
    // Open refuses it too.
    match open(s, t, j) {
        Err(Error::Corrupt { .. }) => {}
        Err(e) => panic!("open failed otherwise: {e}"),
        Ok(v) => {
            v.kill();
            panic!("open accepted a journal record outside the volume");
        }
    }
}

#[test]
fn a_journal_of_another_volume_is_reported() {
    let a = build();
    let b = build();
    let s = Overlay::new(&a.source);
    let t = Overlay::new(&a.target);
    let j = Overlay::new(&b.journal);
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == "journal header at 0x0" && p.detail.contains("another volume")),
        "{}",
        describe(&r)
    );
}
