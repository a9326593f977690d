//! How one value reads: counts with thousands separators, durations, money,
//! times, plurals and clipped names. The staff commands, `watch` and `demo`
//! all format through here.

use chrono::{DateTime, Utc};

/// `1234567` reads as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Pounds (or any currency) to the penny, with thousands separators.
pub fn money(amount: f64) -> String {
    let pence = (amount * 100.0).round().max(0.0) as u64;
    format!("{}.{:02}", thousands(pence / 100), pence % 100)
}

/// `45s`, `1m 15s`, `3h 05m`: the hub's own wording of a duration.
pub fn duration(secs: u64) -> String {
    hub_core::domain::plan::human_duration(std::time::Duration::from_secs(secs))
}

/// A moment in UTC to the minute.
pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `in 2h 00m` or `5m 00s ago`.
pub fn relative(at: DateTime<Utc>) -> String {
    let seconds = (at - Utc::now()).num_seconds();
    if seconds >= 0 {
        format!("in {}", duration(seconds as u64))
    } else {
        format!("{} ago", duration(seconds.unsigned_abs()))
    }
}

/// The `s` of `3 practices`.
pub fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// At most `width` characters, the last an ellipsis when cut.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// `arn:aws:iam::123:user/alice` reads as `user/alice`.
pub fn short_identity(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(money(27_000.456), "27,000.46");
        assert_eq!(duration(3 * 3600 + 5 * 60), "3h 05m");
        assert_eq!(duration(75), "1m 15s");
    }
}
