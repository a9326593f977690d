//! Write-back as FHIR R4: one `transaction` Bundle of `Communication`
//! resources, each a conditional create on our reference, so a retried
//! write-back finds the first one instead of recording the message twice.

use super::patient::NHS_NUMBER_SYSTEM;
use chrono::SecondsFormat;
use hub_core::ports::{Medium, WritebackEntry, WritebackResult};
use serde_json::{json, Value};

/// The identifier system of the hub's message references. A real
/// deployment sets its own (`FhirConfig::reference_system`).
pub const DEFAULT_REFERENCE_SYSTEM: &str = "https://sms-engagement-hub.nhs.uk/Id/message-reference";
pub const COMMUNICATION_CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/communication-category";
pub const PARTICIPATION_MODE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode";

/// The transaction Bundle for `entries`, in order.
pub fn writeback_bundle(entries: &[WritebackEntry], reference_system: &str) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|entry| communication_entry(entry, reference_system))
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries,
    })
}

fn communication_entry(entry: &WritebackEntry, reference_system: &str) -> Value {
    let full_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let (code, display) = match entry.medium {
        Medium::Sms => ("SMSWRIT", "SMS written"),
        Medium::Letter => ("MAILWRIT", "mail"),
    };
    json!({
        "fullUrl": full_url,
        "resource": {
            "resourceType": "Communication",
            "identifier": [{ "system": reference_system, "value": entry.reference }],
            "status": "completed",
            "category": [{ "coding": [{
                "system": COMMUNICATION_CATEGORY_SYSTEM,
                "code": "notification",
                "display": "Notification"
            }]}],
            "medium": [{ "coding": [{
                "system": PARTICIPATION_MODE_SYSTEM,
                "code": code,
                "display": display
            }]}],
            "subject": { "identifier": {
                "system": NHS_NUMBER_SYSTEM,
                "value": entry.nhs_number.as_str()
            }},
            "sent": entry.sent_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "payload": [{ "contentString": entry.message.expose() }]
        },
        "request": {
            "method": "POST",
            "url": "Communication",
            "ifNoneExist": format!(
                "identifier={}",
                percent_encode(&format!("{reference_system}|{}", entry.reference))
            )
        }
    })
}

/// Query-component encoding: everything but RFC 3986 unreserved bytes.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One result per entry of a `transaction-response`, or `None` when the
/// response does not match the request (then the whole call is retried,
/// which conditional create makes safe).
pub fn entry_results(response: &Value, expected: usize) -> Option<Vec<WritebackResult>> {
    if response.get("resourceType")?.as_str()? != "Bundle" {
        return None;
    }
    let entries = response.get("entry")?.as_array()?;
    if entries.len() != expected {
        return None;
    }
    entries
        .iter()
        .map(|entry| {
            let status = entry.get("response")?.get("status")?.as_str()?;
            Some(result_for_status(status))
        })
        .collect()
}

/// `response.status` starts with the HTTP code (`"201 Created"`).
fn result_for_status(status: &str) -> WritebackResult {
    let code: u16 = status
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    match code {
        // 201: created; 200: the reference already existed (a retry).
        200..=299 => WritebackResult::Recorded,
        // ifNoneExist matched more than one: it is recorded already.
        412 => WritebackResult::Recorded,
        400 | 404 | 409 | 410 | 422 => WritebackResult::Rejected,
        _ => WritebackResult::Failed,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use hub_core::domain::{NhsNumber, Personal};

    fn entry(n: u32) -> WritebackEntry {
        WritebackEntry {
            nhs_number: NhsNumber::parse("9434765919").unwrap(),
            reference: format!("c.G85001-0000.{n}"),
            sent_at: Utc.with_ymd_and_hms(2025, 3, 1, 9, 30, 0).unwrap(),
            message: Personal::new("Please book your booster".into()),
            medium: if n.is_multiple_of(2) {
                Medium::Sms
            } else {
                Medium::Letter
            },
        }
    }

    /// Structural check of FHIR R4 (4.0.1) for what the hub emits: the
    /// required elements and the required-binding value sets of Bundle,
    /// Bundle.entry.request and Communication, and the JSON types of the
    /// elements present. Returns every problem found.
    pub(crate) fn r4_problems(bundle: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(what.to_string());
            }
        };
        check(bundle["resourceType"] == "Bundle", "Bundle.resourceType");
        // Bundle.type: required binding to bundle-type.
        let bundle_types = [
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        ];
        check(
            bundle["type"]
                .as_str()
                .is_some_and(|t| bundle_types.contains(&t)),
            "Bundle.type in bundle-type",
        );
        let Some(entries) = bundle["entry"].as_array() else {
            problems.push("Bundle.entry is an array".into());
            return problems;
        };
        let mut full_urls = std::collections::HashSet::new();
        for entry in entries {
            let full_url = entry["fullUrl"].as_str().unwrap_or("");
            check(
                full_url.starts_with("urn:uuid:") && uuid::Uuid::parse_str(&full_url[9..]).is_ok(),
                "entry.fullUrl is urn:uuid",
            );
            check(
                full_urls.insert(full_url.to_string()),
                "entry.fullUrl unique",
            );
            // bdl-3: a transaction entry has a request; method and url are 1..1.
            let request = &entry["request"];
            check(
                request["method"].as_str().is_some_and(|m| {
                    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"].contains(&m)
                }),
                "entry.request.method in http-verb",
            );
            check(
                request["url"].as_str().is_some_and(|u| !u.is_empty()),
                "entry.request.url",
            );
            if let Some(condition) = request.get("ifNoneExist") {
                check(
                    condition
                        .as_str()
                        .is_some_and(|c| c.starts_with("identifier=") && !c.contains(' ')),
                    "entry.request.ifNoneExist is a query string",
                );
            }
            let c = &entry["resource"];
            check(
                c["resourceType"] == "Communication",
                "resource is a Communication",
            );
            // Communication.status: 1..1, required binding to event-status.
            let statuses = [
                "preparation",
                "in-progress",
                "not-done",
                "on-hold",
                "stopped",
                "completed",
                "entered-in-error",
                "unknown",
            ];
            check(
                c["status"].as_str().is_some_and(|s| statuses.contains(&s)),
                "Communication.status",
            );
            for (field, array) in [
                ("identifier", true),
                ("category", true),
                ("medium", true),
                ("payload", true),
            ] {
                check(
                    c[field].is_array() == array,
                    &format!("Communication.{field} is an array"),
                );
            }
            for identifier in c["identifier"].as_array().into_iter().flatten() {
                check(
                    identifier["system"]
                        .as_str()
                        .is_some_and(|s| s.contains(':')),
                    "identifier.system is a uri",
                );
                check(
                    identifier["value"].as_str().is_some_and(|v| !v.is_empty()),
                    "identifier.value",
                );
            }
            for concept in c["category"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(c["medium"].as_array().into_iter().flatten())
            {
                for coding in concept["coding"].as_array().into_iter().flatten() {
                    check(
                        coding["system"].is_string() && coding["code"].is_string(),
                        "coding has system and code",
                    );
                }
            }
            check(
                c["subject"].is_object(),
                "Communication.subject is a Reference",
            );
            check(
                c["subject"]["identifier"]["system"].is_string()
                    && c["subject"]["identifier"]["value"].is_string(),
                "subject.identifier",
            );
            // dateTime with a time needs a zone.
            check(
                c["sent"]
                    .as_str()
                    .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
                "Communication.sent is a dateTime",
            );
            // payload.content[x] is 1..1.
            for payload in c["payload"].as_array().into_iter().flatten() {
                check(
                    payload["contentString"].is_string(),
                    "payload.contentString",
                );
            }
        }
        problems
    }

    #[test]
    fn the_bundle_is_structurally_valid_r4() {
        let bundle = writeback_bundle(&[entry(0), entry(1)], DEFAULT_REFERENCE_SYSTEM);
        assert_eq!(r4_problems(&bundle), Vec::<String>::new());
        let first = &bundle["entry"][0];
        assert_eq!(first["resource"]["status"], "completed");
        assert_eq!(
            first["resource"]["category"][0]["coding"][0]["code"],
            "notification"
        );
        assert_eq!(
            first["resource"]["subject"]["identifier"]["value"],
            "9434765919"
        );
        assert_eq!(first["resource"]["sent"], "2025-03-01T09:30:00Z");
        assert_eq!(
            first["resource"]["payload"][0]["contentString"],
            "Please book your booster"
        );
        assert_eq!(
            first["resource"]["identifier"][0]["value"],
            "c.G85001-0000.0"
        );
        assert_eq!(
            first["request"]["ifNoneExist"],
            "identifier=https%3A%2F%2Fsms-engagement-hub.nhs.uk%2FId%2Fmessage-reference%7Cc.G85001-0000.0"
        );
        assert_ne!(first["fullUrl"], bundle["entry"][1]["fullUrl"]);
        // And the checker does catch mistakes.
        let mut broken = bundle.clone();
        broken["entry"][1]["resource"]["status"] = "done".into();
        broken["entry"][0]["request"]
            .as_object_mut()
            .unwrap()
            .remove("method");
        assert_eq!(r4_problems(&broken).len(), 2);
    }

    #[test]
    fn response_statuses_map_per_entry() {
        let response = json!({
            "resourceType": "Bundle", "type": "transaction-response",
            "entry": [
                { "response": { "status": "201 Created", "location": "Communication/1/_history/1" } },
                { "response": { "status": "200 OK" } },
                { "response": { "status": "412 Precondition Failed" } },
                { "response": { "status": "422 Unprocessable Entity" } },
                { "response": { "status": "503" } }
            ]
        });
        use WritebackResult::*;
        assert_eq!(
            entry_results(&response, 5),
            Some(vec![Recorded, Recorded, Recorded, Rejected, Failed])
        );
        assert_eq!(entry_results(&response, 4), None);
        assert_eq!(
            entry_results(&json!({"resourceType": "OperationOutcome"}), 0),
            None
        );
    }
}
