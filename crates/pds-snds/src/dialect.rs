//! The CNAM extraction dialect: how values are written in delivery files.
//!
//! * DCIR and beneficiary dates: `dd/MM/yyyy`; a missing date is the sentinel
//!   `01/01/1600` (never an empty field).
//! * PMSI datetimes: SAS `DATETIME20.` text, `01JAN2016:00:00:00`.
//! * PMSI `ENT_DAT`/`SOR_DAT`: `ddmmyyyy`.
//! * Unknown birth year: `1600`.
//!
//! Writers append to a byte buffer (the generator formats millions of rows and
//! must not allocate per value); readers return `None` for sentinels.

use chrono::{Datelike, NaiveDate, NaiveDateTime};

/// The date CNAM writes when a date is missing.
pub const SENTINEL_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1600, 1, 1) {
    Some(d) => d,
    None => panic!("1600-01-01 is a valid date"),
};

/// Sentinel year for an unknown birth year.
pub const SENTINEL_YEAR: i32 = 1600;

const MONTHS: [&[u8; 3]; 12] = [
    b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC",
];

fn push2(buf: &mut Vec<u8>, v: u32) {
    buf.push(b'0' + (v / 10 % 10) as u8);
    buf.push(b'0' + (v % 10) as u8);
}

fn push4(buf: &mut Vec<u8>, v: i32) {
    let v = v.clamp(0, 9999) as u32;
    push2(buf, v / 100);
    push2(buf, v % 100);
}

/// Appends `dd/MM/yyyy`.
pub fn push_date(buf: &mut Vec<u8>, d: NaiveDate) {
    push2(buf, d.day());
    buf.push(b'/');
    push2(buf, d.month());
    buf.push(b'/');
    push4(buf, d.year());
}

/// Appends `dd/MM/yyyy`, or the `01/01/1600` sentinel for `None`.
pub fn push_date_or_sentinel(buf: &mut Vec<u8>, d: Option<NaiveDate>) {
    push_date(buf, d.unwrap_or(SENTINEL_DATE));
}

/// Appends a SAS datetime at midnight, `ddMMMyyyy:00:00:00`.
pub fn push_sas_datetime(buf: &mut Vec<u8>, d: NaiveDate) {
    push2(buf, d.day());
    buf.extend_from_slice(MONTHS[d.month0() as usize]);
    push4(buf, d.year());
    buf.extend_from_slice(b":00:00:00");
}

/// Appends `ddmmyyyy`.
pub fn push_compact_date(buf: &mut Vec<u8>, d: NaiveDate) {
    push2(buf, d.day());
    push2(buf, d.month());
    push4(buf, d.year());
}

/// Appends `yyyyMM`.
pub fn push_year_month(buf: &mut Vec<u8>, d: NaiveDate) {
    push4(buf, d.year());
    push2(buf, d.month());
}

/// Parses `dd/MM/yyyy`; the sentinel gives `Ok(None)`.
pub fn parse_date(s: &str) -> Option<Option<NaiveDate>> {
    // Hand-written: the loader parses tens of millions of dates, and a
    // format-string parser costs several times more. Strict: two-digit day
    // and month, four-digit year, as CNAM writes them.
    let b = s.as_bytes();
    if b.len() != 10 || b[2] != b'/' || b[5] != b'/' {
        return None;
    }
    let d = NaiveDate::from_ymd_opt(
        digits(&b[6..10])? as i32,
        digits(&b[3..5])?,
        digits(&b[0..2])?,
    )?;
    Some((d != SENTINEL_DATE).then_some(d))
}

/// The value of a run of ASCII digits (`None` if any byte is not one).
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Parses a SAS datetime (`01JAN2016:00:00:00`); a 1600 date gives `Ok(None)`.
pub fn parse_sas_datetime(s: &str) -> Option<Option<NaiveDateTime>> {
    if s.len() < 9 {
        return None;
    }
    let day: u32 = s.get(0..2)?.parse().ok()?;
    let mon = s.get(2..5)?.to_ascii_uppercase();
    let month = MONTHS.iter().position(|m| m[..] == *mon.as_bytes())? as u32 + 1;
    let year: i32 = s.get(5..9)?.parse().ok()?;
    let (mut h, mut mi, mut se) = (0, 0, 0);
    if s.len() > 9 {
        let rest = s.get(9..)?;
        let mut it = rest.trim_start_matches(':').split(':');
        h = it.next()?.parse().ok()?;
        mi = it.next()?.parse().ok()?;
        se = it.next()?.parse().ok()?;
    }
    let dt = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, mi, se)?;
    Some((year != SENTINEL_YEAR).then_some(dt))
}

/// Parses `ddmmyyyy`.
pub fn parse_compact_date(s: &str) -> Option<Option<NaiveDate>> {
    let b = s.as_bytes();
    if b.len() != 8 {
        return None;
    }
    let d = NaiveDate::from_ymd_opt(
        digits(&b[4..8])? as i32,
        digits(&b[2..4])?,
        digits(&b[0..2])?,
    )?;
    Some((d != SENTINEL_DATE).then_some(d))
}

/// Formats a date as `dd/MM/yyyy` into a new string.
pub fn date_string(d: NaiveDate) -> String {
    let mut b = Vec::with_capacity(10);
    push_date(&mut b, d);
    String::from_utf8_lossy(&b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_in_every_dialect() {
        let d = NaiveDate::from_ymd_opt(2016, 1, 7).unwrap();
        let mut b = Vec::new();
        push_date(&mut b, d);
        assert_eq!(b, b"07/01/2016");
        assert_eq!(parse_date("07/01/2016"), Some(Some(d)));
        b.clear();
        push_sas_datetime(&mut b, d);
        assert_eq!(b, b"07JAN2016:00:00:00");
        assert_eq!(
            parse_sas_datetime("07JAN2016:00:00:00")
                .unwrap()
                .unwrap()
                .date(),
            d
        );
        b.clear();
        push_compact_date(&mut b, d);
        assert_eq!(b, b"07012016");
        assert_eq!(parse_compact_date("07012016"), Some(Some(d)));
    }

    #[test]
    fn sentinels_read_as_missing_and_garbage_is_refused() {
        assert_eq!(parse_date("01/01/1600"), Some(None));
        assert_eq!(parse_date("2016-01-07"), None);
        assert_eq!(parse_date("32/01/2016"), None);
        assert_eq!(parse_sas_datetime("01JAN1600:00:00:00"), Some(None));
        assert_eq!(parse_sas_datetime("01XYZ2016:00:00:00"), None);
        // Strict widths, real calendar dates only.
        for bad in [
            "7/01/2016",
            "07/1/2016",
            "07/01/16",
            "07-01-2016",
            "29/02/2021",
            "0a/01/2016",
            " 7/01/2016",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(
            parse_date("29/02/2020"),
            Some(NaiveDate::from_ymd_opt(2020, 2, 29))
        );
        assert_eq!(parse_compact_date("01011600"), Some(None));
        for bad in ["1012016", "31022016", "0101201a", "010120166"] {
            assert_eq!(parse_compact_date(bad), None, "{bad}");
        }
    }
}
