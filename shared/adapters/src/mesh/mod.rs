//! NHS MESH: the route English GP systems offer for bulk data. The hub asks
//! each MESH-connected practice (or its supplier) for a CSV extract of its
//! registered list, waits for the answer in its own inbox, reads it into
//! [`GpPatient`]s and acknowledges it, so MESH holds it no longer.
//! Write-back is a CSV message to the practice listing who was messaged.

mod client;
mod extract_csv;
mod from_secret;

pub use client::{
    authorization, DownloadedMessage, MeshClient, MeshConfig, MeshError, MeshTls, MessageInfo,
    OutgoingMessage, AUTH_SCHEME, DEFAULT_CHUNK_SIZE,
};
pub use extract_csv::{
    header_line, parse_extract, ExtractFileError, ExtractRows, RowError, COLUMNS,
};
pub use from_secret::{mesh_config_from_secret, LazyMeshGpConnector, MeshSecretError};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use hub_core::domain::{GpPatient, OdsCode};
use hub_core::ports::{
    GpConnection, GpConnector, GpError, Medium, Practice, WritebackEntry, WritebackResult,
};
use std::time::Duration;
use tokio::time::Instant;

/// Workflow ids of the three messages (agreed with the practices' MESH
/// set-up; MESH routes and filters by them).
pub const REQUEST_WORKFLOW: &str = "SMSHUB_EXTRACT_REQUEST";
pub const EXTRACT_WORKFLOW: &str = "SMSHUB_EXTRACT";
pub const WRITEBACK_WORKFLOW: &str = "SMSHUB_MESSAGED";

#[derive(Debug, Clone)]
pub struct MeshGpConfig {
    pub request_workflow: String,
    pub extract_workflow: String,
    pub writeback_workflow: String,
    /// How long to wait for a practice's extract when its connection does
    /// not say; below the extract function's 15-minute timeout.
    pub default_wait: Duration,
    /// How often the inbox is checked while waiting.
    pub poll_interval: Duration,
}

impl Default for MeshGpConfig {
    fn default() -> Self {
        Self {
            request_workflow: REQUEST_WORKFLOW.into(),
            extract_workflow: EXTRACT_WORKFLOW.into(),
            writeback_workflow: WRITEBACK_WORKFLOW.into(),
            default_wait: Duration::from_secs(10 * 60),
            poll_interval: Duration::from_secs(15),
        }
    }
}

/// The [`GpConnector`] of practices whose connection is [`GpConnection::Mesh`],
/// through the hub's own mailbox.
#[derive(Debug, Clone)]
pub struct MeshGpConnector {
    client: MeshClient,
    config: MeshGpConfig,
}

fn unavailable(ods: &OdsCode, error: MeshError) -> GpError {
    if error.is_auth() {
        GpError::Misconfigured(format!("{ods}: {error}"))
    } else {
        GpError::Unavailable(format!("{ods}: {error}"))
    }
}

impl MeshGpConnector {
    pub fn new(client: MeshClient, config: MeshGpConfig) -> Self {
        Self { client, config }
    }

    pub fn client(&self) -> &MeshClient {
        &self.client
    }

    fn route<'a>(&self, practice: &'a Practice) -> Result<(&'a str, Duration), GpError> {
        match &practice.connection {
            GpConnection::Mesh {
                mailbox,
                wait_seconds,
            } => Ok((
                mailbox.as_str(),
                wait_seconds.map_or(self.config.default_wait, Duration::from_secs),
            )),
            _ => Err(GpError::Misconfigured(format!(
                "{} has no MESH connection",
                practice.ods
            ))),
        }
    }

    async fn ask_for_extract(&self, ods: &OdsCode, mailbox: &str) -> Result<String, GpError> {
        let request_id = format!("{ods}-{}", uuid::Uuid::new_v4().simple());
        let body = format!(
            "request=registered-list-extract\nods={ods}\nreply_workflow={}\nlocal_id={request_id}\ncolumns={}\n",
            self.config.extract_workflow,
            header_line()
        );
        self.client
            .send_message(&OutgoingMessage {
                to: mailbox.to_string(),
                workflow_id: self.config.request_workflow.clone(),
                local_id: Some(request_id.clone()),
                subject: Some(format!("Registered list extract for {ods}")),
                file_name: Some(format!("{ods}-extract-request.txt")),
                content_type: "text/plain".into(),
                body: body.into_bytes(),
            })
            .await
            .map_err(|e| unavailable(ods, e))?;
        Ok(request_id)
    }

    /// The practice's extracts waiting in the hub's inbox: from its mailbox,
    /// in the extract workflow. Other practices' messages are left alone.
    async fn waiting_extracts(
        &self,
        ods: &OdsCode,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, GpError> {
        let ids = self
            .client
            .list_inbox(Some(&self.config.extract_workflow))
            .await
            .map_err(|e| unavailable(ods, e))?;
        let mut found = Vec::new();
        for id in ids {
            let info = match self.client.message_info(&id).await {
                Ok(info) => info,
                // Taken by a concurrent reader meanwhile.
                Err(MeshError::Status { status, .. })
                    if status.as_u16() == 404 || status.as_u16() == 410 =>
                {
                    continue
                }
                Err(e) => return Err(unavailable(ods, e)),
            };
            if info.from.eq_ignore_ascii_case(mailbox)
                && info.workflow_id == self.config.extract_workflow
            {
                found.push(info);
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl GpConnector for MeshGpConnector {
    async fn extract(
        &self,
        practice: &Practice,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError> {
        let ods = &practice.ods;
        let (mailbox, wait) = self.route(practice)?;
        let request_id = self.ask_for_extract(ods, mailbox).await?;
        let give_up = Instant::now() + wait;
        let waiting = loop {
            let waiting = self.waiting_extracts(ods, mailbox).await?;
            if !waiting.is_empty() {
                break waiting;
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(GpError::Unavailable(format!(
                    "{ods}: no extract from MESH mailbox {mailbox} within {} s",
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(self.config.poll_interval.min(give_up - now)).await;
        };
        // The answer to this request if the practice echoed its local id,
        // else the latest it sent.
        let chosen = waiting
            .iter()
            .rposition(|m| m.local_id.as_deref() == Some(request_id.as_str()))
            .unwrap_or(waiting.len() - 1);
        let message = self
            .client
            .download(&waiting[chosen].message_id)
            .await
            .map_err(|e| unavailable(ods, e))?;
        // The header is checked now; rows are read as the stream is consumed.
        let parsed = ExtractRows::new(message.body);
        // Read (or unreadable for good): acknowledged, so MESH keeps no copy;
        // an older extract from the same practice goes with it.
        for info in &waiting {
            self.client
                .acknowledge(&info.message_id)
                .await
                .map_err(|e| unavailable(ods, e))?;
        }
        let rows = parsed
            .map_err(|e| GpError::Misconfigured(format!("{ods}: MESH extract refused: {e}")))?;
        tracing::info!(
            ods = %ods,
            chunks = message.chunks,
            "MESH extract received and acknowledged"
        );
        Ok(
            stream::iter(rows.map(|row| row.map_err(|e| GpError::MalformedRecord(e.to_string()))))
                .boxed(),
        )
    }

    /// One CSV message to the practice listing who was messaged (NHS
    /// number, the hub's reference, when, the text), for its own records.
    /// A repeat sends the list again; the reference lets the practice
    /// recognise it.
    async fn write_back(
        &self,
        practice: &Practice,
        entries: &[WritebackEntry],
    ) -> Result<Vec<WritebackResult>, GpError> {
        let ods = &practice.ods;
        let (mailbox, _) = self.route(practice)?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut writer = csv::Writer::from_writer(Vec::new());
        let write = |writer: &mut csv::Writer<Vec<u8>>, row: [&str; 5]| {
            writer
                .write_record(row)
                .map_err(|_| GpError::Misconfigured(format!("{ods}: write-back CSV")))
        };
        write(
            &mut writer,
            ["nhs_number", "reference", "sent_at", "medium", "message"],
        )?;
        for entry in entries {
            write(
                &mut writer,
                [
                    entry.nhs_number.as_str(),
                    &entry.reference,
                    &entry.sent_at.to_rfc3339(),
                    match entry.medium {
                        Medium::Sms => "sms",
                        Medium::Letter => "letter",
                    },
                    entry.message.expose(),
                ],
            )?;
        }
        let body = writer
            .into_inner()
            .map_err(|_| GpError::Misconfigured(format!("{ods}: write-back CSV")))?;
        let first = &entries[0].reference;
        self.client
            .send_message(&OutgoingMessage {
                to: mailbox.to_string(),
                workflow_id: self.config.writeback_workflow.clone(),
                local_id: Some(first.chars().take(300).collect()),
                subject: Some(format!("Patients messaged by the SMS hub for {ods}")),
                file_name: Some(format!("{ods}-messaged.csv")),
                content_type: "text/csv".into(),
                body,
            })
            .await
            .map_err(|e| unavailable(ods, e))?;
        Ok(vec![WritebackResult::Recorded; entries.len()])
    }
}

/// Sends each practice to the connector of its route (FHIR, MESH or, on
/// the local stack, the simulated estate), so one hub serves a mixed region.
#[derive(Clone, Default)]
pub struct RoutedGpConnector {
    pub fhir: Option<std::sync::Arc<dyn GpConnector>>,
    pub mesh: Option<std::sync::Arc<dyn GpConnector>>,
    pub simulated: Option<std::sync::Arc<dyn GpConnector>>,
}

impl RoutedGpConnector {
    fn pick(&self, practice: &Practice) -> Result<&dyn GpConnector, GpError> {
        let (route, kind) = match practice.connection {
            GpConnection::Fhir { .. } => (&self.fhir, "FHIR"),
            GpConnection::Mesh { .. } => (&self.mesh, "MESH"),
            GpConnection::Simulated => (&self.simulated, "simulated"),
        };
        route.as_deref().ok_or_else(|| {
            GpError::Misconfigured(format!(
                "{}: this hub has no {kind} route configured",
                practice.ods
            ))
        })
    }
}

#[async_trait]
impl GpConnector for RoutedGpConnector {
    async fn extract(
        &self,
        practice: &Practice,
    ) -> Result<BoxStream<'static, Result<GpPatient, GpError>>, GpError> {
        self.pick(practice)?.extract(practice).await
    }

    async fn write_back(
        &self,
        practice: &Practice,
        entries: &[WritebackEntry],
    ) -> Result<Vec<WritebackResult>, GpError> {
        self.pick(practice)?.write_back(practice, entries).await
    }
}
