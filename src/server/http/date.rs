//! The `Date` header value (IMF-fixdate, RFC 9110 §5.6.7), written without allocating.

use std::time::{SystemTime, UNIX_EPOCH};

const DAY_NAMES: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTH_NAMES: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// `Sun, 06 Nov 1994 08:49:37 GMT` for `time` (clamped to the epoch if the clock is earlier).
pub(crate) fn http_date(time: SystemTime) -> [u8; 29] {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);

    let mut out = [0u8; 29];
    // 1970-01-01 was a Thursday, the first name in DAY_NAMES.
    out[0..3].copy_from_slice(DAY_NAMES[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    write_digits(&mut out[5..7], day);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTH_NAMES[(month - 1) as usize]);
    out[11] = b' ';
    write_digits(&mut out[12..16], year);
    out[16] = b' ';
    write_digits(&mut out[17..19], second_of_day / 3600);
    out[19] = b':';
    write_digits(&mut out[20..22], second_of_day / 60 % 60);
    out[22] = b':';
    write_digits(&mut out[23..25], second_of_day % 60);
    out[25..29].copy_from_slice(b" GMT");
    out
}

/// Zero-padded decimal filling all of `into`.
fn write_digits(into: &mut [u8], mut value: u64) {
    for slot in into.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31); Howard Hinnant's algorithm, which
/// counts in 400-year eras starting on March 1st so that the leap day ends each year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> String {
        String::from_utf8(http_date(UNIX_EPOCH + Duration::from_secs(secs)).to_vec()).unwrap()
    }

    #[test]
    fn known_dates() {
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(at(4_133_980_799), "Fri, 31 Dec 2100 23:59:59 GMT");
    }
}
