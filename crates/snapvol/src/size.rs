//! Human sizes: parsing `64K`, `10G`, `1TiB`, `512` and printing `4.0M`.
//!
//! Units are powers of 1024, case-insensitive, with an optional `B` or `iB` after the unit
//! letter. A plain number is bytes (an optional lone `B` is accepted too).

use std::fmt;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing was given.
    Empty,
    /// The text does not start with a decimal number.
    NoNumber(String),
    /// The unit after the number is not one of `K M G T P E` (with optional `B`/`iB`).
    BadUnit(String),
    /// The number has a fractional part (`1.5G`).
    Fraction(String),
    /// The size does not fit in 64 bits.
    Overflow(String),
    /// The size is zero.
    Zero,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Empty => f.write_str("a size is required, e.g. 64K, 10G or 4096"),
            SizeError::NoNumber(s) => write!(
                f,
                "'{s}' is not a size: expected a whole number with an optional unit K, M, G, T, P or E (e.g. 64K, 10G)"
            ),
            SizeError::BadUnit(u) => write!(
                f,
                "unknown unit '{u}': use K, M, G, T, P or E (powers of 1024), optionally followed by B or iB"
            ),
            SizeError::Fraction(s) => write!(
                f,
                "'{s}' is not a whole number: use a smaller unit instead (1536M rather than 1.5G)"
            ),
            SizeError::Overflow(s) => write!(f, "'{s}' is too large (at most 16E - 1 bytes)"),
            SizeError::Zero => f.write_str("the size must be greater than zero"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Parses a human size in bytes. Zero is refused.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits_end == 0 {
        return Err(SizeError::NoNumber(s.to_owned()));
    }
    let (number, unit) = s.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| SizeError::Overflow(s.to_owned()))?;
    if unit.starts_with(['.', ',']) {
        return Err(SizeError::Fraction(s.to_owned()));
    }
    let unit_trimmed = unit.trim_start();
    let shift =
        unit_shift(unit_trimmed).ok_or_else(|| SizeError::BadUnit(unit_trimmed.to_owned()))?;
    let value = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(s.to_owned()))?;
    if value == 0 {
        return Err(SizeError::Zero);
    }
    Ok(value)
}

/// The power of two a unit stands for, or `None` when it is not a unit.
fn unit_shift(unit: &str) -> Option<u32> {
    let lower = unit.to_ascii_lowercase();
    let (letter, rest) = match lower.chars().next() {
        None => return Some(0),
        Some(c) => (c, &lower[c.len_utf8()..]),
    };
    if letter == 'b' && rest.is_empty() {
        return Some(0);
    }
    let shift = match letter {
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        'p' => 50,
        'e' => 60,
        _ => return None,
    };
    matches!(rest, "" | "b" | "ib").then_some(shift)
}

/// Binary units, largest first, for formatting.
const UNITS: [(u32, &str); 6] = [
    (60, "E"),
    (50, "P"),
    (40, "T"),
    (30, "G"),
    (20, "M"),
    (10, "K"),
];

/// Formats a byte count for people: exact units when they fit (`64K`, `10G`), otherwise one
/// decimal (`1.5M`); below 1 KiB, plain bytes (`512`).
pub fn format_size(bytes: u64) -> String {
    for (shift, name) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit {
            if bytes % unit == 0 {
                return format!("{}{name}", bytes >> shift);
            }
            // Tenths, rounded to nearest; computed in u128 so nothing overflows.
            let tenths = (u128::from(bytes) * 10 + u128::from(unit) / 2) / u128::from(unit);
            return format!("{}.{}{name}", tenths / 10, tenths % 10);
        }
    }
    bytes.to_string()
}

/// Formats a byte count exactly, in the largest unit that divides it (`1088K`, `4097`), so
/// that it can be typed back as an argument.
pub fn format_exact(bytes: u64) -> String {
    for (shift, name) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{name}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size(" 7 "), Ok(7));
    }

    #[test]
    fn units_are_powers_of_1024_in_any_case_with_optional_suffix() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("3M"), Ok(3 << 20));
        assert_eq!(parse_size("2P"), Ok(2 << 50));
        assert_eq!(parse_size("15E"), Ok(15 << 60));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
    }

    #[test]
    fn junk_is_refused_with_a_reason() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert!(matches!(parse_size("G"), Err(SizeError::NoNumber(_))));
        assert!(matches!(parse_size("-1K"), Err(SizeError::NoNumber(_))));
        assert!(matches!(parse_size("1.5G"), Err(SizeError::Fraction(_))));
        assert!(matches!(parse_size("10X"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("10GG"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("10Gi"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("10iB"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("10 G B"), Err(SizeError::BadUnit(_))));
        assert!(matches!(parse_size("0x10"), Err(SizeError::BadUnit(_))));
        assert!(matches!(
            parse_size("10G\u{e9}"),
            Err(SizeError::BadUnit(_))
        ));
    }

    #[test]
    fn zero_is_refused() {
        assert_eq!(parse_size("0"), Err(SizeError::Zero));
        assert_eq!(parse_size("0G"), Err(SizeError::Zero));
    }

    #[test]
    fn overflow_is_refused() {
        assert!(matches!(parse_size("16E"), Err(SizeError::Overflow(_))));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert!(parse_size("10X").unwrap_err().to_string().contains("'X'"));
        assert!(parse_size("abc").unwrap_err().to_string().contains("'abc'"));
        assert!(parse_size("0").unwrap_err().to_string().contains("zero"));
        assert!(parse_size("16E")
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn formatting_is_exact_when_it_can_be() {
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(512), "512");
        assert_eq!(format_size(1023), "1023");
        assert_eq!(format_size(4096), "4K");
        assert_eq!(format_size(64 << 10), "64K");
        assert_eq!(format_size(10 << 30), "10G");
        assert_eq!(format_size(1 << 40), "1T");
        assert_eq!(format_size(1536 << 10), "1.5M");
        assert_eq!(format_size((1 << 30) + 1), "1.0G");
        assert_eq!(format_size(u64::MAX), "16.0E");
    }

    #[test]
    fn exact_formatting_never_rounds() {
        assert_eq!(format_exact(0), "0");
        assert_eq!(format_exact(1088 << 10), "1088K");
        assert_eq!(format_exact(1 << 20), "1M");
        assert_eq!(format_exact(4097), "4097");
        assert_eq!(parse_size(&format_exact(u64::MAX)), Ok(u64::MAX));
    }

    #[test]
    fn formatted_exact_sizes_parse_back() {
        for v in [
            1u64,
            512,
            4096,
            64 << 10,
            1 << 20,
            10 << 30,
            3 << 40,
            7 << 60,
        ] {
            assert_eq!(parse_size(&format_size(v)), Ok(v), "{v}");
        }
    }
}
