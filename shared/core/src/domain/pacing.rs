//! Send pacing shared by every send worker: one bucket per provider key,
//! kept as the time it is next full ("theoretical arrival time", GCRA) and
//! the texts sent on the provider's day. A caller *reserves* a send time
//! and then sends at that time, so tokens are never taken for a message
//! that is not sent, and a refused reservation writes nothing.
//!
//! Pure: the store adapters read a [`PaceBucket`], apply an [`PaceOp`] and
//! write the result back with a compare-and-set on `version`.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// What a provider key's rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    /// API requests, one per text whatever its length (GOV.UK Notify).
    Requests,
    /// Message parts (fragments) (AWS End User Messaging).
    #[default]
    Parts,
}

/// One provider key's limits as the hub paces them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendLimit {
    /// Units (requests or parts) per second.
    pub per_second: f64,
    /// Units that may go at once after a quiet spell.
    pub burst: f64,
    /// Texts per provider day (UTC), if limited.
    pub daily_cap: Option<u64>,
}

/// The stored state of one key's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaceBucket {
    /// When the bucket is full again, µs since the Unix epoch.
    pub full_at_us: i64,
    /// The provider day `sent_today` counts.
    pub day: Option<NaiveDate>,
    pub sent_today: u64,
    /// Set when the provider said its day is full before our count did.
    pub day_full: bool,
    /// Compare-and-set version (0: never written).
    pub version: u64,
}

/// What a caller asks of a key's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PaceOp {
    /// One text costing `cost` units, to be sent no later than `latest`.
    Reserve { cost: f64, latest: DateTime<Utc> },
    /// The provider answered 429 (rate) to a reserved text: send nothing
    /// before `until`, and that text does not count towards the day.
    Hold { until: DateTime<Utc> },
    /// The provider answered 429 (daily limit): nothing more today.
    DayFull,
}

/// The answer to a [`PaceOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceGrant {
    /// Reserved: send at this time.
    SendAt(DateTime<Utc>),
    /// Not reserved: the earliest time would be later than `latest`.
    NotBefore(DateTime<Utc>),
    /// Not reserved: the key's daily cap is reached until this time.
    DayFull { until: DateTime<Utc> },
    /// A hold or day-full mark was recorded.
    Recorded,
}

/// The start of the next provider day (midnight UTC).
pub fn next_day(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive() + TimeDelta::days(1);
    tomorrow.and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc())
}

fn micros(seconds: f64) -> i64 {
    (seconds * 1e6).round() as i64
}

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Applies `op` to `bucket` at `now`. Returns the answer and, if the bucket
/// changed, its new state (with `version + 1`) to write back.
pub fn apply(
    bucket: &PaceBucket,
    limit: &SendLimit,
    op: PaceOp,
    now: DateTime<Utc>,
) -> (PaceGrant, Option<PaceBucket>) {
    let rate = if limit.per_second.is_finite() && limit.per_second > 0.0 {
        limit.per_second
    } else {
        f64::MAX
    };
    let burst_us = micros(limit.burst.max(0.0) / rate);
    let now_us = now.timestamp_micros();
    let today = now.date_naive();
    let mut next = *bucket;
    next.version = bucket.version + 1;
    if bucket.day != Some(today) {
        next.day = Some(today);
        next.sent_today = 0;
        next.day_full = false;
    }
    match op {
        PaceOp::Reserve { cost, latest } => {
            let capped = limit.daily_cap.is_some_and(|cap| next.sent_today >= cap);
            if next.day_full || capped {
                return (
                    PaceGrant::DayFull {
                        until: next_day(now),
                    },
                    None,
                );
            }
            let base = bucket.full_at_us.max(now_us);
            let full_at = base.saturating_add(micros(cost.max(0.0) / rate));
            let send_at = full_at.saturating_sub(burst_us).max(now_us);
            if send_at > latest.timestamp_micros() {
                return (PaceGrant::NotBefore(at(send_at)), None);
            }
            next.full_at_us = full_at;
            next.sent_today += 1;
            (PaceGrant::SendAt(at(send_at)), Some(next))
        }
        PaceOp::Hold { until } => {
            // Empty at `until`: the key restarts at its steady rate then.
            next.full_at_us = bucket
                .full_at_us
                .max(until.timestamp_micros().saturating_add(burst_us));
            next.sent_today = next.sent_today.saturating_sub(1);
            (PaceGrant::Recorded, Some(next))
        }
        PaceOp::DayFull => {
            next.day_full = true;
            (PaceGrant::Recorded, Some(next))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: f64) -> DateTime<Utc> {
        at(1_800_000_000_000_000 + micros(seconds))
    }

    const LIMIT: SendLimit = SendLimit {
        per_second: 10.0,
        burst: 5.0,
        daily_cap: Some(100),
    };

    fn reserve(bucket: &mut PaceBucket, cost: f64, now: f64, latest: f64) -> PaceGrant {
        let (grant, next) = apply(
            bucket,
            &LIMIT,
            PaceOp::Reserve {
                cost,
                latest: t(latest),
            },
            t(now),
        );
        if let Some(next) = next {
            *bucket = next;
        }
        grant
    }

    #[test]
    fn a_full_bucket_lets_the_burst_go_at_once_then_paces_at_the_rate() {
        let mut bucket = PaceBucket::default();
        for _ in 0..5 {
            assert_eq!(
                reserve(&mut bucket, 1.0, 0.0, 60.0),
                PaceGrant::SendAt(t(0.0))
            );
        }
        assert_eq!(
            reserve(&mut bucket, 1.0, 0.0, 60.0),
            PaceGrant::SendAt(t(0.1))
        );
        assert_eq!(
            reserve(&mut bucket, 1.0, 0.0, 60.0),
            PaceGrant::SendAt(t(0.2))
        );
        assert_eq!(bucket.sent_today, 7);
    }

    #[test]
    fn a_refused_reservation_takes_nothing() {
        let mut bucket = PaceBucket::default();
        for _ in 0..25 {
            reserve(&mut bucket, 1.0, 0.0, 60.0);
        }
        let before = bucket;
        assert_eq!(
            reserve(&mut bucket, 1.0, 0.0, 1.0),
            PaceGrant::NotBefore(t(2.1))
        );
        assert_eq!(bucket, before, "a refused reservation wrote nothing");
    }

    #[test]
    fn a_hold_stops_the_key_then_it_restarts_at_its_rate() {
        let mut bucket = PaceBucket::default();
        let (grant, next) = apply(&bucket, &LIMIT, PaceOp::Hold { until: t(1.0) }, t(0.0));
        assert_eq!(grant, PaceGrant::Recorded);
        bucket = next.unwrap();
        assert_eq!(bucket.sent_today, 0, "the refused text is not counted");
        assert_eq!(
            reserve(&mut bucket, 1.0, 0.0, 60.0),
            PaceGrant::SendAt(t(1.1))
        );
        // Holding again for an earlier time changes nothing.
        let (_, next) = apply(&bucket, &LIMIT, PaceOp::Hold { until: t(0.5) }, t(0.0));
        assert_eq!(next.unwrap().full_at_us, bucket.full_at_us);
    }

    #[test]
    fn the_daily_cap_stops_the_key_until_the_next_day() {
        let mut bucket = PaceBucket::default();
        for _ in 0..100 {
            assert!(matches!(
                reserve(&mut bucket, 1.0, 0.0, 1e6),
                PaceGrant::SendAt(_)
            ));
        }
        let full = reserve(&mut bucket, 1.0, 0.0, 1e6);
        assert_eq!(
            full,
            PaceGrant::DayFull {
                until: next_day(t(0.0))
            }
        );
        let tomorrow = (next_day(t(0.0)) - t(0.0)).num_seconds() as f64 + 1.0;
        assert!(matches!(
            reserve(&mut bucket, 1.0, tomorrow, tomorrow + 1.0),
            PaceGrant::SendAt(_)
        ));
        assert_eq!(bucket.sent_today, 1);
    }

    #[test]
    fn the_providers_day_full_answer_stops_the_key_for_the_day() {
        let (_, next) = apply(&PaceBucket::default(), &LIMIT, PaceOp::DayFull, t(0.0));
        let mut bucket = next.unwrap();
        assert!(matches!(
            reserve(&mut bucket, 1.0, 0.0, 60.0),
            PaceGrant::DayFull { .. }
        ));
    }

    #[test]
    fn a_message_larger_than_the_burst_waits_for_a_full_bucket() {
        let mut bucket = PaceBucket::default();
        assert_eq!(
            reserve(&mut bucket, 8.0, 0.0, 60.0),
            PaceGrant::SendAt(t(0.3))
        );
    }
}
