//! Who a campaign is for: everyone, or an age band and/or postcode filters,
//! optionally limited to a list of practices. Filters are ANDed.

use super::{OdsCode, Postcode, PostcodeFilter};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

/// Age in whole years on `on`, inclusive bounds. `None` is open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgeBand {
    pub min: Option<u32>,
    pub max: Option<u32>,
}

impl AgeBand {
    pub fn contains(&self, age: u32) -> bool {
        self.min.is_none_or(|min| age >= min) && self.max.is_none_or(|max| age <= max)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<AgeBand>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postcodes: Vec<PostcodeFilter>,
    /// Empty means every participating practice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub practices: Vec<OdsCode>,
}

impl Target {
    pub fn is_everyone(&self) -> bool {
        self.age.is_none() && self.postcodes.is_empty() && self.practices.is_empty()
    }

    pub fn includes_practice(&self, ods: &OdsCode) -> bool {
        self.practices.is_empty() || self.practices.contains(ods)
    }

    /// Whether a patient is in the target cohort on `on` (the send date).
    /// A patient with no date of birth cannot be placed in an age band, and
    /// one with no postcode cannot be placed in a postcode filter.
    pub fn includes_patient(
        &self,
        birth_date: Option<NaiveDate>,
        postcode: Option<&Postcode>,
        on: NaiveDate,
    ) -> bool {
        self.includes_patient_born(birth_date.map(|d| (d, d)), postcode, on)
    }

    /// As [`Self::includes_patient`] for a birth date known only to lie
    /// within `(first, last)` (a partial date such as `1980` or `1980-05`):
    /// the patient is in an age band when any day of that range would be.
    /// An emergency message rather reaches someone a few months outside
    /// the band than misses someone inside it.
    pub fn includes_patient_born(
        &self,
        born_within: Option<(NaiveDate, NaiveDate)>,
        postcode: Option<&Postcode>,
        on: NaiveDate,
    ) -> bool {
        if let Some(band) = &self.age {
            match born_within {
                Some((first, last)) if first <= on => {
                    let oldest = age_on(first, on);
                    let youngest = age_on(last.min(on), on);
                    let overlaps = band.min.is_none_or(|min| oldest >= min)
                        && band.max.is_none_or(|max| youngest <= max);
                    if !overlaps {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        if !self.postcodes.is_empty() {
            match postcode {
                Some(pc) if self.postcodes.iter().any(|f| f.matches(pc)) => {}
                _ => return false,
            }
        }
        true
    }
}

/// Age in whole years on a date; someone born on 29 February has their
/// birthday on 1 March in other years.
pub fn age_on(birth: NaiveDate, on: NaiveDate) -> u32 {
    if on < birth {
        return 0;
    }
    let mut years = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    years.max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn age_counts_whole_years_and_birthdays() {
        assert_eq!(age_on(date("2000-06-15"), date("2026-06-14")), 25);
        assert_eq!(age_on(date("2000-06-15"), date("2026-06-15")), 26);
        assert_eq!(age_on(date("2004-02-29"), date("2026-02-28")), 21);
        assert_eq!(age_on(date("2004-02-29"), date("2026-03-01")), 22);
        assert_eq!(age_on(date("2030-01-01"), date("2026-01-01")), 0);
    }

    #[test]
    fn age_band_is_inclusive_at_both_ends() {
        let band = AgeBand {
            min: Some(65),
            max: Some(74),
        };
        assert!(!band.contains(64));
        assert!(band.contains(65));
        assert!(band.contains(74));
        assert!(!band.contains(75));
    }

    #[test]
    fn filters_are_anded() {
        let target = Target {
            age: Some(AgeBand {
                min: Some(18),
                max: None,
            }),
            postcodes: vec![PostcodeFilter::parse("SE13").unwrap()],
            practices: vec![],
        };
        let on = date("2026-11-22");
        let se13 = Postcode::parse("SE13 6LH").unwrap();
        let se14 = Postcode::parse("SE14 5AA").unwrap();
        assert!(target.includes_patient(Some(date("1980-01-01")), Some(&se13), on));
        assert!(!target.includes_patient(Some(date("1980-01-01")), Some(&se14), on));
        assert!(!target.includes_patient(Some(date("2015-01-01")), Some(&se13), on));
        assert!(!target.includes_patient(None, Some(&se13), on));
        assert!(!target.includes_patient(Some(date("1980-01-01")), None, on));
    }

    #[test]
    fn a_partial_birth_date_is_in_a_band_when_any_day_of_it_is() {
        let target = Target {
            age: Some(AgeBand {
                min: Some(65),
                max: Some(70),
            }),
            ..Target::default()
        };
        let on = date("2026-06-01");
        let year = |y: &str| {
            let first = date(&format!("{y}-01-01"));
            Some((first, crate::domain::DatePrecision::Year.last_day(first)))
        };
        // born in 1961: 64 or 65 on the day, so possibly in the band
        assert!(target.includes_patient_born(year("1961"), None, on));
        // born in 1960: 65 or 66, certainly in
        assert!(target.includes_patient_born(year("1960"), None, on));
        // born in 1962: 63 or 64, certainly not
        assert!(!target.includes_patient_born(year("1962"), None, on));
        // born in 1955: 70 or 71, possibly in
        assert!(target.includes_patient_born(year("1955"), None, on));
        // born in 1954: 71 or 72, certainly not
        assert!(!target.includes_patient_born(year("1954"), None, on));
        let may = date("1961-05-01");
        let month = Some((may, crate::domain::DatePrecision::Month.last_day(may)));
        assert!(target.includes_patient_born(month, None, on));
        let july = date("1961-07-01");
        let month = Some((july, crate::domain::DatePrecision::Month.last_day(july)));
        assert!(!target.includes_patient_born(month, None, on));
    }

    #[test]
    fn everyone_includes_patients_without_dob_or_postcode() {
        let target = Target::default();
        assert!(target.is_everyone());
        assert!(target.includes_patient(None, None, date("2026-11-22")));
    }

    #[test]
    fn practice_list_limits_practices() {
        let a = OdsCode::parse("G85001").unwrap();
        let b = OdsCode::parse("G85002").unwrap();
        let target = Target {
            practices: vec![a.clone()],
            ..Target::default()
        };
        assert!(target.includes_practice(&a));
        assert!(!target.includes_practice(&b));
    }
}
