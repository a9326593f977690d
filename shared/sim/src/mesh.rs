//! NHS England's `mesh-sandbox` (PyPI), started on loopback for the tests
//! and the demo, and simulated practices that answer the hub's extract
//! requests through it as a practice's MESH client would.
//!
//! The sandbox is the real MESH API's reference implementation, run with
//! full authentication (`NHSMESH` header checked against a random shared
//! key) and its file store, in which every directory of the store is a
//! mailbox (password `password`, the sandbox's fixed one).

use anyhow::{bail, Context};
use futures::StreamExt;
use hub_adapters::mesh::{
    MeshClient, MeshConfig, MeshTls, OutgoingMessage, COLUMNS, EXTRACT_WORKFLOW, REQUEST_WORKFLOW,
};
use hub_core::domain::{ContactPreference, GpPatient, OdsCode};
use hub_core::ports::{GpConnection, GpConnector, Practice};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The password the sandbox gives every mailbox it finds in its store.
pub const SANDBOX_PASSWORD: &str = "password";

/// A running `mesh-sandbox`; stopped, and its store deleted, on drop.
pub struct MeshSandbox {
    child: Child,
    base_url: String,
    shared_key: String,
    dir: PathBuf,
    tls: Option<SandboxTls>,
}

/// Mutual TLS for the sandbox: files as `infra/mesh.sh certs DIR` writes
/// them (`ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`).
/// The sandbox then requires a client certificate signed by that CA.
#[derive(Debug, Clone)]
pub struct SandboxTls {
    pub dir: PathBuf,
}

impl SandboxTls {
    fn read(&self, name: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.dir.join(name))
            .with_context(|| format!("reading {}", self.dir.join(name).display()))
    }

    /// The client's TLS settings: its certificate and key, and the CA.
    pub fn client(&self) -> anyhow::Result<MeshTls> {
        Ok(MeshTls {
            client_identity_pem: Some(SecretString::from(format!(
                "{}{}",
                self.read("client.pem")?,
                self.read("client.key")?
            ))),
            ca_pem: Some(self.read("ca.pem")?),
        })
    }
}

impl std::fmt::Debug for MeshSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSandbox")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl MeshSandbox {
    /// The venv `infra/mesh.sh install` creates: `HUB_MESH_VENV`, else
    /// `.venv-mesh` at the repository root.
    pub fn default_venv() -> PathBuf {
        match std::env::var_os("HUB_MESH_VENV") {
            Some(path) => PathBuf::from(path),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mesh"),
        }
    }

    /// Starts the sandbox from `venv` on a free loopback port with these
    /// mailboxes, and waits until it answers.
    pub async fn start(venv: &Path, mailboxes: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(venv, mailboxes, None).await
    }

    /// As [`start`](Self::start), serving HTTPS and requiring client
    /// certificates when `tls` is given.
    pub async fn start_with(
        venv: &Path,
        mailboxes: &[&str],
        tls: Option<SandboxTls>,
    ) -> anyhow::Result<Self> {
        let uvicorn = venv.join("bin/uvicorn");
        if !uvicorn.exists() {
            bail!(
                "mesh-sandbox is not installed in {} (run infra/mesh.sh install)",
                venv.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("hub-mesh-{}", uuid::Uuid::new_v4()));
        for mailbox in mailboxes {
            std::fs::create_dir_all(dir.join("store").join(mailbox.to_ascii_uppercase()))
                .context("creating the sandbox's mailboxes")?;
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let shared_key = uuid::Uuid::new_v4().simple().to_string();
        let log = std::fs::File::create(dir.join("sandbox.log"))?;
        let mut command = Command::new(&uvicorn);
        command
            .args(["mesh_sandbox.api:app", "--host", "127.0.0.1"])
            .args(["--workers", "1", "--port", &port.to_string()]);
        if let Some(tls) = &tls {
            command
                .arg("--ssl-certfile")
                .arg(tls.dir.join("server.pem"))
                .arg("--ssl-keyfile")
                .arg(tls.dir.join("server.key"))
                .arg("--ssl-ca-certs")
                .arg(tls.dir.join("ca.pem"))
                // ssl.CERT_REQUIRED: no client certificate, no connection.
                .args(["--ssl-cert-reqs", "2"]);
        }
        let child = command
            .env("STORE_MODE", "file")
            .env("MAILBOXES_DATA_DIR", dir.join("store"))
            .env("AUTH_MODE", "full")
            .env("SHARED_KEY", &shared_key)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting mesh-sandbox")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut sandbox = Self {
            child,
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            shared_key,
            dir,
            tls,
        };
        sandbox.wait_until_ready().await?;
        Ok(sandbox)
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let mut http = reqwest::Client::builder();
        if let Some(tls) = &self.tls {
            let client = tls.client()?;
            if let Some(pem) = &client.client_identity_pem {
                http = http.identity(reqwest::Identity::from_pem(
                    secrecy::ExposeSecret::expose_secret(pem).as_bytes(),
                )?);
            }
            let ca = reqwest::Certificate::from_pem_bundle(tls.read("ca.pem")?.as_bytes())?;
            http = http.tls_certs_only(ca);
        }
        let http = http.build()?;
        let health = format!("{}/health", self.base_url);
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                bail!("mesh-sandbox exited ({status}): {}", self.log_tail());
            }
            let answer = http
                .get(&health)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("mesh-sandbox did not answer in 30 s: {}", self.log_tail())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("sandbox.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A client configuration for one of the sandbox's mailboxes (with
    /// the client certificate when the sandbox requires one).
    pub fn config(&self, mailbox: &str) -> MeshConfig {
        let mut config = MeshConfig::new(
            self.base_url.clone(),
            mailbox,
            SecretString::from(SANDBOX_PASSWORD),
            SecretString::from(self.shared_key.clone()),
        );
        if let Some(tls) = &self.tls {
            config.tls = tls.client().unwrap_or_default();
        }
        config
    }

    pub fn client(&self, mailbox: &str) -> anyhow::Result<MeshClient> {
        Ok(MeshClient::new(self.config(mailbox))?)
    }
}

impl Drop for MeshSandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One extract request as a practice receives it.
#[derive(Debug, Clone)]
pub struct ExtractRequest {
    pub message_id: String,
    pub ods: Option<OdsCode>,
    pub local_id: Option<String>,
    pub from: String,
}

/// A practice's side of the MESH route: reads the hub's extract requests
/// from its mailbox and answers each with a CSV extract.
#[derive(Debug, Clone)]
pub struct MeshPracticeSim {
    client: MeshClient,
}

impl MeshPracticeSim {
    pub fn new(client: MeshClient) -> Self {
        Self { client }
    }

    /// The requests waiting in the practice's inbox (downloaded, not yet
    /// acknowledged).
    pub async fn requests(&self) -> anyhow::Result<Vec<ExtractRequest>> {
        let mut requests = Vec::new();
        for id in self.client.list_inbox(Some(REQUEST_WORKFLOW)).await? {
            let message = self.client.download(&id).await?;
            let body = String::from_utf8_lossy(&message.body);
            let ods = body
                .lines()
                .find_map(|l| l.strip_prefix("ods="))
                .and_then(|ods| OdsCode::parse(ods.trim()).ok());
            requests.push(ExtractRequest {
                message_id: id,
                ods,
                local_id: message.info.local_id,
                from: message.info.from,
            });
        }
        Ok(requests)
    }

    /// Sends `extract` (CSV) in answer to `request`, echoing its local id,
    /// then acknowledges the request. Returns the extract's message id.
    pub async fn answer(
        &self,
        request: &ExtractRequest,
        extract: Vec<u8>,
    ) -> anyhow::Result<String> {
        let id = self
            .client
            .send_message(&OutgoingMessage {
                to: request.from.clone(),
                workflow_id: EXTRACT_WORKFLOW.into(),
                local_id: request.local_id.clone(),
                subject: Some("Registered list extract".into()),
                file_name: Some("extract.csv".into()),
                content_type: "text/csv".into(),
                body: extract,
            })
            .await?;
        self.client.acknowledge(&request.message_id).await?;
        Ok(id)
    }

    /// Answers every waiting request from `estate` (the practice named in
    /// the request); returns how many were answered.
    pub async fn answer_from(&self, estate: &dyn GpConnector) -> anyhow::Result<usize> {
        let requests = self.requests().await?;
        for request in &requests {
            let ods = request
                .ods
                .clone()
                .context("an extract request without a readable ods line")?;
            let extract = estate_extract_csv(estate, &ods).await?;
            self.answer(request, extract).await?;
        }
        Ok(requests.len())
    }

    /// Answers requests from `estate` every `interval` until dropped.
    pub fn spawn(
        self,
        estate: Arc<dyn GpConnector>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(error) = self.answer_from(estate.as_ref()).await {
                    tracing::warn!(error = %error, mailbox = self.client.mailbox_id(), "simulated MESH practice could not answer");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

/// A practice's registered list from `estate`, as the CSV extract a
/// practice sends (the hub's columns). Unreadable records are left out,
/// as a practice's own search would.
pub async fn estate_extract_csv(
    estate: &dyn GpConnector,
    ods: &OdsCode,
) -> anyhow::Result<Vec<u8>> {
    let practice = Practice {
        ods: ods.clone(),
        name: String::new(),
        notice_email: String::new(),
        dsa_signed: None,
        connection: GpConnection::Simulated,
        list_size: 0,
    };
    let mut patients = estate
        .extract(&practice)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rows = Vec::new();
    while let Some(patient) = patients.next().await {
        if let Ok(patient) = patient {
            rows.push(patient);
        }
    }
    extract_csv(&rows)
}

/// Patients as the CSV extract, in the hub's column order.
pub fn extract_csv(patients: &[GpPatient]) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(COLUMNS)?;
    for patient in patients {
        let lines = patient.address_lines.expose();
        let line = |i: usize| lines.get(i).cloned().unwrap_or_default();
        let consent = match patient.contact_preference {
            ContactPreference::Sms => "Y",
            ContactPreference::NoTelephoneContact => "N",
            ContactPreference::Letter | ContactPreference::NotRecorded => "",
        };
        writer.write_record([
            patient.nhs_number.expose().clone(),
            patient.given_name.expose().clone(),
            patient.family_name.expose().clone(),
            patient
                .birth_date
                .expose()
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap_or_default(),
            line(0),
            line(1),
            line(2),
            line(3),
            line(4),
            patient.postcode.expose().clone(),
            patient.mobile.expose().clone().unwrap_or_default(),
            consent.to_string(),
            if patient.deceased { "Y" } else { "N" }.to_string(),
        ])?;
    }
    writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}
