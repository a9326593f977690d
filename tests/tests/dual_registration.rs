//! A patient registered at two practices, on the embedded stack over FHIR:
//! whichever practice places the patient's key first texts them, and if
//! that practice then sends nothing (its extraction fails for good, or
//! staff exclude it) the other registration's record, kept on standby,
//! takes the key over and is texted instead. Exactly one text either way,
//! counted once, and nothing left after the purge.

use hub_adapters::fhir::{NHS_NUMBER_SYSTEM, ODS_SYSTEM};
use hub_core::domain::{
    check_digit, CampaignId, ChunkId, DedupeKey, ExclusionReason, NhsNumber, OdsCode,
    ParticipationState, RecipientStatus, UkMobile,
};
use hub_core::handlers::api::{self, ExtractionDecisionRequest};
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
            let digits: Vec<u32> = format!("41{candidate:07}")
                .chars()
                .map(|c| c.to_digit(10).unwrap())
                .collect();
            check_digit(&digits).map(|check| format!("41{candidate:07}{check}"))
        })
        .unwrap()
}

fn mobile(n: u32) -> String {
    format!("07911 66{n:04}")
}

/// A UK Core Patient with a mobile, registered at `ods` in the form the
/// practice's search asks for.
fn patient(nhs: &str, ods: &OdsCode, number: &str, search: PatientSearch) -> Value {
    let practice = match search {
        PatientSearch::Identifier => {
            json!({ "identifier": { "system": ODS_SYSTEM, "value": ods.as_str() } })
        }
        PatientSearch::Reference => json!({ "reference": format!("Organization/{ods}") }),
    };
    json!({
        "resourceType": "Patient",
        "id": format!("{ods}-{nhs}"),
        "identifier": [{ "system": NHS_NUMBER_SYSTEM, "value": nhs }],
        "name": [{ "use": "official", "family": "Mensah", "given": ["Ama"] }],
        "birthDate": "1958-03-02",
        "address": [{ "use": "home", "line": ["3 Second Street"], "postalCode": "SE6 4AA" }],
        "telecom": [{ "system": "phone", "use": "mobile", "value": number }],
        "generalPractitioner": [practice]
    })
}

/// Two practices with empty simulated lists: every record in the campaign
/// is one this test serves, so the counts are exactly its own.
struct Fixture {
    stack: Arc<LocalStack>,
    /// The registration whose practice ends without sending (or, in the
    /// plain case, the first one).
    a: OdsCode,
    /// The registration at a practice that is extracted and sends.
    b: OdsCode,
    patient: String,
}

impl Fixture {
    async fn start(seed: u64) -> Self {
        let mut config = config(2, 0, seed);
        // Room for a practice kept down until the other has been read.
        config.hub.max_extract_attempts = 6;
        config.max_receive_count = 8;
        let stack = LocalStack::start(config).await.expect("stack");
        let practices = stack.estate.practices();
        // The second practice is read by a paged search (the first by bulk
        // export, which ignores the search form A's hold relies on).
        let (a, b) = (practices[1].ods.clone(), practices[0].ods.clone());
        Self {
            stack,
            a,
            b,
            patient: nhs(1),
        }
    }

    /// Practice A is read with a search form that finds only the patient,
    /// far below its registered list: it is held for a staff decision.
    async fn hold_a(&self) {
        let hub = &self.stack.hub;
        let mut practice = hub.store.get_practice(&self.a).await.unwrap().unwrap();
        practice.list_size = 100;
        let GpConnection::Fhir { patient_search, .. } = &mut practice.connection else {
            panic!("the HTTP stack reads practices over FHIR");
        };
        *patient_search = PatientSearch::Reference;
        hub.store.put_practice(&practice).await.unwrap();
    }

    fn serve(&self, ods: &OdsCode, number: &str, search: PatientSearch) {
        let http = self.stack.http.as_ref().expect("HTTP stack");
        http.fhir
            .add_resources(ods, vec![patient(&self.patient, ods, number, search)]);
    }

    fn texts_to(&self, number: &str) -> usize {
        let mobile = UkMobile::parse(number).unwrap();
        self.stack.gateways.iter().map(|g| g.sent_to(&mobile)).sum()
    }

    async fn state(&self, id: &CampaignId, ods: &OdsCode) -> ParticipationState {
        let hub = &self.stack.hub;
        hub.store
            .get_participation(id, ods)
            .await
            .unwrap()
            .unwrap()
            .state
    }

    async fn wait_for(&self, id: &CampaignId, ods: &OdsCode, state: ParticipationState) {
        wait_until(Duration::from_secs(60), || async {
            Ok(self.state(id, ods).await == state)
        })
        .await
        .unwrap_or_else(|_| panic!("practice {ods} did not reach {}", state.as_str()));
    }

    /// Waits until `first` has been read (its key placed), then brings
    /// `second`'s GP system back, so it is read on a retry.
    async fn read_one_then_the_other(&self, id: &CampaignId, first: &OdsCode, second: &OdsCode) {
        wait_until(Duration::from_secs(60), || async {
            Ok(matches!(
                self.state(id, first).await,
                ParticipationState::Extracted | ParticipationState::ExtractionSuspect
            ))
        })
        .await
        .expect("the first practice read");
        assert_eq!(self.key_holder(id).await.as_ref(), Some(first));
        self.stack.estate.clear_down(second);
    }

    /// Which practice holds the patient's text key.
    async fn key_holder(&self, id: &CampaignId) -> Option<OdsCode> {
        let key = DedupeKey::Patient(NhsNumber::parse(&self.patient).unwrap());
        let holders = self.stack.hub.patients.key_holders(id, &[key]).await;
        holders.unwrap().remove(0)
    }

    /// The status of the patient's recipient in practice `ods`'s first chunk.
    async fn stored_status(&self, id: &CampaignId, ods: &OdsCode) -> Option<RecipientStatus> {
        let chunk = ChunkId::new(ods, 0);
        let recipients = self.stack.hub.patients.load_chunk(id, &chunk).await;
        recipients.unwrap().into_iter().next().map(|r| r.status)
    }
}

fn decision(ods: &OdsCode, decision: &str) -> ExtractionDecisionRequest {
    ExtractionDecisionRequest {
        ods: ods.to_string(),
        decision: decision.into(),
    }
}

/// How practice A ends without sending.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Staff exclude it after it was held.
    Excluded,
    /// Staff retry it, and its GP system is then down for good.
    FailsForGood,
}

/// A is held having read the patient (and taken the key first, or second);
/// B extracts; then A ends without sending. B's registration is texted.
async fn first_registration_ends_without_sending(seed: u64, a_first: bool, ending: Ending) {
    let f = Fixture::start(seed).await;
    let hub = &f.stack.hub;
    f.hold_a().await;
    f.serve(&f.a, &mobile(1), PatientSearch::Reference);
    f.serve(&f.b, &mobile(2), PatientSearch::Identifier);
    // The practice to go second is down until the first has been read, so
    // the order of the two is known.
    let (first, second) = if a_first { (&f.a, &f.b) } else { (&f.b, &f.a) };
    f.stack.estate.set_down(second, None);

    let id = create_and_approve(&f.stack, &request("Heat alert: see www.nhs.uk")).await;
    fire_deadline_now(&f.stack, &id).await;
    f.read_one_then_the_other(&id, first, second).await;
    f.wait_for(&id, &f.a, ParticipationState::ExtractionSuspect)
        .await;
    f.wait_for(&id, &f.b, ParticipationState::Extracted).await;

    // GIVEN the key is held by the practice read first, and the other
    // registration's record is kept on standby, not sent and not dropped
    let (holder, standby) = if a_first { (&f.a, &f.b) } else { (&f.b, &f.a) };
    assert_eq!(f.key_holder(&id).await.as_ref(), Some(holder));
    assert_eq!(
        f.stored_status(&id, standby).await,
        Some(RecipientStatus::Standby)
    );
    assert_eq!(f.stack.texts_sent(), 0, "nothing sent while A is held");

    // WHEN practice A ends without sending
    match ending {
        Ending::Excluded => {
            api::decide_extraction(hub, &bob(), &id, &decision(&f.a, "exclude"))
                .await
                .unwrap();
        }
        Ending::FailsForGood => {
            f.stack.estate.set_down(&f.a, None);
            api::decide_extraction(hub, &bob(), &id, &decision(&f.a, "retry"))
                .await
                .unwrap();
        }
    }
    let report = completed_and_sound(&f.stack, &id, Duration::from_secs(120)).await;

    // THEN the patient is texted exactly once, through B's registration
    assert_eq!(f.texts_to(&mobile(2)), 1, "{ending:?}, A first: {a_first}");
    assert_eq!(f.texts_to(&mobile(1)), 0);
    assert_eq!(report.failed_practices, vec![f.a.clone()]);
    if let Ending::FailsForGood = ending {
        let a = report.practices.iter().find(|p| p.ods == f.a).unwrap();
        assert!(a
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("unavailable"));
    }
    // AND counted once: one patient in the cohort, sent, written back
    let totals = &report.totals;
    assert_eq!(
        (totals.cohort, totals.sent, totals.excluded_total()),
        (1, 1, 0),
        "{totals:?}"
    );
    assert_eq!(totals.written_back, 1);
    let b = report.practices.iter().find(|p| p.ods == f.b).unwrap();
    assert_eq!((b.cohort, b.sent), (1, 1));
    assert_purged(&f.stack, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_whose_first_practice_is_excluded_is_texted_through_the_other() {
    first_registration_ends_without_sending(71, true, Ending::Excluded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_whose_first_practice_fails_for_good_is_texted_through_the_other() {
    first_registration_ends_without_sending(72, true, Ending::FailsForGood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_whose_second_practice_is_excluded_is_texted_through_the_first() {
    first_registration_ends_without_sending(73, false, Ending::Excluded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_registered_at_two_extracted_practices_is_texted_once_and_one_is_a_duplicate() {
    let f = Fixture::start(74).await;
    f.serve(&f.a, &mobile(1), PatientSearch::Identifier);
    f.serve(&f.b, &mobile(2), PatientSearch::Identifier);
    f.stack.estate.set_down(&f.b, None);

    let id = create_and_approve(&f.stack, &request("Heat alert: see www.nhs.uk")).await;
    fire_deadline_now(&f.stack, &id).await;
    f.read_one_then_the_other(&id, &f.a, &f.b).await;
    let report = completed_and_sound(&f.stack, &id, Duration::from_secs(120)).await;

    // THEN the practice read first texts the patient; the other record,
    // on standby, is withheld as a duplicate and counted once as such
    assert_eq!(f.texts_to(&mobile(1)), 1);
    assert_eq!(f.texts_to(&mobile(2)), 0);
    let totals = &report.totals;
    assert_eq!((totals.cohort, totals.sent), (2, 1), "{totals:?}");
    assert_eq!(totals.excluded_total(), 1);
    assert_eq!(
        totals.excluded.get(&ExclusionReason::DuplicatePatient),
        Some(&1)
    );
    let b = report.practices.iter().find(|p| p.ods == f.b).unwrap();
    assert_eq!((b.cohort, b.sent, b.excluded), (1, 0, 1));
    assert!(report.failed_practices.is_empty());
    assert_purged(&f.stack, &id).await;
}
