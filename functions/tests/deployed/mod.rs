//! The hub as deployed: `infra/deployed_stack.py` creates the
//! SAM-transformed template's resources, roles and policies on an
//! IAM-enforcing AWS emulator; this module is the Lambda service around the
//! real function binaries (`runtime`) and the event sources (`sources`).

pub mod manifest;
pub mod runtime;
pub mod sources;

use manifest::{Denial, Manifest};
use runtime::LambdaFunction;
use serde_json::Value;
use sources::{Functions, Gateway, Record};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client of one AWS service on the emulator with the administrator's
/// key (the test's own view, outside any function's role).
macro_rules! admin_client {
    ($emulator:expr, $sdk:ident) => {{
        use $sdk::config::{BehaviorVersion, Credentials, Region};
        let m = &$emulator.manifest;
        $sdk::Client::from_conf(
            $sdk::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(m.region.clone()))
                .endpoint_url(&m.endpoint)
                .credentials_provider(Credentials::new(
                    &m.admin_key,
                    &m.admin_key,
                    None,
                    None,
                    "admin",
                ))
                .build(),
        )
    }};
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python of the AWS venv (`HUB_VENV`, else `.venv-aws`), as
/// `infra/moto.sh` makes it.
pub fn python() -> PathBuf {
    std::env::var_os("HUB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-aws"))
        .join("bin/python")
}

/// The built binary of each function (`Metadata.BuildProperties.Binary`).
pub fn binary(name: &str) -> Option<PathBuf> {
    let path = match name {
        "api" => env!("CARGO_BIN_EXE_api"),
        "optout-link" => env!("CARGO_BIN_EXE_optout-link"),
        "practice-notices" => env!("CARGO_BIN_EXE_practice-notices"),
        "deadline" => env!("CARGO_BIN_EXE_deadline"),
        "extract" => env!("CARGO_BIN_EXE_extract"),
        "send" => env!("CARGO_BIN_EXE_send"),
        "writeback" => env!("CARGO_BIN_EXE_writeback"),
        "letters" => env!("CARGO_BIN_EXE_letters"),
        "receipts" => env!("CARGO_BIN_EXE_receipts"),
        "purge" => env!("CARGO_BIN_EXE_purge"),
        _ => return None,
    };
    Some(PathBuf::from(path))
}

/// What the deployment is given: template parameters and secret values.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeployInput {
    pub parameters: BTreeMap<String, String>,
    /// By the secret's logical id.
    pub secrets: BTreeMap<String, String>,
    /// More secrets by name (GP credentials).
    pub extra_secrets: BTreeMap<String, String>,
    /// Where allowed `sms-voice` calls go (the simulated End User
    /// Messaging: `endpoint`, `access_key_id`, `secret_access_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_voice: Option<serde_json::Value>,
}

/// Options of a deployed-stack run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `RoleLogicalId:action:ResourceLogicalId`: the role's statement that
    /// allows `action` on that resource is removed before deployment.
    pub drop_statement: Option<String>,
    /// Instances (processes) per function at most; an SQS mapping polls with
    /// min(MaximumConcurrency, this) concurrent pollers.
    pub max_instances: usize,
}

/// The IAM-enforcing emulator process and what it deployed.
pub struct Emulator {
    child: tokio::process::Child,
    pub manifest: Manifest,
    denials: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Emulator {
    pub async fn deploy(input: &DeployInput, options: &Options) -> anyhow::Result<Self> {
        use anyhow::Context;
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir()?;
        let input_path = dir.path().join("input.json");
        std::fs::write(&input_path, serde_json::to_vec(input)?)?;
        let manifest_path = dir.path().join("manifest.json");
        let denials = dir.path().join("denials.jsonl");
        let python = python();
        let mut command = tokio::process::Command::new(&python);
        command
            .arg(repo().join("infra/deployed_stack.py"))
            .arg("--template")
            .arg(repo().join("template.yaml"))
            .arg("--manifest")
            .arg(&manifest_path)
            .arg("--denials")
            .arg(&denials)
            .arg("--input")
            .arg(&input_path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("emulator.log"))?)
            .kill_on_drop(true);
        if let Some(drop) = &options.drop_statement {
            command.arg("--drop-statement").arg(drop);
        }
        let mut child = command.spawn().with_context(|| {
            format!("starting {} (run infra/moto.sh install)", python.display())
        })?;
        let stdout = child.stdout.take().context("emulator stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("READY ") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            let log = std::fs::read_to_string(dir.path().join("emulator.log")).unwrap_or_default();
            anyhow::bail!("the deployment failed:\n{log}");
        }
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
        Ok(Self {
            child,
            manifest,
            denials,
            dir,
        })
    }

    /// Every AWS call a function's role was denied so far.
    pub fn denials(&self) -> Vec<Denial> {
        let text = std::fs::read_to_string(&self.denials).unwrap_or_default();
        let mut all: Vec<Denial> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// From now on the next `count` calls of `action` by `function` fail
    /// with a 500 InternalServerError (0 ends the outage).
    pub async fn set_faults(&self, function: &str, action: &str, count: u64) -> anyhow::Result<()> {
        reqwest::Client::new()
            .post(format!("{}/__hub_faults", self.manifest.endpoint))
            .json(&serde_json::json!({ "function": function, "action": action, "count": count }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Every allowed AWS call of a function's role: (function, action) ->
    /// (calls, injected faults).
    pub fn allowed_calls(&self) -> BTreeMap<(String, String), (u64, u64)> {
        let mut path = self.denials.clone().into_os_string();
        path.push(".allowed");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Ok(call) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let key = (
                call["function"].as_str().unwrap_or_default().to_string(),
                call["action"].as_str().unwrap_or_default().to_string(),
            );
            let entry: &mut (u64, u64) = counts.entry(key).or_default();
            entry.0 += 1;
            entry.1 += u64::from(call["fault"].as_bool() == Some(true));
        }
        counts
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        admin_client!(self, aws_sdk_sqs)
    }

    pub fn scheduler(&self) -> aws_sdk_scheduler::Client {
        admin_client!(self, aws_sdk_scheduler)
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        admin_client!(self, aws_sdk_dynamodb)
    }

    /// The hub table through the hub's own adapter, as the administrator
    /// (to set up a state the functions then find).
    pub fn hub_store(&self) -> hub_adapters::aws::DynamoHubStore {
        let table = self
            .manifest
            .functions
            .values()
            .find_map(|f| f.environment.get("HUB_TABLE"))
            .cloned()
            .unwrap_or_default();
        hub_adapters::aws::DynamoHubStore::new(self.dynamodb(), table)
    }
}

/// The running stack: emulator, function instances, event sources.
pub struct Deployed {
    pub emulator: Emulator,
    pub functions: Functions,
    pub record: Arc<Record>,
    pub api_url: String,
    pub fired_schedules: Arc<Mutex<Vec<String>>>,
    /// How far the Scheduler's clock is ahead of the real one.
    pub scheduler_clock: Arc<Mutex<chrono::Duration>>,
    /// Functions that did not start, with why.
    pub not_started: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Deployed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Deployed {
    /// Deploys, starts every function's instances (all of them, so every
    /// one that cannot start is named), then the event sources.
    pub async fn start(
        input: &DeployInput,
        options: &Options,
        staff: HashMap<String, String>,
        gateway_listener: tokio::net::TcpListener,
    ) -> anyhow::Result<Self> {
        let emulator = Emulator::deploy(input, options).await?;
        let manifest = emulator.manifest.clone();
        let logs = emulator.dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let max = options.max_instances.max(1);
        let starts = manifest.functions.iter().map(|(id, spec)| {
            let wanted = manifest
                .event_source_mappings
                .iter()
                .filter(|m| &m.function == id && m.enabled)
                .map(|m| m.maximum_concurrency)
                .max()
                .unwrap_or(max)
                .min(spec.reserved_concurrency.unwrap_or(max))
                .min(max);
            let manifest = &manifest;
            let logs = &logs;
            async move {
                let Some(binary) = spec.binary.as_deref().and_then(binary) else {
                    return (
                        id.clone(),
                        Err(format!("{id}: no binary {:?}", spec.binary)),
                    );
                };
                let started = LambdaFunction::start(id, manifest, &binary, wanted, logs).await;
                (id.clone(), started)
            }
        });
        let mut functions = Functions::new();
        let mut not_started = Vec::new();
        // One at a time, so each init time is the function's own, not a
        // share of twenty processes starting at once.
        for start in starts {
            let (id, started) = start.await;
            match started {
                Ok(function) => {
                    functions.insert(id, Arc::new(function));
                }
                Err(why) => not_started.push(why),
            }
        }
        let record = Arc::new(Record::default());
        let mut tasks = Vec::new();
        let sqs = emulator.sqs();
        for mapping in manifest.event_source_mappings.iter().filter(|m| m.enabled) {
            let Some(function) = functions.get(&mapping.function) else {
                continue;
            };
            let pollers = mapping.maximum_concurrency.min(max).max(1);
            for _ in 0..pollers {
                tasks.push(tokio::spawn(sources::poll(
                    sqs.clone(),
                    mapping.clone(),
                    function.clone(),
                    manifest.region.clone(),
                    record.clone(),
                )));
            }
        }
        let fired_schedules = Arc::new(Mutex::new(Vec::new()));
        let scheduler_clock = Arc::new(Mutex::new(chrono::Duration::zero()));
        tasks.push(tokio::spawn(sources::schedule(
            emulator.scheduler(),
            sqs.clone(),
            functions.clone(),
            record.clone(),
            fired_schedules.clone(),
            scheduler_clock.clone(),
        )));
        let gateway = Arc::new(Gateway {
            routes: manifest.routes.clone(),
            functions: functions.clone(),
            stage: manifest.stage.clone().unwrap_or_else(|| "v1".into()),
            account: manifest.account.clone(),
            staff,
            record: record.clone(),
        });
        let (api_url, task) = sources::serve_gateway(gateway, gateway_listener)?;
        tasks.push(task);
        Ok(Self {
            emulator,
            functions,
            record,
            api_url,
            fired_schedules,
            scheduler_clock,
            not_started,
            tasks,
        })
    }

    /// Why the run is failing, if it is: functions that did not start,
    /// calls a role was denied (function, action, resource), failed
    /// invocations. Empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self.not_started.clone();
        problems.extend(
            self.emulator
                .denials()
                .iter()
                .map(|d| format!("AWS call denied: {d}")),
        );
        problems
    }

    /// The failure report: problems first, then failed invocations.
    pub fn diagnosis(&self) -> String {
        let mut lines = self.problems();
        let failures = self.record.failures.lock().unwrap();
        for failure in failures.iter().take(10) {
            lines.push(format!(
                "{} failed an invocation from {}: {}",
                failure.function, failure.source, failure.error
            ));
        }
        if failures.len() > 10 {
            lines.push(format!(
                "... and {} more failed invocations",
                failures.len() - 10
            ));
        }
        for (id, function) in &self.functions {
            if function.restarts() > 0 {
                lines.push(format!(
                    "{id}: {} instances replaced after a crash or a timeout",
                    function.restarts()
                ));
            }
        }
        let mut per_function: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let deliveries = self.record.deliveries.lock().unwrap();
        for delivery in deliveries.iter() {
            let entry = per_function.entry(&delivery.function).or_default();
            entry.0 += 1;
            entry.1 += usize::from(delivery.failed);
        }
        for (function, (all, failed)) in per_function {
            lines.push(format!(
                "{function}: {all} SQS messages delivered, {failed} reported failed"
            ));
        }
        lines.join("\n")
    }

    /// The CloudWatch embedded-metric-format records in every function's
    /// output, summed by metric name.
    pub fn emf_metrics(&self) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        let logs = self.emulator.dir.path().join("logs");
        for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("CloudWatchMetrics")) {
                let Ok(record) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let declared = record
                    .pointer("/_aws/CloudWatchMetrics")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.get("Metrics")?.as_array())
                    .flatten()
                    .filter_map(|m| m.get("Name")?.as_str());
                for name in declared {
                    let value = record.get(name).and_then(Value::as_f64).unwrap_or(0.0);
                    *sums.entry(name.to_string()).or_insert(0.0) += value;
                }
            }
        }
        sums
    }

    /// Fires a recurring (rate or cron) schedule once as EventBridge
    /// Scheduler would: its target function invoked with its Input. The
    /// schedule is the one whose Input is `input`; the answer is the
    /// function's response.
    pub async fn fire_recurring_schedule(&self, input: &Value) -> Result<Value, String> {
        let scheduler = self.emulator.scheduler();
        let listed = scheduler
            .list_schedules()
            .send()
            .await
            .map_err(|e| format!("listing schedules: {e}"))?;
        for summary in listed.schedules {
            let Some(name) = summary.name.clone() else {
                continue;
            };
            let schedule = scheduler
                .get_schedule()
                .name(&name)
                .set_group_name(summary.group_name.clone())
                .send()
                .await
                .map_err(|e| format!("reading schedule {name}: {e}"))?;
            let recurring = schedule
                .schedule_expression()
                .is_some_and(|e| e.starts_with("rate(") || e.starts_with("cron("));
            let Some(target) = schedule.target() else {
                continue;
            };
            let given: Option<Value> = target.input().and_then(|i| serde_json::from_str(i).ok());
            if !recurring || given.as_ref() != Some(input) {
                continue;
            }
            let function = self
                .functions
                .values()
                .find(|f| f.spec.arn == target.arn())
                .ok_or_else(|| format!("schedule {name} targets {}", target.arn()))?;
            return match function.invoke(input.clone()).await? {
                runtime::Outcome::Response(answer) => Ok(answer),
                runtime::Outcome::Error(error) => Err(format!(
                    "{} failed schedule {name}: {error}\n{}",
                    function.logical_id,
                    self.diagnosis()
                )),
            };
        }
        Err(format!("no recurring schedule with the input {input}"))
    }

    /// Each function's init times (one per instance).
    pub fn init_times(&self) -> BTreeMap<String, Vec<Duration>> {
        self.functions
            .iter()
            .map(|(id, f)| (id.clone(), f.init_times.clone()))
            .collect()
    }
}

/// Fails with the diagnosis as soon as there is a problem, or when `check`
/// has not held within `limit`.
pub async fn wait_for<F, Fut>(
    deployed: &Deployed,
    what: &str,
    limit: Duration,
    mut check: F,
) -> Result<Value, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let start = std::time::Instant::now();
    loop {
        if !deployed.problems().is_empty() {
            return Err(format!(
                "while waiting for {what}:\n{}",
                deployed.diagnosis()
            ));
        }
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > limit {
            return Err(format!(
                "{what} did not happen in {limit:?}\n{}",
                deployed.diagnosis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
