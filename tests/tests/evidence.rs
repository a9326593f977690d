//! The per-campaign evidence export (`GET /campaigns/{id}/evidence`): the
//! governance record of a whole campaign, and no patient data in it.

use hub_core::domain::{CampaignState, NhsNumber, UkMobile};
use hub_core::handlers::api;
use hub_core::http;
use hub_local::LocalStack;
use hub_sim::GpEstate;
use hub_tests::requests::{send, ApiRequest};
use hub_tests::*;
use serde_json::Value;
use std::time::Duration;

/// What of the estate's patient data appears in `text`. Practice names
/// (`Dr Okafor and Partners`) are not patient data and are taken out first,
/// so a surname shared with a GP does not count.
fn patient_data_in(text: &str, estate: &GpEstate) -> Vec<&'static str> {
    let mut text = text.to_string();
    for practice in estate.practices() {
        text = text.replace(&practice.name, "");
    }
    let words: std::collections::HashSet<&str> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .collect();
    let mut found = Vec::new();
    for patient in estate.all_patients() {
        let nhs = patient.nhs_number.expose();
        if nhs.len() >= 9 && text.contains(nhs.as_str()) {
            found.push("an NHS number");
        }
        if let Ok(valid) = NhsNumber::parse(nhs) {
            if text.contains(&valid.formatted()) {
                found.push("a formatted NHS number");
            }
        }
        if let Some(raw) = patient.mobile.expose() {
            if raw.len() >= 10 && text.contains(raw.as_str()) {
                found.push("a mobile as recorded");
            }
            if let Ok(mobile) = UkMobile::parse(raw) {
                if text.contains(mobile.e164()) || text.contains(&mobile.national()) {
                    found.push("a mobile number");
                }
            }
        }
        for (name, what) in [
            (patient.family_name.expose(), "a surname"),
            (patient.given_name.expose(), "a given name"),
        ] {
            if name.split(' ').any(|n| !n.is_empty() && words.contains(n)) {
                found.push(what);
            }
        }
        let postcode = patient.postcode.expose();
        if postcode.len() >= 6 && text.contains(postcode.as_str()) {
            found.push("a postcode");
        }
        for line in patient.address_lines.expose() {
            if line.len() >= 8 && line.contains(' ') && text.contains(line.as_str()) {
                found.push("an address line");
            }
        }
        if let Some(dob) = patient.birth_date.expose() {
            if text.contains(&format!("\"{dob}\"")) {
                found.push("a date of birth");
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_evidence_export_holds_the_record_and_no_patient_data() {
    let stack = std::sync::Arc::new(
        LocalStack::start(config(4, 3_000, 17))
            .await
            .expect("stack"),
    );
    let hub = &stack.hub;
    let mut wanted =
        request("NHS: ((first_name)) ((last_name)), stay out of the sun. See www.nhs.uk");
    wanted.target.min_age = Some(16);

    // GIVEN a campaign created by alice, approved by bob, one practice opted
    // out by bob on its behalf, and the deadline brought forward by bob
    let id = create_and_approve(&stack, &wanted).await;
    let participations = hub
        .store
        .list_participations(&id)
        .await
        .expect("participations");
    let opted = participations[0].ods.clone();
    api::record_opt_out(hub, bob().as_str(), &id, opted.as_str())
        .await
        .expect("opt-out");
    fire_deadline_now(&stack, &id).await;
    let report = wait_for_state(
        &stack,
        &id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;
    assert_invariants(&stack, &report).await;

    // WHEN the evidence is fetched through the staff API
    let response = send(
        &http::router(hub.clone()),
        ApiRequest::new("GET", &format!("/campaigns/{id}/evidence")).caller(&alice()),
    )
    .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let text = String::from_utf8(response.body.clone()).expect("UTF-8");
    let evidence: Value = serde_json::from_str(&text).expect("JSON");

    // THEN it holds no patient data from the estate
    let leaks = patient_data_in(&text, &stack.estate);
    assert!(leaks.is_empty(), "patient data in the evidence: {leaks:?}");

    // AND who created, approved and changed the campaign
    assert_eq!(evidence["created_by"], alice().as_str());
    assert_eq!(evidence["approved_by"], bob().as_str());
    assert!(evidence["approved_at"].is_string());
    let actions: Vec<(String, String)> = evidence["staff_actions"]
        .as_array()
        .expect("staff actions")
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap_or_default().to_string(),
                a["actor"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (action, actor) in [
        ("campaign_created", alice().as_str().to_string()),
        ("campaign_approved", bob().as_str().to_string()),
        ("practice_opted_out", bob().as_str().to_string()),
        ("deadline_changed", bob().as_str().to_string()),
    ] {
        assert!(
            actions.contains(&(action.to_string(), actor.clone())),
            "{action} by {actor} in {actions:?}"
        );
    }
    assert!(evidence["deadline_reached_at"].is_string());
    let states: Vec<&str> = evidence["states"]
        .as_array()
        .expect("states")
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "pending_approval",
            "opt_out_window",
            "extracting",
            "sending",
            "awaiting_receipts",
            "completed"
        ]
    );

    // AND every practice told, when, and the opt-out
    let practices = evidence["practices"].as_array().expect("practices");
    assert_eq!(practices.len(), participations.len());
    assert!(practices.iter().all(|p| p["notified_at"].is_string()));
    assert_eq!(evidence["opt_outs"].as_array().map(Vec::len), Some(1));
    assert_eq!(evidence["opt_outs"][0]["ods"], opted.as_str());
    assert_eq!(evidence["opt_outs"][0]["by"], bob().as_str());
    assert!(evidence["opt_outs"][0]["at"].is_string());

    // AND counts by outcome and reason, as the report has them
    assert_eq!(evidence["adds_up"], true);
    assert_eq!(
        evidence["outcomes"],
        serde_json::to_value(&report.totals).expect("totals")
    );
    assert!(evidence["outcomes"]["excluded"]
        .as_object()
        .is_some_and(|reasons| !reasons.is_empty()));

    // AND when patient data was extracted, how much, and its purge
    let data = &evidence["patient_data"];
    assert!(data["extraction_started_at"].is_string());
    assert!(data["extraction_ended_at"].as_str() >= data["extraction_started_at"].as_str());
    let stored = data["recipients_stored"]
        .as_u64()
        .expect("recipients stored");
    assert!(stored >= report.totals.sent + report.totals.letters && stored <= report.totals.cohort);
    let purges = data["purges"].as_array().expect("purges");
    assert!(!purges.is_empty(), "the purge is in the evidence");
    let deleted: u64 = purges
        .iter()
        .filter_map(|p| p["items_deleted"].as_u64())
        .sum();
    assert!(
        deleted >= stored,
        "recipients and dedupe keys purged: {deleted}"
    );
    assert_eq!(data["purged_items"].as_u64(), Some(deleted));
    assert_eq!(data["items_remaining"], 0);
    assert!(data["purged_at"].as_str() >= data["extraction_ended_at"].as_str());
    assert_eq!(data["ttl_hours"], hub.config.patient_data_ttl.num_hours());

    // AND an unknown campaign is a 404, not an empty record
    let missing = send(
        &http::router(hub.clone()),
        ApiRequest::new("GET", "/campaigns/0123456789ab/evidence").caller(&alice()),
    )
    .await;
    assert_eq!(missing.status, 404);
}

/// Self-check of the search: it does find patient data when it is there.
#[test]
fn the_search_finds_patient_data_when_it_is_there() {
    let estate = GpEstate::generate(hub_sim::RegionSpec {
        practices: 2,
        patients: 200,
        seed: 3,
    });
    let patient = estate
        .all_patients()
        .find(|p| {
            p.postcode.expose().len() >= 6
                && p.nhs_number.expose().len() >= 9
                && p.mobile.expose().as_deref().is_some_and(|m| m.len() >= 10)
        })
        .expect("a patient with a postcode, an NHS number and a mobile");
    let text = serde_json::json!({
        "note": format!(
            "{} {} at {} on {}",
            patient.family_name.expose(),
            patient.nhs_number.expose(),
            patient.postcode.expose(),
            patient.mobile.expose().clone().unwrap_or_default(),
        )
    })
    .to_string();
    let found = patient_data_in(&text, &estate);
    for what in [
        "a surname",
        "an NHS number",
        "a postcode",
        "a mobile as recorded",
    ] {
        assert!(found.contains(&what), "{what} found in {found:?}");
    }
    assert!(patient_data_in("{\"practices\": []}", &estate).is_empty());
}
