//! Calendar time without a time-zone database: backups name files by UTC time and etcdctl's
//! JSON prints times in UTC.

/// The UTC calendar date and time of a Unix time: (year, month, day, hour, minute, second),
/// by Howard Hinnant's civil-from-days algorithm.
pub fn utc_civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The Unix time of a UTC calendar date and time (the inverse of `utc_civil`, by Howard
/// Hinnant's days-from-civil algorithm); the caller checks the fields' ranges.
pub fn unix_of_civil(year: i64, month: i64, day: i64, h: i64, m: i64, s: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + m * 60 + s
}

/// Decimal digits and nothing else (no sign, no space), as a number: a field of a time read
/// from text.
pub fn digits(t: &str) -> Option<i64> {
    (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit())).then(|| t.parse().ok())?
}

/// [`unix_of_civil`] for fields read from text: `None` unless they name a real moment at or
/// after 1970 (no 31 February, no hour 24).
pub fn checked_unix_of_civil(
    year: i64,
    month: i64,
    day: i64,
    h: i64,
    m: i64,
    s: i64,
) -> Option<u64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 59 {
        return None;
    }
    let unix = u64::try_from(unix_of_civil(year, month, day, h, m, s)).ok()?;
    // A day past the month's end comes back as another date.
    let (y2, mo2, d2, ..) = utc_civil(unix);
    ((y2, mo2, d2) == (year, month, day)).then_some(unix)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::utc_civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(super::utc_civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(super::utc_civil(1_798_761_599), (2026, 12, 31, 23, 59, 59));
    }

    #[test]
    fn civil_round_trips() {
        for t in [0u64, 951_782_400, 1_798_761_599, 4_102_444_800] {
            let (y, mo, d, h, mi, s) = super::utc_civil(t);
            let back = super::unix_of_civil(y, mo, d, h as i64, mi as i64, s as i64);
            assert_eq!(back, t as i64);
        }
        assert_eq!(super::unix_of_civil(1950, 1, 1, 0, 0, 0), -631_152_000);
    }

    #[test]
    fn checked_fields_name_real_moments() {
        assert_eq!(
            super::checked_unix_of_civil(2000, 2, 29, 0, 0, 0),
            Some(951_782_400)
        );
        for bad in [
            (2001, 2, 29, 0, 0, 0),
            (2026, 4, 31, 0, 0, 0),
            (2026, 13, 1, 0, 0, 0),
            (2026, 1, 1, 24, 0, 0),
            (1969, 12, 31, 23, 59, 59),
        ] {
            let (y, mo, d, h, mi, s) = bad;
            assert_eq!(
                super::checked_unix_of_civil(y, mo, d, h, mi, s),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(super::digits("0042"), Some(42));
        for bad in ["", "+1", " 1", "1a"] {
            assert_eq!(super::digits(bad), None, "{bad:?}");
        }
    }
}
