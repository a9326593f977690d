//! The send-rate plan: how fast the configured providers let the hub send,
//! and whether the cohort can be reached within the target time.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The 3-hour promise of the hub.
pub const TARGET: Duration = Duration::from_secs(3 * 60 * 60);

/// One provider (or one Notify service / API key) as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRate {
    pub name: String,
    /// Message fragments per second the provider accepts.
    pub fragments_per_second: f64,
    /// Messages a day the account may send, if limited.
    #[serde(default)]
    pub daily_limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendPlan {
    pub cohort: u64,
    pub fragments_per_message: u32,
    pub messages_per_second: f64,
    /// Messages the providers' daily limits allow today, if any are limited.
    pub daily_capacity: Option<u64>,
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
    let mut fragment_rate: f64 = providers
        .iter()
        .map(|p| p.fragments_per_second.max(0.0))
        .sum();
    if let Some(cap) = cap {
        fragment_rate = fragment_rate.min(cap);
    }
    let messages_per_second = fragment_rate / f64::from(fragments);
    let daily_capacity = if providers.iter().any(|p| p.daily_limit.is_none()) {
        None
    } else {
        Some(providers.iter().filter_map(|p| p.daily_limit).sum())
    };
    let mut warnings = Vec::new();
    let eta = if messages_per_second > 0.0 {
        Duration::from_secs_f64(cohort as f64 / messages_per_second)
    } else {
        warnings.push("no SMS provider capacity is configured".to_string());
        Duration::MAX
    };
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
                "the providers' daily limits allow {capacity} messages; the cohort is {cohort}"
            ));
        }
    }
    SendPlan {
        cohort,
        fragments_per_message: fragments,
        messages_per_second,
        daily_capacity,
        eta,
        target,
        meets_target: meets_target && daily_capacity.is_none_or(|c| c >= cohort),
        warnings,
    }
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
            fragments_per_second: 50.0,
            daily_limit: Some(250_000),
        }
    }

    #[test]
    fn one_default_notify_service_cannot_reach_two_million_in_three_hours() {
        let p = plan(2_000_000, 1, &[notify("a")], None, TARGET);
        assert!(!p.meets_target);
        assert_eq!(p.messages_per_second, 50.0);
        assert_eq!(p.eta, Duration::from_secs(40_000));
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    }

    #[test]
    fn eight_services_at_fifty_per_second_meet_the_target() {
        let providers: Vec<_> = (0..8).map(|i| notify(&format!("notify-{i}"))).collect();
        let p = plan(2_000_000, 1, &providers, None, TARGET);
        assert_eq!(p.messages_per_second, 400.0);
        assert_eq!(p.daily_capacity, Some(2_000_000));
        assert!(p.meets_target, "{:?}", p.warnings);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn fragments_divide_the_rate_and_the_cap_applies() {
        let providers = vec![ProviderRate {
            name: "x".into(),
            fragments_per_second: 300.0,
            daily_limit: None,
        }];
        let p = plan(1000, 2, &providers, Some(100.0), TARGET);
        assert_eq!(p.messages_per_second, 50.0);
        assert_eq!(p.eta, Duration::from_secs(20));
    }

    #[test]
    fn no_providers_means_no_eta() {
        let p = plan(10, 1, &[], None, TARGET);
        assert!(!p.meets_target);
        assert_eq!(p.eta, Duration::MAX);
        assert_eq!(human_duration(p.eta), "forever");
    }
}
