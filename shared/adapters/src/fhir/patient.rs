//! UK Core Patient -> [`GpPatient`], as FACTS.md describes it. Lenient
//! about what is missing or unknown, strict about shape: a resource whose
//! fields have the wrong JSON types is a malformed record.

use chrono::{DateTime, NaiveDate, Utc};
use hub_core::domain::{ContactPreference, DatePrecision, GpPatient, Personal, UkMobile};
use serde::Deserialize;

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub const CONTACT_PREFERENCE_URL: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-ContactPreference";
pub const PREFERRED_CONTACT_METHOD_SYSTEM: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-PreferredContactMethod";

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Patient {
    resource_type: String,
    #[serde(default)]
    identifier: Vec<Identifier>,
    #[serde(default)]
    name: Vec<HumanName>,
    #[serde(default)]
    address: Vec<Address>,
    #[serde(default)]
    birth_date: Option<String>,
    #[serde(default)]
    telecom: Vec<ContactPoint>,
    #[serde(default)]
    deceased_boolean: Option<bool>,
    #[serde(default)]
    deceased_date_time: Option<String>,
    #[serde(default)]
    extension: Vec<Extension>,
    #[serde(default)]
    active: Option<bool>,
}

/// A list of FHIR strings: servers write `null` where an item has no value
/// and explain it in the `_field` sibling (a data-absent-reason
/// extension), so a `null` is an absent item, not a malformed record.
type Strings = Vec<Option<String>>;

fn present(items: &Strings) -> impl Iterator<Item = &str> {
    items
        .iter()
        .flatten()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct Identifier {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct Period {
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HumanName {
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    given: Strings,
    #[serde(default)]
    period: Option<Period>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Address {
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    line: Strings,
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    postal_code: Option<String>,
    #[serde(default)]
    period: Option<Period>,
}

#[derive(Debug, Deserialize, Default)]
struct ContactPoint {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    rank: Option<u32>,
    #[serde(default)]
    period: Option<Period>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Extension {
    #[serde(default)]
    url: String,
    #[serde(default)]
    extension: Vec<Extension>,
    #[serde(default)]
    value_codeable_concept: Option<CodeableConcept>,
    #[serde(default)]
    value_coding: Option<Coding>,
}

#[derive(Debug, Deserialize, Default)]
struct CodeableConcept {
    #[serde(default)]
    coding: Vec<Coding>,
}

#[derive(Debug, Deserialize, Default)]
struct Coding {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// Why a resource could not be read. Never holds a value from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatientError {
    #[error("not JSON (syntax error at column {0})")]
    Syntax(usize),
    #[error("not a valid Patient resource (field of the wrong type near column {0})")]
    Shape(usize),
    #[error("resource is not a Patient")]
    NotAPatient,
}

/// Parses one NDJSON line (or one search entry's resource).
pub fn parse_patient(json: &[u8], now: DateTime<Utc>) -> Result<GpPatient, PatientError> {
    // serde_json's messages can quote the offending value, so only its
    // category and column are kept.
    let patient: Patient = serde_json::from_slice(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => PatientError::Shape(e.column()),
        _ => PatientError::Syntax(e.column()),
    })?;
    to_gp_patient(patient, now)
}

pub fn patient_from_value(
    value: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<GpPatient, PatientError> {
    let patient: Patient = serde_json::from_value(value).map_err(|_| PatientError::Shape(0))?;
    to_gp_patient(patient, now)
}

fn to_gp_patient(patient: Patient, now: DateTime<Utc>) -> Result<GpPatient, PatientError> {
    if patient.resource_type != "Patient" {
        return Err(PatientError::NotAPatient);
    }
    let nhs_number = patient
        .identifier
        .iter()
        .find(|i| i.system.as_deref() == Some(NHS_NUMBER_SYSTEM))
        .and_then(|i| i.value.clone())
        .unwrap_or_default();
    let name = pick_name(&patient.name, now);
    let (given_name, family_name) = name.map_or((String::new(), String::new()), |n| {
        (
            present(&n.given).collect::<Vec<_>>().join(" "),
            n.family.clone().unwrap_or_default(),
        )
    });
    let address = pick_address(&patient.address, now);
    let (address_lines, postcode) = address.map_or((Vec::new(), String::new()), |a| {
        let mut lines: Vec<String> = present(&a.line).map(str::to_string).collect();
        if let Some(city) = a.city.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            if lines.last().map(String::as_str) != Some(city) {
                lines.push(city.to_string());
            }
        }
        (lines, a.postal_code.clone().unwrap_or_default())
    });
    let (birth_date, birth_date_precision) = patient
        .birth_date
        .as_deref()
        .and_then(birth_date)
        .map_or((None, DatePrecision::Day), |(first, precision)| {
            (Some(first), precision)
        });
    let deceased = patient.deceased_boolean == Some(true) || patient.deceased_date_time.is_some();
    Ok(GpPatient {
        nhs_number: Personal::new(nhs_number),
        given_name: Personal::new(given_name),
        family_name: Personal::new(family_name),
        address_lines: Personal::new(address_lines),
        postcode: Personal::new(postcode),
        birth_date: Personal::new(birth_date),
        birth_date_precision,
        mobile: Personal::new(pick_mobile(&patient.telecom, now)),
        deceased,
        contact_preference: contact_preference(&patient.extension),
        active: patient.active != Some(false),
    })
}

/// A FHIR `date`: `1980-02-29`, `1980-02` or `1980`, as its first day and
/// how much of it is known.
fn birth_date(text: &str) -> Option<(NaiveDate, DatePrecision)> {
    let (year, month, day) = partial_date(text.trim())?;
    let precision = match (month, day) {
        (Some(_), Some(_)) => DatePrecision::Day,
        (Some(_), None) => DatePrecision::Month,
        _ => DatePrecision::Year,
    };
    let first = NaiveDate::from_ymd_opt(year, month.unwrap_or(1), day.unwrap_or(1))?;
    Some((first, precision))
}

/// A period is current when it has started and not ended. An unreadable
/// bound counts as ended: better to miss an old number than text it.
fn is_current(period: Option<&Period>, now: DateTime<Utc>) -> bool {
    let Some(period) = period else {
        return true;
    };
    let ended = period
        .end
        .as_deref()
        .is_some_and(|end| fhir_instant_end(end).is_none_or(|end| end <= now));
    let not_started = period
        .start
        .as_deref()
        .is_some_and(|start| fhir_instant_start(start).is_none_or(|start| start > now));
    !ended && !not_started
}

/// The last instant a FHIR date/dateTime covers (`2024` ends at the end of
/// 2024), so an end date of today is still current today.
fn fhir_instant_end(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    let (year, month, day) = partial_date(text)?;
    let last = match (month, day) {
        (Some(m), Some(d)) => NaiveDate::from_ymd_opt(year, m, d)?,
        (Some(m), None) => {
            let next = if m == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, m + 1, 1)?
            };
            next.pred_opt()?
        }
        _ => NaiveDate::from_ymd_opt(year, 12, 31)?,
    };
    Some(last.and_hms_opt(23, 59, 59)?.and_utc())
}

fn fhir_instant_start(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    let (year, month, day) = partial_date(text)?;
    let first = NaiveDate::from_ymd_opt(year, month.unwrap_or(1), day.unwrap_or(1))?;
    Some(first.and_hms_opt(0, 0, 0)?.and_utc())
}

fn partial_date(text: &str) -> Option<(i32, Option<u32>, Option<u32>)> {
    let mut parts = text.split('-');
    let year = parts.next()?.parse().ok()?;
    let month = parts.next().map(str::parse).transpose().ok()?;
    let day = parts.next().map(str::parse).transpose().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((year, month, day))
}

fn pick_name(names: &[HumanName], now: DateTime<Utc>) -> Option<&HumanName> {
    let current = || names.iter().filter(|n| is_current(n.period.as_ref(), now));
    current()
        .find(|n| n.use_.as_deref() == Some("official"))
        .or_else(|| current().find(|n| n.use_.as_deref() == Some("usual")))
        .or_else(|| current().find(|n| n.use_.is_none()))
}

fn pick_address(addresses: &[Address], now: DateTime<Utc>) -> Option<&Address> {
    let current = || {
        addresses
            .iter()
            .filter(|a| is_current(a.period.as_ref(), now))
            .filter(|a| a.type_.as_deref() != Some("postal") || a.use_.as_deref() == Some("home"))
    };
    current()
        .find(|a| a.use_.as_deref() == Some("home"))
        .or_else(|| current().find(|a| a.use_.is_none()))
}

/// The best usable current mobile. Records hold mobiles under `use=mobile`,
/// as `system=sms`, and also under `use=home`, `work`, `temp` or no use at
/// all; pagers, faxes and e-mail are never texted. Candidates go by `rank`
/// (unranked last), a declared mobile before a phone that merely parses as
/// one, then record order; the first that is a valid UK mobile wins, so an
/// unusable rank-1 entry does not hide a usable rank-2 one. With no usable
/// number, a declared mobile is returned as recorded, so it is reported as
/// invalid rather than missing.
fn pick_mobile(telecom: &[ContactPoint], now: DateTime<Utc>) -> Option<String> {
    let mut candidates: Vec<(u32, bool, usize, &str)> = telecom
        .iter()
        .enumerate()
        .filter(|(_, t)| is_current(t.period.as_ref(), now))
        .filter_map(|(order, t)| {
            let value = t.value.as_deref()?.trim();
            let declared = match (t.system.as_deref(), t.use_.as_deref()) {
                (Some("sms"), _) | (Some("phone"), Some("mobile")) => true,
                (Some("phone"), None | Some("home" | "work" | "temp")) => false,
                _ => return None,
            };
            let rank = t.rank.filter(|r| *r > 0).unwrap_or(u32::MAX);
            (!value.is_empty()).then_some((rank, !declared, order, value))
        })
        .collect();
    candidates.sort_unstable();
    candidates
        .iter()
        .find(|(_, _, _, value)| UkMobile::parse(value).is_ok())
        .or_else(|| candidates.iter().find(|(_, inferred, _, _)| !inferred))
        .map(|(_, _, _, value)| value.to_string())
}

/// Code 8 wins over anything else recorded: a "no telephone contact"
/// anywhere in the record stops the text.
fn contact_preference(extensions: &[Extension]) -> ContactPreference {
    let codes: Vec<&str> = extensions
        .iter()
        .filter(|e| e.url == CONTACT_PREFERENCE_URL)
        .flat_map(|e| e.extension.iter())
        .filter(|sub| sub.url == "PreferredContactMethod")
        .flat_map(|sub| {
            sub.value_codeable_concept
                .iter()
                .flat_map(|c| c.coding.iter())
                .chain(sub.value_coding.iter())
        })
        .filter(|c| c.system.as_deref() == Some(PREFERRED_CONTACT_METHOD_SYSTEM))
        .filter_map(|c| c.code.as_deref())
        .collect();
    if codes.contains(&"8") {
        ContactPreference::NoTelephoneContact
    } else if codes.contains(&"9") {
        ContactPreference::Sms
    } else if codes.contains(&"1") {
        ContactPreference::Letter
    } else {
        ContactPreference::NotRecorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn parse(value: serde_json::Value) -> GpPatient {
        parse_patient(value.to_string().as_bytes(), now()).unwrap()
    }

    fn preference(code: &str) -> serde_json::Value {
        json!({
            "url": CONTACT_PREFERENCE_URL,
            "extension": [{
                "url": "PreferredContactMethod",
                "valueCodeableConcept": { "coding": [{
                    "system": PREFERRED_CONTACT_METHOD_SYSTEM, "code": code
                }]}
            }]
        })
    }

    #[test]
    fn maps_a_full_uk_core_patient() {
        let patient = parse(json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": { "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"] },
            "extension": [
                { "url": "https://example.org/unknown", "valueString": "x" },
                preference("9")
            ],
            "identifier": [
                { "system": "https://local.example/mrn", "value": "X1" },
                { "system": NHS_NUMBER_SYSTEM, "value": "9000000009" }
            ],
            "name": [
                { "use": "usual", "given": ["Jo"], "family": "Bloggs" },
                { "use": "old", "given": ["Joanne"], "family": "Smith" },
                { "use": "official", "given": ["Joanne", "Mary"], "family": "Bloggs" }
            ],
            "telecom": [
                { "system": "phone", "use": "home", "value": "020 7946 0000" },
                { "system": "phone", "use": "mobile", "value": "07700 900001",
                  "period": { "end": "2024-01-01" } },
                { "system": "email", "value": "jo@example.org" },
                { "system": "phone", "use": "mobile", "value": "07700 900002", "rank": 2 },
                { "system": "phone", "use": "mobile", "value": "07700 900003", "rank": 1 }
            ],
            "birthDate": "1980-02-29",
            "address": [
                { "use": "old", "line": ["9 Old Road"], "postalCode": "SE1 1AA" },
                { "use": "home", "line": ["Flat 2", "1 High Street"], "city": "London",
                  "postalCode": "SE13 6LH" }
            ],
            "generalPractitioner": [{ "identifier": { "system": ODS_SYSTEM, "value": "G85001" } }]
        }));
        assert_eq!(patient.nhs_number.expose(), "9000000009");
        assert_eq!(patient.given_name.expose(), "Joanne Mary");
        assert_eq!(patient.family_name.expose(), "Bloggs");
        assert_eq!(
            patient.address_lines.expose(),
            &vec![
                "Flat 2".to_string(),
                "1 High Street".into(),
                "London".into()
            ]
        );
        assert_eq!(patient.postcode.expose(), "SE13 6LH");
        assert_eq!(
            *patient.birth_date.expose(),
            NaiveDate::from_ymd_opt(1980, 2, 29)
        );
        assert_eq!(patient.mobile.expose().as_deref(), Some("07700 900003"));
        assert!(!patient.deceased);
        assert_eq!(patient.contact_preference, ContactPreference::Sms);
    }

    #[test]
    fn missing_fields_give_empty_values_not_errors() {
        let patient = parse(json!({ "resourceType": "Patient" }));
        assert_eq!(patient.nhs_number.expose(), "");
        assert_eq!(patient.given_name.expose(), "");
        assert!(patient.address_lines.expose().is_empty());
        assert_eq!(patient.postcode.expose(), "");
        assert_eq!(*patient.birth_date.expose(), None);
        assert_eq!(*patient.mobile.expose(), None);
        assert_eq!(patient.contact_preference, ContactPreference::NotRecorded);
        let usual_only = parse(json!({
            "resourceType": "Patient",
            "name": [{ "use": "usual", "given": ["Al"], "family": "X" }]
        }));
        assert_eq!(usual_only.given_name.expose(), "Al");
    }

    #[test]
    fn deceased_and_preferences() {
        let dead = parse(json!({ "resourceType": "Patient", "deceasedBoolean": true }));
        assert!(dead.deceased);
        let dead = parse(json!({ "resourceType": "Patient", "deceasedDateTime": "2024-12-01" }));
        assert!(dead.deceased);
        let alive = parse(json!({ "resourceType": "Patient", "deceasedBoolean": false }));
        assert!(!alive.deceased);
        for (code, expected) in [
            ("8", ContactPreference::NoTelephoneContact),
            ("9", ContactPreference::Sms),
            ("1", ContactPreference::Letter),
            ("4", ContactPreference::NotRecorded),
        ] {
            let p = parse(json!({ "resourceType": "Patient", "extension": [preference(code)] }));
            assert_eq!(p.contact_preference, expected, "{code}");
        }
        let both = parse(json!({
            "resourceType": "Patient", "extension": [preference("9"), preference("8")]
        }));
        assert_eq!(
            both.contact_preference,
            ContactPreference::NoTelephoneContact
        );
    }

    #[test]
    fn ended_and_future_mobiles_are_ignored() {
        let p = parse(json!({
            "resourceType": "Patient",
            "telecom": [
                { "system": "phone", "use": "mobile", "value": "07700 900001",
                  "period": { "end": "2025-02-28T10:00:00Z" } },
                { "system": "phone", "use": "mobile", "value": "07700 900004",
                  "period": { "start": "2026" } },
                { "system": "phone", "use": "mobile", "value": "07700 900005",
                  "period": { "end": "garbage" } }
            ]
        }));
        assert_eq!(*p.mobile.expose(), None);
        let today = parse(json!({
            "resourceType": "Patient",
            "telecom": [{ "system": "phone", "use": "mobile", "value": "07700 900006",
                          "period": { "start": "2020-01", "end": "2025-03-01" } }]
        }));
        assert_eq!(today.mobile.expose().as_deref(), Some("07700 900006"));
    }

    /// UK Core as servers write it: a `null` inside a string list with its
    /// data-absent-reason in the `_given` / `_line` sibling.
    #[test]
    fn nulls_in_string_lists_are_absent_items_not_malformed_records() {
        let absent = json!([{ "extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
            "valueCode": "unknown"
        }]}]);
        let patient = parse(json!({
            "resourceType": "Patient",
            "identifier": [{ "system": NHS_NUMBER_SYSTEM, "value": "9000000009" }],
            "name": [{ "use": "official", "family": "Bloggs", "given": [null], "_given": absent }],
            "address": [{ "use": "home", "line": ["1 High Street", null], "_line": [null, absent[0]],
                          "postalCode": "SE13 6LH" }],
            "telecom": [{ "system": "phone", "use": "mobile", "value": "07700 900123" }],
            "generalPractitioner": [{ "identifier": { "system": ODS_SYSTEM, "value": "G85002" } }]
        }));
        assert_eq!(patient.nhs_number.expose(), "9000000009");
        assert_eq!(patient.given_name.expose(), "");
        assert_eq!(patient.family_name.expose(), "Bloggs");
        assert_eq!(
            patient.address_lines.expose(),
            &vec!["1 High Street".to_string()]
        );
        assert_eq!(patient.mobile.expose().as_deref(), Some("07700 900123"));
        let two = parse(json!({
            "resourceType": "Patient",
            "name": [{ "use": "official", "given": [null, "Ann"], "_given": [absent[0], null] }]
        }));
        assert_eq!(two.given_name.expose(), "Ann");
    }

    #[test]
    fn mobiles_are_found_under_other_uses_and_ranks() {
        let mobile_of = |telecom: serde_json::Value| {
            parse(json!({ "resourceType": "Patient", "telecom": telecom }))
                .mobile
                .expose()
                .clone()
        };
        // under use=home, with no use, and as system=sms
        assert_eq!(
            mobile_of(json!([{ "system": "phone", "use": "home", "value": "07700 900201" }]))
                .as_deref(),
            Some("07700 900201")
        );
        assert_eq!(
            mobile_of(json!([{ "system": "phone", "value": "07700 900202" }])).as_deref(),
            Some("07700 900202")
        );
        assert_eq!(
            mobile_of(json!([{ "system": "sms", "value": "+447700900203" }])).as_deref(),
            Some("+447700900203")
        );
        // a landline under use=home is not a mobile
        assert_eq!(
            mobile_of(json!([{ "system": "phone", "use": "home", "value": "020 7946 0000" }])),
            None
        );
        // a rank-1 pager does not hide a rank-2 mobile
        assert_eq!(
            mobile_of(json!([
                { "system": "pager", "value": "07700 900299", "rank": 1 },
                { "system": "phone", "use": "mobile", "value": "07700 900204", "rank": 2 }
            ]))
            .as_deref(),
            Some("07700 900204")
        );
        // an unusable rank-1 "mobile" does not hide a usable rank-2 one
        assert_eq!(
            mobile_of(json!([
                { "system": "phone", "use": "mobile", "value": "020 7946 0000", "rank": 1 },
                { "system": "phone", "use": "home", "value": "07700 900205", "rank": 2 }
            ]))
            .as_deref(),
            Some("07700 900205")
        );
        // a declared mobile beats an inferred one of the same rank
        assert_eq!(
            mobile_of(json!([
                { "system": "phone", "value": "07700 900206" },
                { "system": "phone", "use": "mobile", "value": "07700 900207" }
            ]))
            .as_deref(),
            Some("07700 900207")
        );
        // nothing usable: the declared mobile is kept, to be reported invalid
        assert_eq!(
            mobile_of(json!([{ "system": "phone", "use": "mobile", "value": "12345" }])).as_deref(),
            Some("12345")
        );
        // e-mail and fax are never texted
        assert_eq!(
            mobile_of(json!([
                { "system": "fax", "value": "07700 900208" },
                { "system": "email", "value": "07700900209@example.org" }
            ])),
            None
        );
    }

    #[test]
    fn inactive_records_and_partial_birth_dates() {
        let inactive = parse(json!({ "resourceType": "Patient", "active": false }));
        assert!(!inactive.active);
        assert!(parse(json!({ "resourceType": "Patient", "active": true })).active);
        assert!(parse(json!({ "resourceType": "Patient" })).active);
        let year = parse(json!({ "resourceType": "Patient", "birthDate": "1961" }));
        assert_eq!(
            *year.birth_date.expose(),
            NaiveDate::from_ymd_opt(1961, 1, 1)
        );
        assert_eq!(year.birth_date_precision, DatePrecision::Year);
        let month = parse(json!({ "resourceType": "Patient", "birthDate": "1961-05" }));
        assert_eq!(
            *month.birth_date.expose(),
            NaiveDate::from_ymd_opt(1961, 5, 1)
        );
        assert_eq!(month.birth_date_precision, DatePrecision::Month);
        let day = parse(json!({ "resourceType": "Patient", "birthDate": "1961-05-17" }));
        assert_eq!(day.birth_date_precision, DatePrecision::Day);
        let nonsense = parse(json!({ "resourceType": "Patient", "birthDate": "1961-13" }));
        assert_eq!(*nonsense.birth_date.expose(), None);
    }

    #[test]
    fn malformed_resources_are_errors_that_quote_nothing() {
        let errors = [
            parse_patient(b"{\"resourceType\":\"Patient\",\"name\":", now()).unwrap_err(),
            parse_patient(
                br#"{"resourceType":"Patient","name":"Bloggs 9000000009"}"#,
                now(),
            )
            .unwrap_err(),
            parse_patient(br#"{"resourceType":"Observation"}"#, now()).unwrap_err(),
            parse_patient(br#"[1,2]"#, now()).unwrap_err(),
        ];
        assert!(matches!(errors[0], PatientError::Syntax(_)));
        assert!(matches!(errors[1], PatientError::Shape(_)));
        assert_eq!(errors[2], PatientError::NotAPatient);
        for error in errors {
            let text = error.to_string();
            assert!(
                !text.contains("Bloggs") && !text.contains("9000000009"),
                "{text}"
            );
        }
    }
}
