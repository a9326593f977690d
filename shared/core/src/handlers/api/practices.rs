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
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(FieldError {
            field: "name".into(),
            message: "is required (at most 200 characters)".into(),
        });
    }
    let email = request.notice_email.trim();
    let valid_email = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !email.contains(' ')
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
    let connection = match &request.connection {
        Some(GpConnection::Fhir { base_url, .. }) if !http_url(base_url) => {
            errors.push(FieldError {
                field: "connection.base_url".into(),
                message: "must be an http(s) URL".into(),
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

pub async fn put_practice(
    hub: &Hub,
    caller: &StaffId,
    request: &PracticeRequest,
) -> Result<Practice, ApiError> {
    let mut request = request.clone();
    if request.connection.is_none() {
        // A registry update that names no GP system keeps the one on record.
        if let Ok(ods) = OdsCode::parse(&request.ods) {
            if let Some(existing) = hub.store.get_practice(&ods).await? {
                request.connection = Some(existing.connection);
            }
        }
    }
    let practice = validate_practice(&request, hub.config.simulated_gp)?;
    hub.store.put_practice(&practice).await?;
    hub.audit(
        None,
        caller.as_str(),
        "practice_saved",
        serde_json::json!({ "ods": practice.ods, "dsa_signed": practice.dsa_signed }),
    )
    .await?;
    Ok(practice)
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
            refused_field(validate_practice(&practice(None), false)),
            "connection"
        );
        assert_eq!(
            refused_field(validate_practice(
                &practice(Some(GpConnection::Simulated)),
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
        let saved = validate_practice(&practice(Some(fhir.clone())), false).expect("saved");
        assert_eq!(saved.connection, fhir);
        let mut proxied = fhir.clone();
        if let GpConnection::Fhir { link_base, .. } = &mut proxied {
            *link_base = Some("fhir-internal:8080".into());
        }
        assert_eq!(
            refused_field(validate_practice(&practice(Some(proxied)), false)),
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
        let local = validate_practice(&practice(None), true).expect("saved");
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
        let saved = validate_practice(&mesh("g85001mb", Some(600)), false).expect("saved");
        assert_eq!(
            saved.connection,
            GpConnection::Mesh {
                mailbox: "G85001MB".into(),
                wait_seconds: Some(600)
            }
        );
        assert_eq!(
            refused_field(validate_practice(&mesh("", None), false)),
            "connection.mailbox"
        );
        assert_eq!(
            refused_field(validate_practice(&mesh("../X", None), false)),
            "connection.mailbox"
        );
        assert_eq!(
            refused_field(validate_practice(&mesh("G85001MB", Some(0)), false)),
            "connection.wait_seconds"
        );
    }
}
