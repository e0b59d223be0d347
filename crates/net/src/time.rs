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

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::utc_civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(super::utc_civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(super::utc_civil(1_798_761_599), (2026, 12, 31, 23, 59, 59));
    }
}
