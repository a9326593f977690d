//! The region's geography and its practices: boroughs, postcode districts,
//! ODS codes, practice names, list sizes and the data sharing agreement.

use super::random::{pick, standard_normal};
use super::words::{FAMILY_NAMES, PRACTICE_SUFFIXES, STREETS};
use hub_core::domain::OdsCode;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;

/// Practices without a data sharing agreement, in parts per million.
const NO_DSA_PPM: u64 = 50_000;

pub(super) struct Borough {
    pub(super) name: &'static str,
    /// Share of the region's practices, per mille.
    share: u32,
    pub(super) districts: &'static [&'static str],
    pub(super) places: &'static [&'static str],
}

pub(super) const BOROUGHS: [Borough; 6] = [
    Borough {
        name: "Bexley",
        share: 130,
        districts: &[
            "DA5", "DA6", "DA7", "DA8", "DA14", "DA15", "DA16", "DA17", "DA18",
        ],
        places: &[
            "Bexleyheath",
            "Sidcup",
            "Welling",
            "Erith",
            "Crayford",
            "Belvedere",
            "Blackfen",
            "Barnehurst",
            "Albany Park",
            "Northumberland Heath",
            "Foots Cray",
            "Falconwood",
        ],
    },
    Borough {
        name: "Bromley",
        share: 170,
        districts: &["BR1", "BR2", "BR3", "BR4", "BR5", "BR6", "BR7", "SE20"],
        places: &[
            "Bromley",
            "Beckenham",
            "Orpington",
            "Penge",
            "Chislehurst",
            "Petts Wood",
            "West Wickham",
            "Hayes",
            "Shortlands",
            "Bickley",
            "Mottingham",
            "Anerley",
        ],
    },
    Borough {
        name: "Greenwich",
        share: 160,
        districts: &["SE3", "SE7", "SE9", "SE10", "SE18", "SE28"],
        places: &[
            "Greenwich",
            "Woolwich",
            "Eltham",
            "Charlton",
            "Blackheath",
            "Plumstead",
            "Abbey Wood",
            "Kidbrooke",
            "Thamesmead",
            "Shooters Hill",
            "Westcombe Park",
            "New Eltham",
        ],
    },
    Borough {
        name: "Lambeth",
        share: 180,
        districts: &["SE11", "SE27", "SW2", "SW4", "SW8", "SW9"],
        places: &[
            "Brixton",
            "Clapham",
            "Streatham",
            "Stockwell",
            "Kennington",
            "Vauxhall",
            "Herne Hill",
            "West Norwood",
            "Tulse Hill",
            "Oval",
            "Gipsy Hill",
            "Larkhall",
        ],
    },
    Borough {
        name: "Lewisham",
        share: 170,
        districts: &["SE4", "SE6", "SE8", "SE12", "SE13", "SE14", "SE23"],
        places: &[
            "Lewisham Park",
            "Catford",
            "Brockley",
            "Sydenham",
            "Forest Hill",
            "Deptford",
            "New Cross",
            "Hither Green",
            "Lee",
            "Ladywell",
            "Grove Park",
            "Bellingham",
        ],
    },
    Borough {
        name: "Southwark",
        share: 190,
        districts: &["SE1", "SE5", "SE15", "SE16", "SE17", "SE21", "SE22"],
        places: &[
            "Peckham",
            "Camberwell",
            "Bermondsey",
            "Rotherhithe",
            "Dulwich",
            "Walworth",
            "Nunhead",
            "East Dulwich",
            "Borough",
            "Elephant and Castle",
            "Surrey Docks",
            "Peckham Rye",
        ],
    },
];

/// ODS codes `G85001`, `G85002`, … (then `H00000` …): unique, letter + 5 digits.
pub(super) fn nth_ods(k: usize) -> OdsCode {
    let n = 85_001 + k;
    let letter = char::from(b'G' + u8::try_from(n / 100_000).unwrap_or(0).min(19));
    let code = format!("{letter}{:05}", n % 100_000);
    OdsCode::parse(&code).expect("generated ODS codes are well-formed")
}

pub(super) fn pick_borough(rng: &mut ChaCha8Rng) -> usize {
    let total: u32 = BOROUGHS.iter().map(|b| b.share).sum();
    let mut roll = rng.gen_range(0..total);
    for (index, borough) in BOROUGHS.iter().enumerate() {
        if roll < borough.share {
            return index;
        }
        roll -= borough.share;
    }
    BOROUGHS.len() - 1
}

/// A main district and one or two neighbours from the same borough.
pub(super) fn pick_districts(rng: &mut ChaCha8Rng, borough: usize) -> Vec<&'static str> {
    let all = BOROUGHS[borough].districts;
    let main = rng.gen_range(0..all.len());
    let extra = rng.gen_range(1..=2).min(all.len() - 1);
    (0..=extra)
        .map(|step| all[(main + step) % all.len()])
        .collect()
}

pub(super) fn practice_name(
    rng: &mut ChaCha8Rng,
    borough: usize,
    used: &mut HashSet<String>,
) -> String {
    let places = BOROUGHS[borough].places;
    let mut candidate = String::new();
    for _ in 0..24 {
        candidate = match rng.gen_range(0..10) {
            0 => format!("The {} Surgery", pick(rng, STREETS)),
            1 => format!("Dr {} and Partners", pick(rng, FAMILY_NAMES)),
            _ => format!("{} {}", pick(rng, places), pick(rng, PRACTICE_SUFFIXES)),
        };
        if !used.contains(&candidate) {
            used.insert(candidate.clone());
            return candidate;
        }
    }
    let mut n = 2;
    loop {
        let numbered = format!("{candidate} ({n})");
        if used.insert(numbered.clone()) {
            return numbered;
        }
        n += 1;
    }
}

/// Skewed list sizes (log-normal around 8,000, clamped to 2,000–30,000),
/// scaled so that they add up to `total` exactly.
pub(super) fn list_sizes(rng: &mut ChaCha8Rng, practices: usize, total: u64) -> Vec<u64> {
    if practices == 0 {
        return Vec::new();
    }
    let weights: Vec<u64> = (0..practices)
        .map(|_| {
            let z = standard_normal(rng);
            (8_000.0 * (0.55 * z).exp()).clamp(2_000.0, 30_000.0) as u64
        })
        .collect();
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let mut sizes = Vec::with_capacity(practices);
    let mut remainders = Vec::with_capacity(practices);
    for (index, weight) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(*weight);
        sizes.push(u64::try_from(exact / sum).unwrap_or(0));
        remainders.push((exact % sum, index));
    }
    let assigned: u64 = sizes.iter().sum();
    let left = usize::try_from(total.saturating_sub(assigned)).unwrap_or(0);
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, index) in remainders.into_iter().take(left) {
        sizes[index] += 1;
    }
    sizes
}

/// About 5% of practices have not signed the data sharing agreement; at
/// least one when there are 10 or more.
pub(super) fn pick_without_dsa(rng: &mut ChaCha8Rng, practices: usize) -> HashSet<usize> {
    if practices < 10 {
        return HashSet::new();
    }
    let count = ((practices as u64 * NO_DSA_PPM + 500_000) / 1_000_000).max(1) as usize;
    let mut chosen = HashSet::new();
    while chosen.len() < count {
        chosen.insert(rng.gen_range(0..practices));
    }
    chosen
}
