//! `snapvol check`.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{bail, Result};
use snapvol_engine::check::{CheckOptions, CheckReport};
use snapvol_engine::{Error, Store};

use super::{is_served, open_error, parse_volume, remote, unless_served};
use crate::cli::CheckArgs;
use crate::output::print_json;
use crate::serve::control::Request;

pub fn run(store: &Store, args: CheckArgs) -> Result<()> {
    let name = parse_volume(&args.volume)?;
    let opts = CheckOptions {
        repair: args.repair,
        data: args.data,
        journal_in_use: false,
    };
    let report = match unless_served(store, name, || store.check_with(name, opts)) {
        Ok(report) => report,
        // A served volume is checked by the server, as it is durably, while it stays served.
        Err(Error::Locked { .. }) if is_served(store, name) && !args.repair => remote(
            store,
            Request::Check {
                volume: name.to_owned(),
                data: args.data,
            },
        )?,
        Err(Error::Locked { .. }) if is_served(store, name) => bail!(
            "volume '{name}' is being served by snapvol serve; --repair needs it to itself: stop \
             the server first (a check without --repair works while it serves)"
        ),
        Err(e) => return Err(open_error(store, e)),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &report)?;
    } else {
        write!(out, "{}", render(name, &report, args.repair))?;
    }
    out.flush()?;
    if !report.is_clean() {
        let n = report.problems.len();
        bail!(
            "volume '{name}' has {n} problem{}{}",
            if n == 1 { "" } else { "s" },
            if args.repair {
                " that repair could not fix"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Human report: one `location: detail` line per problem, what a repair did and could not do,
/// then a summary line.
pub fn render(name: &str, report: &CheckReport, repair: bool) -> String {
    let mut text = String::new();
    for p in &report.problems {
        let _ = write!(text, "{}: {}", p.location, p.detail);
        if p.repairable && !repair {
            text.push_str(" (--repair can fix this)");
        }
        text.push('\n');
    }
    for w in &report.warnings {
        let _ = writeln!(text, "warning: {}: {}", w.location, w.detail);
    }
    for r in &report.repaired {
        let _ = writeln!(text, "repaired: {r}");
    }
    if repair {
        for n in &report.not_repaired {
            let _ = writeln!(text, "not repaired: {n}");
        }
        if report.repaired.is_empty() && report.not_repaired.is_empty() {
            text.push_str("nothing to repair\n");
        }
    }
    let s = &report.summary;
    let state = if report.is_clean() {
        "is clean".to_owned()
    } else {
        let n = report.problems.len();
        format!("has {n} problem{}", if n == 1 { "" } else { "s" })
    };
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let superblock = match s.current_superblock {
        Some(off) => format!(
            "superblock generation {} (copy at {off:#x})",
            s.superblock_generation
        ),
        None => "no valid superblock".to_owned(),
    };
    let _ = writeln!(
        text,
        "volume '{name}' {state}: {superblock}, {} ({}), {}, {}, {}, {} free below the high-water mark of {}",
        plural(s.metadata_blocks, "metadata block", "metadata blocks"),
        plural(s.metadata_records, "record", "records"),
        plural(s.snapshots as u64, "snapshot", "snapshots"),
        plural(s.preserved_chunks, "preserved chunk", "preserved chunks"),
        plural(s.journal_records, "journal record", "journal records"),
        plural(s.free_slots_below_high_water, "slot", "slots"),
        s.high_water_slots,
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapvol_engine::check::{CheckSummary, Problem};

    #[test]
    fn each_problem_is_one_location_detail_line_and_the_summary_says_the_state() {
        let report = CheckReport {
            problems: vec![Problem {
                location: "superblock copy at 0x1000".into(),
                detail: "checksum mismatch".into(),
                repairable: true,
            }],
            summary: CheckSummary {
                snapshots: 2,
                metadata_blocks: 1,
                current_superblock: Some(0),
                superblock_generation: 8,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = render("v", &report, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "superblock copy at 0x1000: checksum mismatch (--repair can fix this)"
        );
        assert!(
            lines[1].starts_with(
                "volume 'v' has 1 problem: superblock generation 8 (copy at 0x0), 1 metadata block"
            ),
            "{text}"
        );
        assert!(lines[1].contains("2 snapshots"), "{text}");

        let clean = render("v", &CheckReport::default(), true);
        assert!(clean.contains("nothing to repair"), "{clean}");
        assert!(
            clean.contains("volume 'v' is clean: no valid superblock"),
            "{clean}"
        );
    }
}
