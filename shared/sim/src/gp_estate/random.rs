//! Hashing and random helpers: every decision is drawn from a seeded
//! stream, so the estate is deterministic.

use chrono::{Days, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(super) fn hash(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    splitmix(splitmix(splitmix(seed ^ tag.rotate_left(56)) ^ a) ^ b)
}

pub(super) fn ppm(rng: &mut ChaCha8Rng) -> u32 {
    rng.gen_range(0..1_000_000)
}

pub(super) fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

pub(super) fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub(super) fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap_or_default()
}

pub(super) fn random_date(rng: &mut ChaCha8Rng, from: NaiveDate, span_days: u64) -> NaiveDate {
    from.checked_add_days(Days::new(rng.gen_range(0..span_days)))
        .unwrap_or(from)
}
