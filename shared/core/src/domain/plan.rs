//! The send-rate plan: how fast the configured providers let the hub send,
//! and whether the cohort can be reached within the target time.

use super::pacing::RateUnit;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The 3-hour promise of the hub.
pub const TARGET: Duration = Duration::from_secs(3 * 60 * 60);

/// One provider (or one Notify service / API key) as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRate {
    pub name: String,
    /// Requests or message parts per second, as `unit` says.
    pub per_second: f64,
    #[serde(default)]
    pub unit: RateUnit,
    /// Texts a day the account may send, if limited.
    #[serde(default)]
    pub daily_limit: Option<u64>,
}

impl ProviderRate {
    /// Messages per second for messages of `fragments` parts.
    pub fn messages_per_second(&self, fragments: u32) -> f64 {
        let rate = self.per_second.max(0.0);
        match self.unit {
            RateUnit::Requests => rate,
            RateUnit::Parts => rate / f64::from(fragments.max(1)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendPlan {
    pub cohort: u64,
    pub fragments_per_message: u32,
    pub messages_per_second: f64,
    /// Texts an hour at that rate.
    pub texts_per_hour: u64,
    /// Messages the providers' daily limits allow today, if all are limited.
    pub daily_capacity: Option<u64>,
    /// Provider days the cohort takes under the daily limits (1 if unlimited).
    pub days_needed: u64,
    /// Keys like the configured ones (on average) that reach the cohort
    /// within the target, counting their rates and daily limits.
    pub keys_for_target: Option<u64>,
    /// Time to reach the cohort, waiting for the next day when the daily
    /// limits are reached (days counted from the start of a day).
    pub eta: Duration,
    pub target: Duration,
    pub meets_target: bool,
    pub warnings: Vec<String>,
}

/// Plans a send of `cohort` messages of `fragments_per_message` fragments.
/// `cap` limits the hub's total rate (fragments per second) when set.
pub fn plan(
    cohort: u64,
    fragments_per_message: u32,
    providers: &[ProviderRate],
    cap: Option<f64>,
    target: Duration,
) -> SendPlan {
    let fragments = fragments_per_message.max(1);
    let mut messages_per_second: f64 = providers
        .iter()
        .map(|p| p.messages_per_second(fragments))
        .sum();
    if let Some(cap) = cap {
        messages_per_second = messages_per_second.min(cap.max(0.0) / f64::from(fragments));
    }
    let daily_capacity =
        if providers.is_empty() || providers.iter().any(|p| p.daily_limit.is_none()) {
            None
        } else {
            Some(providers.iter().filter_map(|p| p.daily_limit).sum())
        };
    let days_needed = match daily_capacity {
        Some(0) => u64::MAX,
        Some(capacity) => cohort.div_ceil(capacity).max(1),
        None => 1,
    };
    let mut warnings = Vec::new();
    let eta = if messages_per_second <= 0.0 || days_needed == u64::MAX {
        warnings.push("no SMS provider capacity is configured".to_string());
        Duration::MAX
    } else {
        let full_days = days_needed - 1;
        let last_day = cohort - full_days * daily_capacity.unwrap_or(0);
        let last = Duration::from_secs_f64(last_day as f64 / messages_per_second);
        // A day's texts take at most a day: otherwise the rate, not the cap, rules.
        let first = if full_days > 0 {
            Duration::from_secs(full_days * 24 * 60 * 60)
        } else {
            Duration::ZERO
        };
        first + last
    };
    let keys_for_target = keys_for_target(cohort, fragments, providers, target);
    let meets_target = eta <= target;
    if !meets_target && messages_per_second > 0.0 {
        let needed = cohort as f64 * f64::from(fragments) / target.as_secs_f64();
        warnings.push(format!(
            "at {messages_per_second:.0} messages/s the cohort of {cohort} takes {}; \
             reaching it within {} needs {needed:.0} fragments/s across providers",
            human_duration(eta),
            human_duration(target),
        ));
    }
    if let Some(capacity) = daily_capacity {
        if capacity < cohort {
            warnings.push(format!(
                "the providers' daily limits allow {capacity} messages; the cohort of {cohort} \
                 needs {days_needed} days"
            ));
        }
    }
    if let Some(keys) = keys_for_target.filter(|keys| *keys > providers.len() as u64) {
        warnings.push(format!(
            "reaching the cohort within {} needs {keys} provider keys like these \
             (configured: {}) or {days_needed} days",
            human_duration(target),
            providers.len()
        ));
    }
    SendPlan {
        cohort,
        fragments_per_message: fragments,
        messages_per_second,
        texts_per_hour: (messages_per_second * 3600.0).round() as u64,
        daily_capacity,
        days_needed,
        keys_for_target,
        eta,
        target,
        meets_target,
        warnings,
    }
}

/// Keys like the configured ones, on average, that send `cohort` within
/// `target`: enough rate, and enough daily limit for one day.
fn keys_for_target(
    cohort: u64,
    fragments: u32,
    providers: &[ProviderRate],
    target: Duration,
) -> Option<u64> {
    if providers.is_empty() || target.is_zero() {
        return None;
    }
    let count = providers.len() as f64;
    let per_key_rate = providers
        .iter()
        .map(|p| p.messages_per_second(fragments))
        .sum::<f64>()
        / count;
    if per_key_rate <= 0.0 {
        return None;
    }
    let for_rate = (cohort as f64 / (per_key_rate * target.as_secs_f64())).ceil() as u64;
    let limits: Vec<u64> = providers.iter().filter_map(|p| p.daily_limit).collect();
    let for_day = if limits.len() == providers.len() {
        let per_key_day = limits.iter().sum::<u64>() as f64 / count;
        if per_key_day <= 0.0 {
            return None;
        }
        (cohort as f64 / per_key_day).ceil() as u64
    } else {
        0
    };
    Some(for_rate.max(for_day).max(1))
}

pub fn human_duration(duration: Duration) -> String {
    if duration == Duration::MAX {
        return "forever".into();
    }
    let secs = duration.as_secs();
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(name: &str) -> ProviderRate {
        ProviderRate {
            name: name.into(),
            per_second: 50.0,
            unit: RateUnit::Requests,
            daily_limit: Some(250_000),
        }
    }

    #[test]
    fn one_default_notify_key_needs_eight_keys_or_eight_days_for_two_million() {
        let p = plan(2_000_000, 3, &[notify("a")], None, TARGET);
        assert!(!p.meets_target);
        // Notify counts requests: a three-part text is one request.
        assert_eq!(p.messages_per_second, 50.0);
        assert_eq!(p.texts_per_hour, 180_000);
        assert_eq!(p.days_needed, 8);
        assert_eq!(p.keys_for_target, Some(8));
        // Seven full days, then 250,000 texts at 50/s.
        assert_eq!(p.eta, Duration::from_secs(7 * 86_400 + 5_000));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("needs 8 provider keys") && w.contains("or 8 days")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn eight_notify_keys_meet_the_target() {
        let providers: Vec<_> = (0..8).map(|i| notify(&format!("notify-{i}"))).collect();
        let p = plan(2_000_000, 1, &providers, None, TARGET);
        assert_eq!(p.messages_per_second, 400.0);
        assert_eq!(p.daily_capacity, Some(2_000_000));
        assert_eq!(p.days_needed, 1);
        assert_eq!(p.keys_for_target, Some(8));
        assert!(p.meets_target, "{:?}", p.warnings);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn parts_divide_the_rate_and_the_cap_applies() {
        let providers = vec![ProviderRate {
            name: "eum".into(),
            per_second: 300.0,
            unit: RateUnit::Parts,
            daily_limit: None,
        }];
        let p = plan(1000, 2, &providers, Some(100.0), TARGET);
        assert_eq!(p.messages_per_second, 50.0);
        assert_eq!(p.eta, Duration::from_secs(20));
        assert_eq!(p.daily_capacity, None);
        assert_eq!(p.days_needed, 1);
    }

    #[test]
    fn no_providers_means_no_eta() {
        let p = plan(10, 1, &[], None, TARGET);
        assert!(!p.meets_target);
        assert_eq!(p.eta, Duration::MAX);
        assert_eq!(p.keys_for_target, None);
        assert_eq!(human_duration(p.eta), "forever");
    }
}
