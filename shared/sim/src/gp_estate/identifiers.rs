//! The NHS number and the mobile of a person: bijections of the global
//! index (and the inverse for the NHS number), with the defects a real
//! extract has.

use super::random::ppm;
use hub_core::domain::check_digit;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

// Rates, in parts per million.
const NO_MOBILE_PPM: u32 = 100_000;
const INVALID_MOBILE_PPM: u32 = 10_000;
const REJECTED_MOBILE_PPM: u32 = 500; // 07700 900999: the gateway rejects it

const NHS_SPACE: u64 = 10_000_000;
const NHS_MUL: u64 = 7_654_321;
const NHS_MUL_INVERSE: u64 = 81;
const NHS_ADD: u64 = 1_234_567;
const MOBILE_SPACE: u64 = 100_000_000;
const MOBILE_MUL: u64 = 48_271_693;
const MOBILE_ADD: u64 = 31_415_926;

/// Choices of the ninth digit that give a valid number, in order (nine or ten).
fn ninth_digit_choices(first_eight: &[u32; 8]) -> impl Iterator<Item = u32> + '_ {
    (0..10).filter(move |d| {
        let mut nine = [0; 9];
        nine[..8].copy_from_slice(first_eight);
        nine[8] = *d;
        check_digit(&nine).is_some()
    })
}

fn prefix_digits(g: u64) -> [u32; 8] {
    let permuted = (g / 9 % NHS_SPACE * NHS_MUL + NHS_ADD) % NHS_SPACE;
    let mut digits = [0; 8];
    digits[0] = 9;
    let mut rest = permuted;
    for position in (1..8).rev() {
        digits[position] = (rest % 10) as u32;
        rest /= 10;
    }
    digits
}

/// The valid NHS number of global index `g` (a bijection for
/// `g < MAX_PATIENTS`): `9`, seven permuted digits of `g / 9`, the
/// `(g % 9)`-th valid ninth digit, the check digit.
pub(crate) fn nhs_number_for(g: u64) -> String {
    let first_eight = prefix_digits(g);
    let skip = usize::try_from(g % 9).unwrap_or(0);
    let ninth = ninth_digit_choices(&first_eight).nth(skip).unwrap_or(0);
    let mut nine = [0; 9];
    nine[..8].copy_from_slice(&first_eight);
    nine[8] = ninth;
    let check = check_digit(&nine).unwrap_or(0);
    nine.iter()
        .chain(std::iter::once(&check))
        .map(|d| char::from(b'0' + *d as u8))
        .collect()
}

/// The inverse of [`nhs_number_for`].
pub(crate) fn global_index_of(nhs_number: &str) -> Option<u64> {
    let digits: Vec<u32> = nhs_number.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != 10 || digits[0] != 9 {
        return None;
    }
    let permuted = digits[1..8]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(*d));
    let prefix = (permuted + NHS_SPACE - NHS_ADD) % NHS_SPACE * NHS_MUL_INVERSE % NHS_SPACE;
    let mut first_eight = [0; 8];
    first_eight.copy_from_slice(&digits[..8]);
    let k = ninth_digit_choices(&first_eight).position(|d| d == digits[8])?;
    let g = prefix * 9 + k as u64;
    (k < 9 && nhs_number_for(g) == nhs_number).then_some(g)
}

pub(super) fn invalid_nhs_number(rng: &mut ChaCha8Rng, g: u64) -> String {
    let valid = nhs_number_for(g);
    match rng.gen_range(0..20) {
        // A typo in the check digit.
        0..=11 => {
            let check = valid.as_bytes()[9] - b'0';
            let wrong = (check + rng.gen_range(1..10)) % 10;
            format!("{}{}", &valid[..9], wrong)
        }
        // A digit lost.
        12..=16 => valid[..9].to_string(),
        // Not recorded.
        _ => String::new(),
    }
}

/// A unique valid UK mobile for global index `g` (national digits).
fn mobile_national(rng: &mut ChaCha8Rng, g: u64) -> String {
    const FIRST: [u32; 8] = [1, 2, 3, 4, 5, 7, 8, 9];
    let rest = (g % MOBILE_SPACE * MOBILE_MUL + MOBILE_ADD) % MOBILE_SPACE;
    let mut first = FIRST[rng.gen_range(0..FIRST.len())];
    if first == 7 && rest / 100 == 700_900 {
        // Keep clear of the drama range the gateway treats specially.
        first = 8;
    }
    format!("07{first}{rest:08}")
}

fn format_mobile(rng: &mut ChaCha8Rng, national: &str) -> String {
    let (head, tail) = national.split_at(5);
    match rng.gen_range(0..100) {
        0..=39 => national.to_string(),
        40..=64 => format!("{head} {tail}"),
        65..=74 => format!("+44{}", &national[1..]),
        75..=86 => format!("+44 {} {tail}", &head[1..]),
        87..=91 => format!("{head}-{}-{}", &tail[..3], &tail[3..]),
        _ => format!("+44 (0){} {tail}", &head[1..]),
    }
}

pub(super) fn mobile(rng: &mut ChaCha8Rng, g: u64) -> Option<String> {
    let roll = ppm(rng);
    let national = mobile_national(rng, g);
    if roll < NO_MOBILE_PPM {
        return None;
    }
    if roll < NO_MOBILE_PPM + INVALID_MOBILE_PPM {
        let n = rng.gen_range(0..1000);
        return Some(match rng.gen_range(0..10) {
            0..=3 => format!("020 7946 0{n:03}"),
            4 => format!("0161 496 0{n:03}"),
            5 => ["n/a", "unknown", "none", "see notes", "0"][rng.gen_range(0..5)].to_string(),
            6 => national[..10].to_string(),
            7 => format!("{national}{}", n % 10),
            8 => format!("07012 345{n:03}"),
            _ => format!("+1 202 555 0{n:03}"),
        });
    }
    if roll < NO_MOBILE_PPM + INVALID_MOBILE_PPM + REJECTED_MOBILE_PPM {
        return Some("07700 900999".to_string());
    }
    Some(format_mobile(rng, &national))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gp_estate::MAX_PATIENTS;
    use hub_core::domain::NhsNumber;
    use std::collections::HashSet;

    #[test]
    fn nhs_numbering_is_a_valid_bijection() {
        let mut seen = HashSet::new();
        for g in (0..200_000).chain(MAX_PATIENTS - 1_000..MAX_PATIENTS) {
            let number = nhs_number_for(g);
            let parsed = NhsNumber::parse(&number).expect("valid NHS number");
            assert_eq!(parsed.as_str(), number);
            assert!(number.starts_with('9'));
            assert_eq!(global_index_of(&number), Some(g));
            assert!(seen.insert(number));
        }
        assert_eq!(global_index_of("123"), None);
    }
}
