//! The practice registry.

use super::{ApiError, FieldError};
use crate::domain::{OdsCode, StaffId};
use crate::handlers::Hub;
use crate::ports::{GpConnection, Practice};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PracticeRequest {
    pub ods: String,
    pub name: String,
    pub notice_email: String,
    #[serde(default)]
    pub dsa_signed: Option<String>,
    /// The practice's GP system. Left out, it is the simulated estate where
    /// the hub runs one (the local stack), and an error everywhere else.
    #[serde(default)]
    pub connection: Option<GpConnection>,
    #[serde(default)]
    pub list_size: u64,
}

/// `simulated_gp`: whether this hub runs the simulated GP estate (only the
/// local stack does); elsewhere a practice must name its real GP system.
pub fn validate_practice(
    request: &PracticeRequest,
    simulated_gp: bool,
    local_gp_urls: bool,
) -> Result<Practice, ApiError> {
    let mut errors = Vec::new();
    let ods = OdsCode::parse(&request.ods)
        .map_err(|e| {
            errors.push(FieldError {
                field: "ods".into(),
                message: e.to_string(),
            })
        })
        .ok();
    let name = match super::check_text("name", &request.name, 1, 200, false) {
        Ok(name) => name,
        Err(error) => {
            errors.push(error);
            String::new()
        }
    };
    let name = name.as_str();
    let email = request.notice_email.trim();
    let valid_email = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && email.chars().all(|c| c.is_ascii_graphic())
        });
    if !valid_email {
        errors.push(FieldError {
            field: "notice_email".into(),
            message: "must be an email address".into(),
        });
    }
    let dsa_signed = match request.dsa_signed.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
            Ok(date) => Some(date),
            Err(_) => {
                errors.push(FieldError {
                    field: "dsa_signed".into(),
                    message: "must be a date, YYYY-MM-DD".into(),
                });
                None
            }
        },
    };
    let http_url = |url: &str| url.starts_with("https://") || url.starts_with("http://");
    let refused_url = match &request.connection {
        Some(GpConnection::Fhir { base_url, .. }) => gp_url_problem(base_url, local_gp_urls),
        _ => None,
    };
    let connection = match &request.connection {
        Some(GpConnection::Fhir { .. }) if refused_url.is_some() => {
            errors.push(FieldError {
                field: "connection.base_url".into(),
                message: refused_url.unwrap_or_default(),
            });
            None
        }
        Some(GpConnection::Fhir {
            link_base: Some(link_base),
            ..
        }) if !http_url(link_base) => {
            errors.push(FieldError {
                field: "connection.link_base".into(),
                message: "must be an http(s) URL".into(),
            });
            None
        }
        Some(GpConnection::Mesh {
            mailbox,
            wait_seconds,
        }) => {
            let mailbox_ok = !mailbox.is_empty()
                && mailbox.len() <= 20
                && mailbox.chars().all(|c| c.is_ascii_alphanumeric());
            if !mailbox_ok {
                errors.push(FieldError {
                    field: "connection.mailbox".into(),
                    message: "must be a MESH mailbox id: 1-20 letters and digits".into(),
                });
            }
            if wait_seconds.is_some_and(|s| !(1..=86_400).contains(&s)) {
                errors.push(FieldError {
                    field: "connection.wait_seconds".into(),
                    message: "must be between 1 and 86400".into(),
                });
            }
            // Refused below if any field (this one included) is in error.
            Some(GpConnection::Mesh {
                mailbox: mailbox.to_ascii_uppercase(),
                wait_seconds: *wait_seconds,
            })
        }
        Some(GpConnection::Simulated) | None if simulated_gp => Some(GpConnection::Simulated),
        Some(GpConnection::Simulated) => {
            errors.push(FieldError {
                field: "connection".into(),
                message: "the simulated GP estate exists only on the local stack: \
                          give the practice's GP system (kind fhir, base_url)"
                    .into(),
            });
            None
        }
        None => {
            errors.push(FieldError {
                field: "connection".into(),
                message: "is required: the practice's GP system (kind fhir, base_url)".into(),
            });
            None
        }
        Some(connection) => Some(connection.clone()),
    };
    match (ods, connection) {
        (Some(ods), Some(connection)) if errors.is_empty() => Ok(Practice {
            ods,
            name: name.to_string(),
            notice_email: email.to_string(),
            dsa_signed,
            connection,
            list_size: request.list_size,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// A GP system's address the hub may send NHS numbers and a bearer token
/// to: `https`, and not a loopback, link-local (cloud metadata), private or
/// otherwise internal address, unless `local` (the local stack, whose
/// simulators listen on loopback over http). A name that resolves to such
/// an address is not caught here.
pub fn gp_url_problem(url: &str, local: bool) -> Option<String> {
    let url = url.trim();
    if url.len() > 500 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("must be a URL of at most 500 characters, without spaces".into());
    }
    let rest = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => rest,
        (None, Some(rest)) if local => rest,
        _ => return Some("must be an https URL".into()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Some("must name a host (and no user name or password)".into());
    }
    if local {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    }
    .to_ascii_lowercase();
    let internal = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some()
        }
        Err(_) => {
            host == "localhost"
                || host.ends_with(".localhost")
                || host.ends_with(".internal")
                || host.ends_with(".local")
                || !host.contains('.')
        }
    };
    internal.then(|| {
        "must be the GP system's public https address, not a loopback, link-local, \
         private or internal one"
            .into()
    })
}

/// A change to a practice that reaches patients (its notice address, data
/// sharing agreement or GP system, or a new practice), waiting for a second
/// registry admin. Kept in the hub's audit trail, where it is also the
/// record of who asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PracticeChange {
    pub change_id: String,
    pub ods: OdsCode,
    pub proposed: Practice,
    /// The record when the change was asked for (none: a new practice).
    pub current: Option<Practice>,
    /// Which of notice_email, dsa_signed, connection change (`new` for a
    /// new practice).
    pub fields: Vec<String>,
    pub requested_by: String,
    pub requested_at: chrono::DateTime<chrono::Utc>,
}

/// What saving a practice did.
#[derive(Debug, Clone, PartialEq)]
pub enum PracticeSaved {
    /// Name or list size only: saved at once.
    Saved(Practice),
    /// Waits for a second registry admin.
    AwaitingApproval(Box<PracticeChange>),
}

const CHANGE_REQUESTED: &str = "practice_change_requested";
const CHANGE_APPROVED: &str = "practice_change_approved";

fn reaching_patients(current: Option<&Practice>, proposed: &Practice) -> Vec<String> {
    let Some(current) = current else {
        return vec!["new".into()];
    };
    let mut fields = Vec::new();
    if current.notice_email != proposed.notice_email {
        fields.push("notice_email".into());
    }
    if current.dsa_signed != proposed.dsa_signed {
        fields.push("dsa_signed".into());
    }
    if current.connection != proposed.connection {
        fields.push("connection".into());
    }
    fields
}

pub async fn put_practice(
    hub: &Hub,
    caller: &StaffId,
    request: &PracticeRequest,
) -> Result<PracticeSaved, ApiError> {
    let mut request = request.clone();
    let ods = OdsCode::parse(&request.ods).ok();
    let current = match &ods {
        Some(ods) => hub.store.get_practice(ods).await?,
        None => None,
    };
    if request.connection.is_none() {
        // A registry update that names no GP system keeps the one on record.
        request.connection = current.as_ref().map(|p| p.connection.clone());
    }
    let practice = validate_practice(&request, hub.config.simulated_gp, hub.config.local_gp_urls)?;
    let fields = reaching_patients(current.as_ref(), &practice);
    if fields.is_empty() {
        hub.store.put_practice(&practice).await?;
        hub.audit(
            None,
            caller.as_str(),
            "practice_saved",
            serde_json::json!({ "ods": practice.ods, "name": practice.name, "list_size": practice.list_size }),
        )
        .await?;
        return Ok(PracticeSaved::Saved(practice));
    }
    let change = PracticeChange {
        change_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        ods: practice.ods.clone(),
        proposed: practice,
        current,
        fields,
        requested_by: caller.as_str().to_string(),
        requested_at: hub.now(),
    };
    hub.audit(
        None,
        caller.as_str(),
        CHANGE_REQUESTED,
        serde_json::json!({ "ods": change.ods, "change": change }),
    )
    .await?;
    tracing::info!(ods = %change.ods, "practice change waiting for approval");
    Ok(PracticeSaved::AwaitingApproval(Box::new(change)))
}

/// Every practice change still waiting for a second registry admin: the
/// latest asked for each practice, unless approved since.
pub async fn pending_practice_changes(hub: &Hub) -> Result<Vec<PracticeChange>, ApiError> {
    let mut latest: std::collections::BTreeMap<String, Option<PracticeChange>> =
        std::collections::BTreeMap::new();
    for event in hub.store.list_hub_audit().await? {
        let ods = event.detail["ods"].as_str().unwrap_or_default().to_string();
        match event.action.as_str() {
            CHANGE_REQUESTED => {
                let change = serde_json::from_value(event.detail["change"].clone()).ok();
                latest.insert(ods, change);
            }
            CHANGE_APPROVED => {
                latest.insert(ods, None);
            }
            _ => {}
        }
    }
    Ok(latest.into_values().flatten().collect())
}

/// A second registry admin approves the change they name; the practice's
/// old notice address is told when it changes.
pub async fn approve_practice_change(
    hub: &Hub,
    caller: &StaffId,
    ods: &OdsCode,
    change_id: &str,
) -> Result<Practice, ApiError> {
    let change = pending_practice_changes(hub)
        .await?
        .into_iter()
        .find(|c| &c.ods == ods)
        .ok_or_else(|| ApiError::Conflict(format!("no change to {ods} is waiting for approval")))?;
    if change.change_id != change_id.trim() {
        return Err(ApiError::Conflict(format!(
            "the change to {ods} waiting for approval is {}, not {}; review it again",
            change.change_id,
            change_id.trim()
        )));
    }
    if change.requested_by == caller.as_str() {
        return Err(ApiError::Forbidden(
            "a registry change must be approved by a different person from the one who asked"
                .into(),
        ));
    }
    let current = hub.store.get_practice(ods).await?;
    if current != change.current {
        return Err(ApiError::Conflict(format!(
            "practice {ods} changed since this change was asked for; ask again"
        )));
    }
    hub.store.put_practice(&change.proposed).await?;
    let old_address = current
        .as_ref()
        .map(|p| p.notice_email.clone())
        .filter(|old| *old != change.proposed.notice_email);
    let told = match &old_address {
        Some(old) => tell_old_address(hub, old, &change).await,
        None => false,
    };
    hub.audit(
        None,
        caller.as_str(),
        CHANGE_APPROVED,
        serde_json::json!({
            "ods": ods,
            "change_id": change.change_id,
            "requested_by": change.requested_by,
            "fields": change.fields,
            "old_notice_address_told": told,
        }),
    )
    .await?;
    Ok(change.proposed)
}

async fn tell_old_address(hub: &Hub, old: &str, change: &PracticeChange) -> bool {
    let body = format!(
        "The SMS Engagement Hub's notices for practice {ods} will now go to {new} instead of \
         this address. The change was asked for by {asked} and approved by a second registry \
         administrator. If your practice did not ask for this, contact the regional hub team \
         at once.",
        ods = change.ods,
        new = change.proposed.notice_email,
        asked = change.requested_by,
    );
    let request = crate::ports::EmailRequest {
        to: old.to_string(),
        subject: format!("Notice address changed for practice {}", change.ods),
        body,
        reference: format!("registry.{}.{}", change.ods, change.change_id),
    };
    match hub.email.send_email(&request).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(ods = %change.ods, error = %error, "old notice address not told");
            false
        }
    }
}

pub async fn list_practices(hub: &Hub) -> Result<Vec<Practice>, ApiError> {
    let mut practices = hub.store.list_practices().await?;
    practices.sort_by(|a, b| a.ods.cmp(&b.ods));
    Ok(practices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn practice(connection: Option<GpConnection>) -> PracticeRequest {
        PracticeRequest {
            ods: "G85001".into(),
            name: "Lewisham Medical Centre".into(),
            notice_email: "manager@example.nhs.uk".into(),
            dsa_signed: Some("2026-01-15".into()),
            connection,
            list_size: 12_000,
        }
    }

    fn refused_field(result: Result<Practice, ApiError>) -> String {
        let error = result.expect_err("refused");
        error.body()["field"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_deployed_hub_needs_each_practices_real_gp_system() {
        // No connection, or the simulator's, is an error naming the field.
        assert_eq!(
            refused_field(validate_practice(&practice(None), false, false)),
            "connection"
        );
        assert_eq!(
            refused_field(validate_practice(
                &practice(Some(GpConnection::Simulated)),
                false,
                false
            )),
            "connection"
        );
        let fhir = GpConnection::Fhir {
            base_url: "https://gp.example.nhs.uk/fhir".into(),
            bulk_export: false,
            secret: Some("sms-hub/gp/G85001".into()),
            patient_search: crate::ports::PatientSearch::Identifier,
            link_base: Some("http://fhir-internal:8080/fhir".into()),
        };
        let saved = validate_practice(&practice(Some(fhir.clone())), false, false).expect("saved");
        assert_eq!(saved.connection, fhir);
        let mut proxied = fhir.clone();
        if let GpConnection::Fhir { link_base, .. } = &mut proxied {
            *link_base = Some("fhir-internal:8080".into());
        }
        assert_eq!(
            refused_field(validate_practice(&practice(Some(proxied)), false, false)),
            "connection.link_base"
        );
        // The identifier search is the default (the UK Core shape).
        let read: GpConnection = serde_json::from_value(serde_json::json!({
            "kind": "fhir", "base_url": "https://gp.example.nhs.uk/fhir"
        }))
        .unwrap();
        assert!(matches!(
            read,
            GpConnection::Fhir {
                patient_search: crate::ports::PatientSearch::Identifier,
                ..
            }
        ));
        // The local stack fills in its simulated estate.
        let local = validate_practice(&practice(None), true, true).expect("saved");
        assert_eq!(local.connection, GpConnection::Simulated);
    }

    #[test]
    fn a_mesh_practice_names_a_valid_mailbox() {
        let mesh = |mailbox: &str, wait_seconds| {
            practice(Some(GpConnection::Mesh {
                mailbox: mailbox.into(),
                wait_seconds,
            }))
        };
        let saved = validate_practice(&mesh("g85001mb", Some(600)), false, false).expect("saved");
        assert_eq!(
            saved.connection,
            GpConnection::Mesh {
                mailbox: "G85001MB".into(),
                wait_seconds: Some(600)
            }
        );
        assert_eq!(
            refused_field(validate_practice(&mesh("", None), false, false)),
            "connection.mailbox"
        );
        assert_eq!(
            refused_field(validate_practice(&mesh("../X", None), false, false)),
            "connection.mailbox"
        );
        assert_eq!(
            refused_field(validate_practice(&mesh("G85001MB", Some(0)), false, false)),
            "connection.wait_seconds"
        );
    }

    #[test]
    fn gp_systems_are_public_https_addresses() {
        for refused in [
            "http://gp.example.nhs.uk/fhir",
            "https://169.254.169.254/latest",
            "https://127.0.0.1:8443/fhir",
            "https://10.1.2.3/fhir",
            "https://192.168.0.1/fhir",
            "https://[::1]/fhir",
            "https://[fd00::1]/fhir",
            "https://localhost/fhir",
            "https://metadata.google.internal/",
            "https://user:pw@gp.example.nhs.uk/fhir",
            "https://gp/fhir",
            "ftp://gp.example.nhs.uk",
        ] {
            assert!(gp_url_problem(refused, false).is_some(), "{refused}");
        }
        assert_eq!(
            gp_url_problem("https://gp.example.nhs.uk/fhir", false),
            None
        );
        assert_eq!(gp_url_problem("https://203.0.114.7:443/fhir", false), None);
        // The local stack's simulators listen on loopback over http.
        assert_eq!(
            gp_url_problem("http://127.0.0.1:4040/fhir/G85001", true),
            None
        );
        assert!(gp_url_problem("javascript:alert(1)", true).is_some());
    }

    #[test]
    fn names_refuse_control_and_direction_characters() {
        let mut request = practice(None);
        request.name = "Evil\u{202E}gnp.exe".into();
        assert_eq!(
            refused_field(validate_practice(&request, true, true)),
            "name"
        );
        request.name = "Nul\0Surgery".into();
        assert_eq!(
            refused_field(validate_practice(&request, true, true)),
            "name"
        );
    }
}
