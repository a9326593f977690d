//! The FHIR adapter against Patients shaped as UK Core servers write them
//! (written here by hand, not by the simulator's generator): the practice
//! as an ODS identifier, `null` items with data-absent reasons, mobiles
//! under other uses, inactive records, partial birth dates; the two forms
//! of the practice search; `_elements`; `Retry-After` on busy pages; links
//! written by a server behind a proxy.

use chrono::NaiveDate;
use futures::StreamExt;
use hub_adapters::fhir::{FhirConfig, FhirGpConnector, NHS_NUMBER_SYSTEM, ODS_SYSTEM};
use hub_core::domain::{DatePrecision, GpPatient, OdsCode};
use hub_core::ports::{GpConnection, GpConnector, GpError, PatientSearch, Practice};
use hub_sim::http::{start_fhir, FhirServer, FhirServerConfig};
use hub_sim::{GpEstate, RegionSpec};
use serde_json::{json, Value};
use std::time::Duration;

fn estate(patients: u64, seed: u64) -> GpEstate {
    GpEstate::generate(RegionSpec {
        practices: 1,
        patients,
        seed,
    })
}

async fn server(estate: GpEstate, config: FhirServerConfig) -> FhirServer {
    start_fhir(estate, config).await.expect("FHIR simulator").1
}

fn connector(page_size: u32) -> FhirGpConnector {
    FhirGpConnector::new(FhirConfig {
        page_size,
        min_poll: Duration::from_millis(10),
        ..FhirConfig::default()
    })
    .unwrap()
}

async fn read(connector: &FhirGpConnector, practice: &Practice) -> Result<Vec<GpPatient>, GpError> {
    let mut stream = connector.extract(practice).await?;
    let mut patients = Vec::new();
    while let Some(item) = stream.next().await {
        patients.push(item?);
    }
    Ok(patients)
}

fn with_search(mut practice: Practice, form: PatientSearch) -> Practice {
    if let GpConnection::Fhir { patient_search, .. } = &mut practice.connection {
        *patient_search = form;
    }
    practice
}

fn absent() -> Value {
    json!({ "extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode": "unknown"
    }]})
}

/// A UK Core Patient as a GP system or PDS writes it.
fn uk_core(nhs: &str, ods: &OdsCode, more: Value) -> Value {
    let mut patient = json!({
        "resourceType": "Patient",
        "id": format!("uk-core-{nhs}"),
        "meta": { "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"] },
        "identifier": [{ "system": NHS_NUMBER_SYSTEM, "value": nhs }],
        "name": [{ "use": "official", "family": "Okonkwo", "given": ["Ada"] }],
        "birthDate": "1970-04-01",
        "address": [{ "use": "home", "line": ["1 High Street"], "postalCode": "SE13 6LH" }],
        "telecom": [{ "system": "phone", "use": "mobile", "value": "07700 900100" }],
        "contact": [{ "relationship": [{ "text": "next of kin" }],
                      "telecom": [{ "system": "phone", "value": "07700 900999" }] }],
        "generalPractitioner": [{ "identifier": { "system": ODS_SYSTEM, "value": ods.as_str() } }]
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut patient, more) {
        base.extend(more);
    }
    patient
}

#[tokio::test]
async fn the_identifier_form_finds_a_uk_core_practice_and_the_reference_form_finds_nobody() {
    let estate = estate(400, 41);
    let ods = estate.practices()[0].ods.clone();
    let server = server(estate.clone(), FhirServerConfig::default()).await;
    let practice = server.practice(&ods, false, None).unwrap();
    let connector = connector(150);

    // GIVEN Patients carrying their practice as an ODS identifier (UK Core)
    // WHEN searched by identifier THEN every one is read, as the GP holds it
    let identifier = with_search(practice.clone(), PatientSearch::Identifier);
    let patients = read(&connector, &identifier).await.unwrap();
    assert_eq!(patients.len(), 400);
    assert!(patients.into_iter().eq(estate.patients(&ods)));

    // WHEN searched by reference THEN the server finds nobody: the silent
    // zero the registry's choice of form exists to avoid
    let reference = with_search(practice, PatientSearch::Reference);
    assert_eq!(read(&connector, &reference).await.unwrap().len(), 0);

    // GIVEN a server whose Patients carry a reference THEN the reverse
    let by_reference = server_with(estate.clone(), PatientSearch::Reference).await;
    let practice = by_reference.practice(&ods, false, None).unwrap();
    let found = read(
        &connector,
        &with_search(practice.clone(), PatientSearch::Reference),
    )
    .await
    .unwrap();
    assert!(found.into_iter().eq(estate.patients(&ods)));
    let missed = read(
        &connector,
        &with_search(practice, PatientSearch::Identifier),
    )
    .await
    .unwrap();
    assert!(missed.is_empty());
}

async fn server_with(estate: GpEstate, form: PatientSearch) -> FhirServer {
    server(
        estate,
        FhirServerConfig {
            general_practitioner: form,
            ..FhirServerConfig::default()
        },
    )
    .await
}

#[tokio::test]
async fn uk_core_patients_are_read_as_servers_write_them() {
    let estate = estate(50, 42);
    let ods = estate.practices()[0].ods.clone();
    let server = server(estate.clone(), FhirServerConfig::default()).await;
    server.add_resources(
        &ods,
        vec![
            // no given name: `[null]` with its reason
            uk_core(
                "9434765919",
                &ods,
                json!({ "name": [{ "use": "official", "family": "Okonkwo",
                                   "given": [null], "_given": [absent()] }] }),
            ),
            // a null address line, and the mobile under use=home
            uk_core(
                "9434765870",
                &ods,
                json!({
                    "address": [{ "use": "home", "line": ["Flat 3", null, "2 Low Road"],
                                  "_line": [null, absent(), null], "postalCode": "SE6 4RU" }],
                    "telecom": [{ "system": "phone", "use": "home", "value": "07700 900101" }]
                }),
            ),
            // a rank-1 pager, a rank-2 mobile with no use
            uk_core(
                "9434765846",
                &ods,
                json!({ "telecom": [
                    { "system": "pager", "value": "07700 900198", "rank": 1 },
                    { "system": "phone", "value": "07700 900102", "rank": 2 }
                ]}),
            ),
            // an inactive record with a year-only birth date
            uk_core(
                "9434765838",
                &ods,
                json!({ "active": false, "birthDate": "1958",
                        "telecom": [{ "system": "sms", "value": "+447700900103" }] }),
            ),
        ],
    );
    let practice = server.practice(&ods, false, None).unwrap();
    for bulk in [false, true] {
        let mut practice = practice.clone();
        if let GpConnection::Fhir { bulk_export, .. } = &mut practice.connection {
            *bulk_export = bulk;
        }
        // WHEN the list is read (search and export)
        let patients = read(&connector(20), &practice).await.unwrap();
        // THEN no record is dropped
        assert_eq!(patients.len(), 54, "bulk {bulk}");
        let ours = &patients[50..];
        assert_eq!(ours[0].nhs_number.expose(), "9434765919");
        assert_eq!(ours[0].given_name.expose(), "");
        assert_eq!(ours[0].family_name.expose(), "Okonkwo");
        assert_eq!(
            ours[1].address_lines.expose(),
            &vec!["Flat 3".to_string(), "2 Low Road".into()]
        );
        assert_eq!(ours[1].mobile.expose().as_deref(), Some("07700 900101"));
        assert_eq!(ours[2].mobile.expose().as_deref(), Some("07700 900102"));
        assert!(ours[..3].iter().all(|p| p.active));
        assert!(!ours[3].active);
        assert_eq!(
            *ours[3].birth_date.expose(),
            NaiveDate::from_ymd_opt(1958, 1, 1)
        );
        assert_eq!(ours[3].birth_date_precision, DatePrecision::Year);
        assert_eq!(ours[3].mobile.expose().as_deref(), Some("+447700900103"));
        // The next of kin's number is never taken for the patient's.
        assert!(patients
            .iter()
            .all(|p| p.mobile.expose().as_deref() != Some("07700 900999")));
    }
}

#[tokio::test]
async fn the_search_asks_only_for_the_elements_the_hub_reads() {
    let estate = estate(30, 43);
    let ods = estate.practices()[0].ods.clone();
    let server = server(estate.clone(), FhirServerConfig::default()).await;
    server.add_resources(&ods, vec![uk_core("9434765919", &ods, json!({}))]);
    let practice = server.practice(&ods, false, None).unwrap();
    // The server honours `_elements`: what the hub reads must survive it.
    let patients = read(&connector(500), &practice).await.unwrap();
    assert!(patients[..30].iter().cloned().eq(estate.patients(&ods)));
    assert_eq!(
        patients[30].mobile.expose().as_deref(),
        Some("07700 900100")
    );
    let query = hub_adapters::fhir::PATIENT_ELEMENTS;
    assert!(!query.split(',').any(|e| e == "contact"), "no next of kin");
}

#[tokio::test]
async fn a_busy_page_is_asked_for_again_without_restarting_the_practice() {
    let estate = estate(600, 44);
    let ods = estate.practices()[0].ods.clone();
    let server = server(
        estate.clone(),
        FhirServerConfig {
            polls_before_ready: 0,
            rows_per_file: 250,
            ..FhirServerConfig::default()
        },
    )
    .await;
    let search = server.practice(&ods, false, None).unwrap();
    // GIVEN the next three pages after the first answered 503, 429, 503
    server.answer_busy(3);
    // WHEN the practice is read THEN every patient is read once
    let patients = read(&connector(100), &search).await.unwrap();
    assert!(patients.into_iter().eq(estate.patients(&ods)));
    assert_eq!(server.busy_answers(), 3);
    assert_eq!(server.first_pages(), 1, "the practice was not restarted");
    // The same for an export: the kick-off and a file were busy.
    let export = server.practice(&ods, true, None).unwrap();
    server.answer_busy(2);
    let patients = read(&connector(100), &export).await.unwrap();
    assert!(patients.into_iter().eq(estate.patients(&ods)));
    assert_eq!(server.busy_answers(), 5);
    // A server that stays busy fails the attempt (to be retried later).
    server.answer_busy(100);
    let error = read(&connector(100), &search).await.unwrap_err();
    assert!(matches!(error, GpError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("503") || error.to_string().contains("429"));
}

#[tokio::test]
async fn links_written_behind_a_proxy_are_followed_with_a_configured_link_base() {
    let estate = estate(300, 45);
    let ods = estate.practices()[0].ods.clone();
    let internal = "http://fhir-internal.invalid:8080/fhir";
    let server = server(
        estate.clone(),
        FhirServerConfig {
            polls_before_ready: 1,
            retry_after_secs: 0,
            link_base: Some(internal.into()),
            ..FhirServerConfig::default()
        },
    )
    .await;
    for bulk in [false, true] {
        let practice = server.practice(&ods, bulk, None).unwrap();
        // WHEN the connection does not know the server's own idea of its
        // address THEN the links are refused, loudly
        let refused = read(&connector(100), &practice).await.unwrap_err();
        assert!(matches!(refused, GpError::Misconfigured(_)), "{refused}");
        assert!(refused.to_string().contains("link_base"), "{refused}");
        // WHEN it does THEN they are read against the base we call
        let mut proxied = practice;
        if let GpConnection::Fhir { link_base, .. } = &mut proxied.connection {
            // The server's own idea of this practice's base.
            *link_base = Some(format!("{internal}/{ods}"));
        }
        let patients = read(&connector(100), &proxied).await.unwrap();
        assert!(
            patients.into_iter().eq(estate.patients(&ods)),
            "bulk {bulk}"
        );
    }
}
