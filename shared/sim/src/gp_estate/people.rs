//! A person's birth date, address and postcode.

use super::random::pick;
use super::region::BOROUGHS;
use super::words::STREETS;
use chrono::{Days, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// UK age structure in 5-year bands 0–4 … 95–100, per mille (ONS-like).
const AGE_BANDS: [u32; 20] = [
    54, 59, 60, 56, 60, 66, 69, 67, 63, 64, 69, 68, 59, 51, 50, 36, 25, 15, 7, 2,
];

pub(super) fn birth_date(rng: &mut ChaCha8Rng, today: NaiveDate) -> NaiveDate {
    let mut roll = rng.gen_range(0..AGE_BANDS.iter().sum::<u32>());
    let mut band = 0;
    for (index, weight) in AGE_BANDS.iter().enumerate() {
        if roll < *weight {
            band = index;
            break;
        }
        roll -= weight;
    }
    let low = band as u64 * 5;
    let high = if band == AGE_BANDS.len() - 1 {
        100
    } else {
        low + 4
    };
    let age = rng.gen_range(low..=high);
    // Somewhere in the year after the `age`-th birthday (0 = born today).
    let days = age * 365 + age / 4 + rng.gen_range(0..365);
    today.checked_sub_days(Days::new(days)).unwrap_or(today)
}

pub(super) fn address_lines(rng: &mut ChaCha8Rng, borough: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(3);
    let number = rng.gen_range(1..=250);
    let street = pick(rng, STREETS);
    if rng.gen_bool(0.25) {
        lines.push(format!("Flat {}", rng.gen_range(1..=40)));
    }
    lines.push(format!("{number} {street}"));
    if rng.gen_bool(0.6) {
        lines.push(pick(rng, BOROUGHS[borough].places).to_string());
    }
    lines
}

/// Inward unit letters: never C, I, K, M, O or V.
const UNIT_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

pub(super) fn postcode(rng: &mut ChaCha8Rng, districts: &[&'static str]) -> String {
    let district = if districts.len() == 1 || rng.gen_bool(0.7) {
        districts.first().copied().unwrap_or("SE13")
    } else {
        districts[rng.gen_range(0..districts.len())]
    };
    let sector = rng.gen_range(1..=9);
    let a = char::from(UNIT_LETTERS[rng.gen_range(0..UNIT_LETTERS.len())]);
    let b = char::from(UNIT_LETTERS[rng.gen_range(0..UNIT_LETTERS.len())]);
    format!("{district} {sector}{a}{b}")
}
