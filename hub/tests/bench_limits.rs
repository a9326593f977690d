//! `hub bench limits` at a small scale: the hub and the simulators at
//! their documented limits, in virtual time.

use hub_local::bench::{run_limits, LimitsOptions};

#[tokio::test(start_paused = true)]
async fn at_documented_limits_the_rate_is_used_without_a_429_a_duplicate_or_a_dead_letter() {
    let options = LimitsOptions {
        practices: 4,
        patients: 4_000,
        notify_keys: 2,
        eum_senders: 1,
        workers: 4,
        seed: 7,
        ..LimitsOptions::default()
    };
    let report = run_limits(&options).await.expect("the scenario runs");
    assert!(report.texts > 2_500, "{report:?}");
    // Two Notify keys at 50 texts a second and one sender at 10 parts.
    assert!(
        (report.configured_per_second - 100.0 - 10.0 / f64::from(report.fragments_per_message))
            .abs()
            < 1e-9,
        "{report:?}"
    );
    assert_eq!(report.rate_limited, 0, "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.dead_lettered, 0);
    assert!(report.utilisation >= 0.95, "{report:?}");
    assert!(report.completion_vs_eta <= 1.05, "{report:?}");
    assert!(
        report.virtual_seconds > report.real_seconds,
        "virtual time runs ahead of real time: {report:?}"
    );
}
