use super::*;
use futures::StreamExt;
use hub_core::domain::{Postcode, UkMobile};
use std::sync::atomic::AtomicBool;

fn today() -> NaiveDate {
    date(2025, 6, 1)
}

fn estate(practices: usize, patients: u64, seed: u64) -> GpEstate {
    GpEstate::generate_as_of(
        RegionSpec {
            practices,
            patients,
            seed,
        },
        today(),
    )
}

fn all_districts() -> HashSet<&'static str> {
    BOROUGHS
        .iter()
        .flat_map(|b| b.districts.iter().copied())
        .collect()
}

#[test]
fn same_seed_same_estate_other_seed_other_estate() {
    let a = estate(12, 6_000, 7);
    let b = estate(12, 6_000, 7);
    let c = estate(12, 6_000, 8);
    assert_eq!(a.practices(), b.practices());
    assert!(a.all_patients().eq(b.all_patients()));
    let first = a.practices()[0].ods.clone();
    assert!(a.patients(&first).eq(a.patients(&first)), "same every call");
    assert!(!a.all_patients().eq(c.all_patients()));
    assert_eq!(a.patient(&first, 3), a.patients(&first).nth(3));
    assert_eq!(a.patient(&first, u64::MAX), None);
}

#[test]
fn practices_look_like_a_region() {
    let region = estate(200, 2_000_000, 1);
    let practices = region.practices();
    assert_eq!(practices.len(), 200);
    assert_eq!(
        practices.iter().map(|p| p.list_size).sum::<u64>(),
        2_000_000
    );
    assert_eq!(region.total_patients(), 2_000_000);
    let codes: HashSet<_> = practices.iter().map(|p| p.ods.clone()).collect();
    assert_eq!(codes.len(), 200);
    assert_eq!(practices[0].ods.as_str(), "G85001");
    let names: HashSet<_> = practices.iter().map(|p| p.name.clone()).collect();
    assert_eq!(names.len(), 200, "names are unique");
    let min = practices.iter().map(|p| p.list_size).min().unwrap();
    let max = practices.iter().map(|p| p.list_size).max().unwrap();
    assert!(
        min >= 1_500 && max <= 40_000 && max > 3 * min,
        "{min}..{max}"
    );
    let without_dsa = practices.iter().filter(|p| p.dsa_signed.is_none()).count();
    assert!((4..=16).contains(&without_dsa), "{without_dsa}");
    let districts = all_districts();
    for practice in &practices {
        let code = practice.ods.as_str();
        assert!(code.len() == 6 && code[1..].chars().all(|c| c.is_ascii_digit()));
        assert_eq!(
            practice.notice_email,
            format!("practice-{}@nhs.invalid", code.to_lowercase())
        );
        assert_eq!(practice.connection, GpConnection::Simulated);
        let own = region.districts(&practice.ods);
        assert!(!own.is_empty() && own.iter().all(|d| districts.contains(d.as_str())));
        assert!(region.borough(&practice.ods).is_some());
    }
    let boroughs: HashSet<_> = practices
        .iter()
        .filter_map(|p| region.borough(&p.ods))
        .collect();
    assert_eq!(boroughs.len(), 6);
}

#[test]
fn small_regions_still_add_up() {
    for (practices, patients) in [(1, 0), (1, 7), (3, 2), (10, 10_001), (37, 123_457)] {
        let region = estate(practices, patients, 3);
        let sizes: Vec<u64> = region.practices().iter().map(|p| p.list_size).collect();
        assert_eq!(sizes.iter().sum::<u64>(), patients);
        assert_eq!(region.all_patients().count() as u64, patients);
        let without_dsa = region
            .practices()
            .iter()
            .filter(|p| p.dsa_signed.is_none())
            .count();
        assert_eq!(without_dsa >= 1, practices >= 10);
    }
    let empty = estate(0, 0, 1);
    assert!(empty.practices().is_empty());
    assert_eq!(empty.all_patients().count(), 0);
}

/// Ground truth over ~20k rows: the defects come in the intended
/// proportions.
#[test]
fn defects_come_in_realistic_proportions() {
    let region = estate(20, 20_000, 42);
    let districts = all_districts();
    let rows = 20_000.0;
    let (mut invalid_nhs, mut no_mobile, mut bad_mobile, mut no_tel, mut sms_pref) =
        (0, 0, 0, 0, 0);
    let (mut letter_pref, mut not_recorded, mut deceased, mut no_birth, mut children) =
        (0, 0, 0, 0, 0);
    let (mut international, mut spaced) = (0, 0);
    let mut by_number: HashMap<String, (GpPatient, HashSet<OdsCode>)> = HashMap::new();
    let mut exact_duplicates = 0;
    let mut sharing = 0usize;
    let mut in_own_districts = 0;
    for practice in region.practices() {
        let own_districts = region.districts(&practice.ods);
        let mut mobiles: HashMap<String, usize> = HashMap::new();
        for patient in region.patients(&practice.ods) {
            let number = patient.nhs_number.expose();
            match NhsNumber::parse(number) {
                Ok(_) => {
                    let entry = by_number
                        .entry(number.clone())
                        .or_insert_with(|| (patient.clone(), HashSet::new()));
                    assert_eq!(entry.0, patient, "one NHS number, one person");
                    if !entry.1.insert(practice.ods.clone()) {
                        exact_duplicates += 1;
                    }
                }
                Err(_) => invalid_nhs += 1,
            }
            let postcode = Postcode::parse(patient.postcode.expose()).expect("valid postcode");
            assert!(districts.contains(postcode.district()));
            if own_districts.iter().any(|d| d == postcode.district()) {
                in_own_districts += 1;
            }
            let lines = patient.address_lines.expose().len();
            assert!((1..=3).contains(&lines));
            match patient.mobile.expose() {
                None => no_mobile += 1,
                Some(raw) => match UkMobile::parse(raw) {
                    Ok(mobile) => {
                        if !mobile.is_drama_range() {
                            *mobiles.entry(mobile.e164().to_string()).or_default() += 1;
                        }
                        international += usize::from(raw.starts_with("+44"));
                        spaced += usize::from(raw.contains(' '));
                    }
                    Err(_) => bad_mobile += 1,
                },
            }
            match patient.contact_preference {
                ContactPreference::NoTelephoneContact => no_tel += 1,
                ContactPreference::Sms => sms_pref += 1,
                ContactPreference::Letter => letter_pref += 1,
                ContactPreference::NotRecorded => not_recorded += 1,
            }
            deceased += usize::from(patient.deceased);
            match patient.birth_date.expose() {
                None => no_birth += 1,
                Some(born) => {
                    assert!(*born <= today());
                    let age = hub_core::domain::age_on(*born, today());
                    assert!(age <= 101);
                    children += usize::from(age < 18);
                }
            }
        }
        sharing += mobiles.values().filter(|n| **n > 1).sum::<usize>();
    }
    let share = |n: usize| n as f64 / rows;
    assert!(
        (0.001..0.006).contains(&share(invalid_nhs)),
        "{invalid_nhs}"
    );
    assert!((0.08..0.12).contains(&share(no_mobile)), "{no_mobile}");
    assert!((0.005..0.016).contains(&share(bad_mobile)), "{bad_mobile}");
    assert!((0.02..0.04).contains(&share(no_tel)), "{no_tel}");
    assert!((0.12..0.18).contains(&share(sms_pref)), "{sms_pref}");
    assert!((0.01..0.03).contains(&share(letter_pref)), "{letter_pref}");
    assert!(share(not_recorded) > 0.7);
    assert!((0.002..0.009).contains(&share(deceased)), "{deceased}");
    assert!((0.0005..0.0045).contains(&share(no_birth)), "{no_birth}");
    assert!((0.15..0.30).contains(&share(children)), "{children}");
    assert!(share(international) > 0.2 && share(spaced) > 0.3);
    assert!(share(in_own_districts) > 0.97, "{in_own_districts}");
    let dual = by_number.values().filter(|(_, p)| p.len() > 1).count();
    assert!((0.0025..0.008).contains(&share(dual)), "{dual}");
    assert_eq!(dual, region.dual_registrations());
    assert!((1..60).contains(&exact_duplicates), "{exact_duplicates}");
    // Households (duplicate rows add a little).
    assert!((0.03..0.09).contains(&share(sharing)), "{sharing}");
}

#[test]
fn invalid_mobiles_really_are_invalid() {
    let region = estate(5, 20_000, 9);
    let mut invalid = 0;
    for patient in region.all_patients() {
        if let Some(raw) = patient.mobile.expose() {
            if UkMobile::parse(raw).is_err() {
                invalid += 1;
                assert!(!raw.is_empty());
            }
        }
    }
    assert!(invalid > 100);
}

#[test]
fn a_large_practice_streams_without_holding_its_list() {
    let region = estate(1, 100_000, 5);
    let ods = region.practices()[0].ods.clone();
    let rows = region.patients(&ods);
    assert_eq!(rows.len(), 100_000);
    // Consumed one row at a time; nothing is collected.
    let valid = rows
        .filter(|p| NhsNumber::parse(p.nhs_number.expose()).is_ok())
        .count();
    assert!(valid > 99_000);
    assert_eq!(region.dual_registrations(), 0, "one practice: nowhere else");
}

#[tokio::test]
async fn extract_streams_the_list_and_yields_to_the_runtime() {
    let region = estate(3, 6_000, 11);
    let practice = region.practices()[1].clone();
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (ticks, stop) = (ticks.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let stream = region.extract(&practice).await.expect("extract");
    let rows: Vec<GpPatient> = stream.map(|r| r.expect("record")).collect().await;
    stop.store(true, Ordering::Relaxed);
    ticker.await.expect("ticker");
    assert_eq!(rows.len() as u64, practice.list_size);
    assert!(rows.iter().cloned().eq(region.patients(&practice.ods)));
    assert!(ticks.load(Ordering::Relaxed) >= (practice.list_size / 500).saturating_sub(1));
    assert_eq!(region.extract_calls(&practice.ods), 1);
}

#[tokio::test]
async fn outages_are_injected_per_practice() {
    let region = estate(3, 3_000, 11);
    let practices = region.practices();
    let (down, up) = (&practices[0], &practices[1]);
    region.set_down(&down.ods, Some(2));
    for _ in 0..2 {
        assert!(matches!(
            region.extract(down).await,
            Err(GpError::Unavailable(_))
        ));
    }
    assert!(region.extract(down).await.is_ok());
    assert!(region.extract(up).await.is_ok());
    region.set_down(&down.ods, None);
    for _ in 0..5 {
        assert!(region.extract(down).await.is_err());
    }
    region.clear_down(&down.ods);
    assert!(region.extract(down).await.is_ok());
    assert_eq!(region.extract_calls(&down.ods), 9);
    assert_eq!(region.extract_calls(&up.ods), 1);

    let mut stranger = down.clone();
    stranger.ods = OdsCode::parse("Y99999").unwrap();
    assert!(matches!(
        region.extract(&stranger).await,
        Err(GpError::Misconfigured(_))
    ));
}

fn entry(nhs: &str, reference: &str) -> WritebackEntry {
    WritebackEntry {
        nhs_number: NhsNumber::parse(nhs).unwrap(),
        reference: reference.to_string(),
        sent_at: Utc::now(),
        message: Personal::new("Please book your vaccination".to_string()),
        medium: hub_core::ports::Medium::Sms,
    }
}

#[tokio::test]
async fn write_back_records_once_and_rejects_strangers() {
    let region = estate(4, 8_000, 13);
    let practices = region.practices();
    let (home, other) = (&practices[0], &practices[1]);
    let valid: Vec<String> = region
        .patients(&home.ods)
        .map(|p| p.nhs_number.into_inner())
        .filter(|n| NhsNumber::parse(n).is_ok())
        .take(3)
        .collect();
    let foreign = region
        .patients(&other.ods)
        .map(|p| p.nhs_number.into_inner())
        .find(|n| NhsNumber::parse(n).is_ok_and(|nhs| !region.has_patient(&home.ods, &nhs)))
        .unwrap();
    let entries = vec![
        entry(&valid[0], "c.G85001-0000.0"),
        entry(&valid[1], "c.G85001-0000.1"),
        entry(&foreign, "c.G85001-0000.2"),
        entry(&valid[2], "c.G85001-0000.0"),
    ];
    let results = region.write_back(home, &entries).await.unwrap();
    assert_eq!(
        results,
        vec![
            WritebackResult::Recorded,
            WritebackResult::Recorded,
            WritebackResult::Rejected,
            WritebackResult::Recorded,
        ]
    );
    assert_eq!(region.writebacks(&home.ods), 2);
    assert_eq!(region.writeback_repeats(), 1);
    // Redelivered: recognised, not recorded again.
    let again = region.write_back(home, &entries[..2]).await.unwrap();
    assert_eq!(again, vec![WritebackResult::Recorded; 2]);
    assert_eq!(region.writebacks(&home.ods), 2);
    assert_eq!(region.writebacks(&other.ods), 0);
    assert!(region.has_writeback("c.G85001-0000.0"));
    assert!(region.has_writeback("c.G85001-0000.1"));
    assert!(!region.has_writeback("c.G85001-0000.2"));
    // A number that was never issued.
    let unknown = nhs_number_for(MAX_PATIENTS - 1);
    let result = region
        .write_back(home, &[entry(&unknown, "x")])
        .await
        .unwrap();
    assert_eq!(result, vec![WritebackResult::Rejected]);

    region.set_writeback_failures(&home.ods, 1);
    assert!(matches!(
        region.write_back(home, &entries[..1]).await,
        Err(GpError::Unavailable(_))
    ));
    assert!(region.write_back(home, &entries[..1]).await.is_ok());
}

#[tokio::test]
async fn dual_registrations_are_known_to_both_practices() {
    let region = estate(6, 30_000, 17);
    let mut homes: HashMap<String, OdsCode> = HashMap::new();
    let mut pair = None;
    for practice in region.practices() {
        for patient in region.patients(&practice.ods) {
            let number = patient.nhs_number.into_inner();
            if NhsNumber::parse(&number).is_err() {
                continue;
            }
            match homes.get(&number) {
                Some(first) if *first != practice.ods => {
                    pair = Some((number, first.clone(), practice.ods.clone()));
                }
                _ => {
                    homes.insert(number, practice.ods.clone());
                }
            }
        }
    }
    let (number, first, second) = pair.expect("a dual registration");
    let nhs = NhsNumber::parse(&number).unwrap();
    assert!(region.has_patient(&first, &nhs));
    assert!(region.has_patient(&second, &nhs));
    let practice = region.practice(&second).unwrap();
    let result = region
        .write_back(&practice, &[entry(&number, "dual")])
        .await
        .unwrap();
    assert_eq!(result, vec![WritebackResult::Recorded]);
}

/// GIVEN a message exactly at Notify's 918-character cap in its worst case,
/// WHEN it is rendered with the longest given name, family name and
/// practice name the simulated estate holds (and with names doubled past
/// the planned maxima) THEN no text passes 918 characters.
#[test]
fn the_longest_names_in_the_estate_never_push_a_text_past_918_characters() {
    use hub_core::domain::{MessageTemplate, Personalisation, TemplateRules};
    let region = estate(200, 40_000, 2026);
    let longest = |names: &[&str]| {
        names
            .iter()
            .max_by_key(|n| n.chars().count())
            .unwrap()
            .to_string()
    };
    let given = longest(GIVEN_NAMES);
    let family = longest(FAMILY_NAMES);
    let practice = region
        .practices()
        .into_iter()
        .map(|p| p.name)
        .max_by_key(|n| n.chars().count())
        .unwrap();
    let filler = "a".repeat(918 - 35 - 35 - 100 - 1);
    let template = MessageTemplate::parse(
        &format!("{filler}((first_name)) ((last_name))((practice_name)) "),
        &TemplateRules::default(),
    );
    // One character over with the space: the cap is enforced at parse time.
    assert!(template.is_err());
    let template = MessageTemplate::parse(
        &format!("{filler}((first_name)) ((last_name))((practice_name))"),
        &TemplateRules::default(),
    )
    .unwrap();
    for (first, last, practice_name) in [
        (given.clone(), family.clone(), practice.clone()),
        (
            format!("{given} {given} {given}"),
            format!("{family}-{family}-{family}"),
            format!("{practice} {practice} {practice}"),
        ),
    ] {
        let text = template.render(&Personalisation {
            first_name: &first,
            last_name: &last,
            practice_name: &practice_name,
        });
        assert!(text.chars().count() <= 918, "{}", text.chars().count());
    }
}
