//! Whole campaigns on the embedded stack over UK Core–shaped Patients
//! served by the FHIR simulator: a patient registered at two practices has
//! two records and the most careful one wins, whichever practice is
//! extracted first; names are rendered with fallbacks and in NFC, letters
//! are personalised, addressed by name and written back like texts.

use hub_adapters::fhir::{
    CONTACT_PREFERENCE_URL, NHS_NUMBER_SYSTEM, ODS_SYSTEM, PREFERRED_CONTACT_METHOD_SYSTEM,
};
use hub_core::domain::{
    check_digit, CampaignState, ExclusionReason, OdsCode, ParticipationState, UkMobile,
};
use hub_core::handlers::api::{self, ApiError, ExtractionDecisionRequest};
use hub_core::ports::{GpConnection, PatientSearch};
use hub_local::demo::wait_until;
use hub_local::LocalStack;
use hub_tests::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A valid NHS number outside the simulated estate's (which start with 9).
fn nhs(n: u32) -> String {
    (n * 10..)
        .find_map(|candidate| {
            let digits: Vec<u32> = format!("40{candidate:07}")
                .chars()
                .map(|c| c.to_digit(10).unwrap())
                .collect();
            check_digit(&digits).map(|check| format!("40{candidate:07}{check}"))
        })
        .unwrap()
}

fn mobile(n: u32) -> String {
    format!("07911 55{n:04}")
}

fn preference(code: &str) -> Value {
    json!([{
        "url": CONTACT_PREFERENCE_URL,
        "extension": [{ "url": "PreferredContactMethod", "valueCodeableConcept": {
            "coding": [{ "system": PREFERRED_CONTACT_METHOD_SYSTEM, "code": code }] } }]
    }])
}

/// A UK Core Patient; `more` adds or replaces elements.
fn patient(nhs: &str, ods: &OdsCode, postcode: &str, more: Value) -> Value {
    let mut patient = json!({
        "resourceType": "Patient",
        "id": format!("{ods}-{nhs}"),
        "identifier": [{ "system": NHS_NUMBER_SYSTEM, "value": nhs }],
        "name": [{ "use": "official", "family": "Adeyemi", "given": ["Tunde"] }],
        "birthDate": "1960-07-14",
        "address": [{ "use": "home", "line": ["7 Careful Road"], "postalCode": postcode }],
        "generalPractitioner": [{ "identifier": { "system": ODS_SYSTEM, "value": ods.as_str() } }]
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut patient, more) {
        base.extend(more);
    }
    patient
}

fn phone(number: &str) -> Value {
    json!([{ "system": "phone", "use": "mobile", "value": number }])
}

struct Fixture {
    stack: Arc<LocalStack>,
    a: OdsCode,
    b: OdsCode,
}

async fn two_practices(seed: u64) -> Fixture {
    let stack = LocalStack::start(config(2, 300, seed))
        .await
        .expect("stack");
    let practices = stack.estate.practices();
    let (a, b) = (practices[0].ods.clone(), practices[1].ods.clone());
    Fixture { stack, a, b }
}

impl Fixture {
    /// A campaign approved and past its deadline, once practice B is held
    /// as `extraction_suspect`.
    async fn held(&self) -> hub_core::domain::CampaignId {
        let id = create_and_approve(&self.stack, &request("Heat alert: see www.nhs.uk")).await;
        fire_deadline_now(&self.stack, &id).await;
        let hub = &self.stack.hub;
        wait_until(Duration::from_secs(30), || async {
            let held = hub.store.get_participation(&id, &self.b).await?;
            Ok(held.is_some_and(|p| p.state == ParticipationState::ExtractionSuspect))
        })
        .await
        .expect("practice B held as extraction_suspect");
        id
    }

    fn serve(&self, ods: &OdsCode, resources: Vec<Value>) {
        let http = self.stack.http.as_ref().expect("HTTP stack");
        http.fhir.add_resources(ods, resources);
    }

    fn texts_to(&self, number: &str) -> usize {
        let mobile = UkMobile::parse(number).unwrap();
        self.stack.gateways.iter().map(|g| g.sent_to(&mobile)).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_registrations_the_most_careful_record_wins() {
    let f = two_practices(61).await;
    let (a, b) = (&f.a, &f.b);
    // Letters are watched by postcode, one per patient.
    for postcode in ["SE6 1AA", "SE6 1AB", "SE6 1AC", "SE6 1AD", "SE6 1AE"] {
        f.stack.postal.watch_postcode(postcode);
    }
    // GIVEN patients registered at both practices with conflicting records
    let (dead, opted_out, letter_or_text, sms_wins, single) =
        (nhs(1), nhs(2), nhs(3), nhs(4), nhs(5));
    f.serve(
        a,
        vec![
            // alive with a mobile here, deceased there
            patient(&dead, a, "SE6 1AA", json!({ "telecom": phone(&mobile(1)) })),
            // texts allowed here, "no telephone contact" there
            patient(
                &opted_out,
                a,
                "SE6 1AB",
                json!({ "telecom": phone(&mobile(2)) }),
            ),
            // no mobile here (a letter), a usable mobile there
            patient(&letter_or_text, a, "SE6 1AC", json!({})),
            // letters preferred here, with a mobile; SMS preferred there
            patient(
                &sms_wins,
                a,
                "SE6 1AD",
                json!({ "telecom": phone(&mobile(4)), "extension": preference("1") }),
            ),
            // one registration, no conflict: texted
            patient(
                &single,
                a,
                "SE6 1AE",
                json!({ "telecom": phone(&mobile(5)) }),
            ),
        ],
    );
    f.serve(
        b,
        vec![
            patient(
                &dead,
                b,
                "SE6 1AA",
                json!({ "deceasedDateTime": "2026-01-02T10:00:00Z", "telecom": phone(&mobile(11)) }),
            ),
            patient(
                &opted_out,
                b,
                "SE6 1AB",
                json!({ "telecom": phone(&mobile(12)), "extension": preference("8") }),
            ),
            patient(&letter_or_text, b, "SE6 1AC", json!({ "telecom": phone(&mobile(13)) })),
            patient(
                &sms_wins,
                b,
                "SE6 1AD",
                json!({ "telecom": phone(&mobile(14)), "extension": preference("9") }),
            ),
        ],
    );

    // WHEN a campaign with postal fallback runs to the end
    let id = create_and_approve(&f.stack, &request("Heat alert: see www.nhs.uk")).await;
    fire_deadline_now(&f.stack, &id).await;
    let report = completed_and_sound(&f.stack, &id, Duration::from_secs(60)).await;

    // THEN deceased anywhere: nobody contacted, by text or letter
    assert_eq!(f.texts_to(&mobile(1)) + f.texts_to(&mobile(11)), 0);
    assert!(f.stack.postal.letters_to("SE6 1AA").is_empty());
    // "no telephone contact" anywhere: no text
    assert_eq!(f.texts_to(&mobile(2)) + f.texts_to(&mobile(12)), 0);
    // a usable mobile on another record: texted, and no letter
    assert_eq!(f.texts_to(&mobile(13)), 1);
    assert!(f.stack.postal.letters_to("SE6 1AC").is_empty());
    // SMS preferred on one record beats letters preferred on the other
    assert_eq!(f.texts_to(&mobile(4)) + f.texts_to(&mobile(14)), 1);
    assert!(f.stack.postal.letters_to("SE6 1AD").is_empty());
    // and the plain case still works
    assert_eq!(f.texts_to(&mobile(5)), 1);

    // The withheld recipients are counted for what stopped them.
    let excluded = &report.totals.excluded;
    assert!(
        excluded
            .get(&ExclusionReason::Deceased)
            .copied()
            .unwrap_or(0)
            >= 2
    );
    assert!(
        excluded
            .get(&ExclusionReason::SmsOptOut)
            .copied()
            .unwrap_or(0)
            >= 2
    );
    assert_purged(&f.stack, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_fall_back_are_normalised_and_letters_are_personalised_and_written_back() {
    let f = two_practices(62).await;
    let a = &f.a;
    let nameless = UkMobile::parse(&mobile(21)).unwrap();
    let decomposed = UkMobile::parse(&mobile(22)).unwrap();
    for gateway in &f.stack.gateways {
        gateway.watch_mobile(&nameless);
        gateway.watch_mobile(&decomposed);
    }
    f.stack.postal.watch_postcode("SE6 2BB");
    let (no_name, nfd, by_letter) = (nhs(21), nhs(22), nhs(23));
    f.serve(
        a,
        vec![
            // no given name: `[null]` with a data-absent reason
            patient(
                &no_name,
                a,
                "SE6 2AA",
                json!({
                    "name": [{ "use": "official", "family": "Adeyemi", "given": [null],
                               "_given": [{ "extension": [{
                                   "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                   "valueCode": "unknown" }] }] }],
                    "telecom": phone(&mobile(21))
                }),
            ),
            // a name stored decomposed (NFD)
            patient(
                &nfd,
                a,
                "SE6 2AC",
                json!({
                    "name": [{ "use": "official", "family": "Jose\u{301}", "given": ["Rene\u{301}e"] }],
                    "telecom": phone(&mobile(22))
                }),
            ),
            // no mobile: a letter
            patient(
                &by_letter,
                a,
                "SE6 2BB",
                json!({ "name": [{ "use": "official", "family": "Okafor", "given": ["Chidi"] }] }),
            ),
        ],
    );

    let message =
        "NHS South East London: ((first_name|there)), a heat alert applies. See www.nhs.uk";
    let id = create_and_approve(&f.stack, &request(message)).await;
    fire_deadline_now(&f.stack, &id).await;
    let report = completed_and_sound(&f.stack, &id, Duration::from_secs(60)).await;

    let texts = |mobile: &UkMobile| -> Vec<String> {
        f.stack
            .gateways
            .iter()
            .flat_map(|g| g.texts_to(mobile))
            .collect()
    };
    // THEN the patient with no given name is texted with the fallback
    assert_eq!(
        texts(&nameless),
        vec!["NHS South East London: there, a heat alert applies. See www.nhs.uk".to_string()]
    );
    // AND the decomposed name reaches the patient composed (NFC)
    assert_eq!(
        texts(&decomposed),
        vec!["NHS South East London: Ren\u{e9}e, a heat alert applies. See www.nhs.uk".to_string()]
    );
    // AND the letter is addressed by name and personalised like the text
    let letters = f.stack.postal.letters_to("SE6 2BB");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, "Chidi Okafor");
    assert!(
        letters[0]
            .1
            .contains("NHS South East London: Chidi, a heat alert"),
        "{}",
        letters[0].1
    );
    // AND every text and letter is written back, the letter as mail
    assert_eq!(
        report.totals.written_back,
        report.totals.sent + report.totals.letters
    );
    let http = f.stack.http.as_ref().unwrap();
    let letter_record = http
        .fhir
        .communications()
        .into_iter()
        .find(|c| c["subject"]["identifier"]["value"] == by_letter.as_str())
        .expect("the letter is written back");
    assert_eq!(letter_record["medium"][0]["coding"][0]["code"], "MAILWRIT");
    assert!(letter_record["payload"][0]["contentString"]
        .as_str()
        .unwrap()
        .contains("Chidi"));
}

async fn search_form(stack: &LocalStack, ods: &OdsCode, form: PatientSearch) {
    let mut practice = stack.hub.store.get_practice(ods).await.unwrap().unwrap();
    let GpConnection::Fhir { patient_search, .. } = &mut practice.connection else {
        panic!("the HTTP stack reads practices over FHIR");
    };
    *patient_search = form;
    stack.hub.store.put_practice(&practice).await.unwrap();
}

fn decision(ods: &OdsCode, decision: &str) -> ExtractionDecisionRequest {
    ExtractionDecisionRequest {
        ods: ods.to_string(),
        decision: decision.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_practice_read_far_below_its_list_size_is_held_not_completed() {
    let f = two_practices(63).await;
    let hub = &f.stack.hub;
    // GIVEN practice B registered with the reference form of the search
    // while its server carries the practice as an identifier: it finds
    // nobody, as the independent UK Core server did
    search_form(&f.stack, &f.b, PatientSearch::Reference).await;

    // WHEN the deadline fires
    let id = f.held().await;

    // THEN B is held, shown, audited; nothing is sent and the campaign
    // does not complete while it waits
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = api::report(hub, &id).await.unwrap();
    assert_eq!(report.state, CampaignState::Extracting);
    assert_eq!(report.suspect_practices, vec![f.b.clone()]);
    let b = report.practices.iter().find(|p| p.ods == f.b).unwrap();
    assert_eq!(
        (b.records_read, b.state),
        (0, ParticipationState::ExtractionSuspect)
    );
    assert!(b.list_size > 100);
    assert_eq!(
        f.stack.texts_sent(),
        0,
        "nothing is sent while a practice is held"
    );
    let audit = hub.store.list_audit(&id).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "practice_extraction_suspect"));

    // Decisions are checked: a bad one names its field; a practice that is
    // not held cannot be decided on.
    let bad = api::decide_extraction(hub, &bob(), &id, &decision(&f.b, "ignore")).await;
    assert!(matches!(bad, Err(ApiError::Validation(ref e)) if e[0].field == "decision"));
    let not_held = api::decide_extraction(hub, &bob(), &id, &decision(&f.a, "proceed")).await;
    assert!(
        matches!(not_held, Err(ApiError::Conflict(_))),
        "{not_held:?}"
    );

    // WHEN staff fix the registry and decide to retry
    search_form(&f.stack, &f.b, PatientSearch::Identifier).await;
    let retried = api::decide_extraction(hub, &bob(), &id, &decision(&f.b, "retry"))
        .await
        .unwrap();
    // The api records the decision and who took it; the extract function
    // carries it out.
    let recorded = retried.decision.expect("the decision is recorded");
    assert_eq!(
        (recorded.decision.as_str(), &recorded.by),
        ("retry", &bob())
    );

    // THEN the practice is read in full and the campaign completes
    let report = completed_and_sound(&f.stack, &id, Duration::from_secs(60)).await;
    assert!(report.suspect_practices.is_empty());
    let b = report.practices.iter().find(|p| p.ods == f.b).unwrap();
    assert_eq!(b.state, ParticipationState::Extracted);
    assert!(b.sent > 0 && b.records_read >= b.list_size);
    let audit = hub.store.list_audit(&id).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "extraction_suspect_retry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_practice_is_excluded_or_proceeded_by_staff() {
    for choice in ["exclude", "proceed"] {
        let f = two_practices(64).await;
        let hub = &f.stack.hub;
        search_form(&f.stack, &f.b, PatientSearch::Reference).await;
        // One patient the wrong search still finds (a stray reference).
        f.serve(
            &f.b,
            vec![patient(
                &nhs(31),
                &f.b,
                "SE6 3AA",
                json!({ "telecom": phone(&mobile(31)),
                        "generalPractitioner": [{ "reference": format!("Organization/{}", f.b) }] }),
            )],
        );
        let id = f.held().await;
        api::decide_extraction(hub, &bob(), &id, &decision(&f.b, choice))
            .await
            .unwrap();
        // The same decision again is a replay (its job queued again and
        // carried out once); another decision on the same hold is refused.
        api::decide_extraction(hub, &bob(), &id, &decision(&f.b, choice))
            .await
            .expect("a replayed decision");
        let other = if choice == "exclude" {
            "proceed"
        } else {
            "exclude"
        };
        let refused = api::decide_extraction(hub, &bob(), &id, &decision(&f.b, other)).await;
        assert!(matches!(refused, Err(ApiError::Conflict(_))), "{refused:?}");
        let report = completed_and_sound(&f.stack, &id, Duration::from_secs(60)).await;
        let b = report.practices.iter().find(|p| p.ods == f.b).unwrap();
        match choice {
            "exclude" => {
                assert_eq!(b.state, ParticipationState::ExtractionFailed);
                assert_eq!((b.cohort, b.sent), (0, 0));
                assert_eq!(f.texts_to(&mobile(31)), 0);
                assert_eq!(report.failed_practices, vec![f.b.clone()]);
            }
            _ => {
                assert_eq!(b.state, ParticipationState::Extracted);
                assert_eq!((b.records_read, b.sent), (1, 1));
                assert_eq!(f.texts_to(&mobile(31)), 1);
            }
        }
        assert!(report.practices.iter().any(|p| p.ods == f.a && p.sent > 0));
        let audit = hub.store.list_audit(&id).await.unwrap();
        let carried_out: Vec<_> = audit
            .iter()
            .filter(|e| e.action == "extraction_decision_carried_out")
            .collect();
        assert_eq!(carried_out.len(), 1, "carried out once: {carried_out:?}");
        assert_eq!(carried_out[0].detail["decided_by"], bob().as_str());
        assert_purged(&f.stack, &id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decision_whose_job_was_lost_is_carried_out_by_the_watchdog() {
    use hub_core::domain::{ExtractionDecision, RecordedDecision};
    let f = two_practices(65).await;
    let hub = &f.stack.hub;
    search_form(&f.stack, &f.b, PatientSearch::Reference).await;
    let id = f.held().await;

    // GIVEN an exclusion recorded an hour ago whose extract job was lost
    // (the api's queue send failed after the record was written)
    let mut held = hub
        .store
        .get_participation(&id, &f.b)
        .await
        .unwrap()
        .unwrap();
    held.decision = Some(RecordedDecision {
        decision: ExtractionDecision::Exclude,
        by: bob(),
        at: chrono::Utc::now() - chrono::Duration::hours(1),
    });
    hub.store.update_participation(&held).await.unwrap();

    // THEN the watchdog queues it again, the extract function carries it
    // out, and the campaign completes without the practice
    let report = completed_and_sound(&f.stack, &id, Duration::from_secs(60)).await;
    let b = report.practices.iter().find(|p| p.ods == f.b).unwrap();
    assert_eq!(b.state, ParticipationState::ExtractionFailed);
    let audit = hub.store.list_audit(&id).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "watchdog_extraction_retried" && e.detail["ods"] == f.b.as_str()));
    assert!(audit
        .iter()
        .any(|e| e.action == "extraction_decision_carried_out"));
    assert_purged(&f.stack, &id).await;
}
