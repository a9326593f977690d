//! Helpers for the AWS wire tests: an AWS API emulator (moto) on loopback,
//! and per-test stacks whose tables, queues, secrets and schedule groups are
//! created from `template.yaml`, so the template and the code cannot drift.
//!
//! The emulator is `HUB_MOTO_ENDPOINT` when set (e.g. from
//! `infra/moto.sh start`); otherwise one is started for this test process
//! with the Python of `HUB_VENV` (default `<repo>/.venv-aws`, installed by
//! `infra/moto.sh install` on first use) on 127.0.0.1 and a free port, and
//! stops when the process ends.

pub mod harness;
pub mod template;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, SseSpecification, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use hub_adapters::aws::{
    self, DynamoHubStore, DynamoPatientStore, EventBridgeScheduler, ScheduleTargets,
    SecretsManagerSecrets, SqsJobQueue,
};
use rand::Rng;
use serde_yaml::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use template::{as_u64, Resolver, Template};

pub const REGION: &str = "eu-west-2";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

/// Starts moto in a Python process that exits when its stdin closes, i.e.
/// when this test process ends, whatever way it ends.
// DynamoDB applies each conditional write atomically; moto's threaded
// server does not serialise them, so two racing compare-and-sets could
// both pass. One request at a time restores DynamoDB's guarantee.
const MOTO_LAUNCHER: &str = r#"
import sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def one_at_a_time(environ, start_response):
    with lock:
        return list(app(environ, start_response))
server = make_server("127.0.0.1", 0, one_at_a_time, threaded=True)
print(server.server_address[1], flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
server.shutdown()
"#;

pub struct Emulator {
    pub endpoint: String,
    /// Kept for the life of the process: its stdin is the emulator's lifeline.
    _child: Option<Child>,
}

static EMULATOR: OnceLock<Result<Emulator, String>> = OnceLock::new();

fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn start_emulator() -> Result<Emulator> {
    if let Some(endpoint) = std::env::var("HUB_MOTO_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    {
        return Ok(Emulator {
            endpoint,
            _child: None,
        });
    }
    let venv = std::env::var_os("HUB_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-aws"));
    let python = venv.join("bin").join("python");
    if !venv.join("bin").join("moto_server").exists() {
        // First use on this machine: the project's script installs moto.
        let status = Command::new("bash")
            .arg(repo_root().join("infra").join("moto.sh"))
            .arg("install")
            .env("HUB_VENV", &venv)
            .status()
            .context("running infra/moto.sh install")?;
        if !status.success() {
            bail!(
                "no emulator: set HUB_MOTO_ENDPOINT (see infra/moto.sh), or HUB_VENV to a venv \
                 with moto[server]; `infra/moto.sh install` into {} failed",
                venv.display()
            );
        }
    }
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(MOTO_LAUNCHER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting moto with {}", python.display()))?;
    let stdout = child.stdout.take().context("moto's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading moto's port")?;
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("moto printed {line:?} instead of its port"))?;
    Ok(Emulator {
        endpoint: format!("http://127.0.0.1:{port}"),
        _child: Some(child),
    })
}

/// The shared emulator. The first call also points the AWS SDK's standard
/// configuration at it (`AWS_ENDPOINT_URL`, region, dummy credentials), so
/// the adapters are built exactly as on Lambda.
pub fn emulator() -> &'static Emulator {
    let result = EMULATOR.get_or_init(|| {
        let emulator = start_emulator().map_err(|e| format!("{e:#}"))?;
        // Set once, before any SDK configuration is loaded; every other test
        // thread waits on this `OnceLock`.
        std::env::set_var("AWS_ENDPOINT_URL", &emulator.endpoint);
        std::env::set_var("AWS_REGION", REGION);
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
        Ok(emulator)
    });
    match result {
        Ok(emulator) => emulator,
        Err(message) => panic!("AWS emulator unavailable: {message}"),
    }
}

/// A fresh random prefix for one test's resources.
pub fn unique_prefix() -> String {
    let n: u32 = rand::thread_rng().gen();
    format!("t{n:08x}")
}

/// SDK clients built from the standard configuration chain.
#[derive(Clone)]
pub struct Clients {
    pub config: aws_config::SdkConfig,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub scheduler: aws_sdk_scheduler::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl Clients {
    pub async fn from_env() -> Self {
        emulator();
        let config = aws::load_sdk_config().await;
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            scheduler: aws_sdk_scheduler::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
            config,
        }
    }
}

/// The template's resources, created under a fresh prefix.
pub struct Stack {
    pub prefix: String,
    pub clients: Clients,
    pub template: Template,
    pub resolver: Resolver,
    /// Logical id -> physical name (tables, queues, secrets, schedule groups).
    pub names: HashMap<String, String>,
}

impl Stack {
    /// Creates every DynamoDB table, SQS queue (with its redrive policy),
    /// secret and schedule group `template.yaml` declares.
    pub async fn create() -> Result<Self> {
        let clients = Clients::from_env().await;
        let template = Template::load()?;
        let prefix = unique_prefix();
        let mut stack = Self {
            resolver: Self::base_resolver(&prefix, &template),
            prefix,
            clients,
            template,
            names: HashMap::new(),
        };
        stack.create_tables().await?;
        stack.create_queues().await?;
        stack.create_secrets().await?;
        stack.create_schedule_groups().await?;
        // Resources the emulator does not create: their ARNs as AWS names them.
        for resource in stack.template.resources() {
            let id = resource.logical_id.to_string();
            match resource.kind {
                "AWS::IAM::Role" => {
                    let arn = format!("arn:aws:iam::{ACCOUNT}:role/{}-{id}", stack.prefix);
                    stack.resolver.attributes.insert(format!("{id}.Arn"), arn);
                }
                "AWS::Serverless::Function" => {
                    let name = format!("{}-{id}", stack.prefix);
                    let arn = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}");
                    stack.resolver.refs.insert(id.clone(), name);
                    stack.resolver.attributes.insert(format!("{id}.Arn"), arn);
                }
                _ => {}
            }
        }
        Ok(stack)
    }

    fn base_resolver(prefix: &str, template: &Template) -> Resolver {
        let mut resolver = Resolver::default();
        for (name, value) in [
            ("AWS::Region", REGION),
            ("AWS::AccountId", ACCOUNT),
            ("AWS::Partition", "aws"),
            ("AWS::URLSuffix", "amazonaws.com"),
            ("AWS::StackName", prefix),
        ] {
            resolver.refs.insert(name.into(), value.into());
        }
        if let Some(parameters) = template.root.get("Parameters").and_then(Value::as_mapping) {
            for (name, body) in parameters {
                if let (Some(name), Some(default)) = (name.as_str(), body.get("Default")) {
                    if let Ok(value) = resolver.resolve(default) {
                        resolver.refs.insert(name.into(), value);
                    }
                }
            }
        }
        resolver
    }

    fn physical_name(&self, logical_id: &str) -> String {
        format!("{}-{logical_id}", self.prefix)
    }

    async fn create_tables(&mut self) -> Result<()> {
        let tables: Vec<(String, Value)> = self
            .template
            .resources_of("AWS::DynamoDB::Table")
            .iter()
            .map(|r| (r.logical_id.to_string(), r.properties.clone()))
            .collect();
        for (id, props) in tables {
            let name = self.physical_name(&id);
            let mut request = self
                .clients
                .dynamodb
                .create_table()
                .table_name(&name)
                .set_attribute_definitions(Some(attribute_definitions(&props)?))
                .set_key_schema(Some(key_schema(props.get("KeySchema"))?));
            if props.get("BillingMode").and_then(Value::as_str) == Some("PAY_PER_REQUEST") {
                request = request.billing_mode(BillingMode::PayPerRequest);
            } else {
                bail!("table {id} must be on-demand (PAY_PER_REQUEST)");
            }
            if let Some(indexes) = props
                .get("GlobalSecondaryIndexes")
                .and_then(Value::as_sequence)
            {
                for index in indexes {
                    request = request.global_secondary_indexes(global_index(index)?);
                }
            }
            if let Some(sse) = props.get("SSESpecification") {
                let enabled = sse.get("SSEEnabled").and_then(Value::as_bool) == Some(true);
                request =
                    request.sse_specification(SseSpecification::builder().enabled(enabled).build());
            }
            request
                .send()
                .await
                .with_context(|| format!("creating table {name}"))?;
            if let Some(ttl) = props.get("TimeToLiveSpecification") {
                let attribute = ttl
                    .get("AttributeName")
                    .and_then(Value::as_str)
                    .context("TTL attribute name")?;
                let enabled = ttl.get("Enabled").and_then(Value::as_bool) == Some(true);
                self.clients
                    .dynamodb
                    .update_time_to_live()
                    .table_name(&name)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .attribute_name(attribute)
                            .enabled(enabled)
                            .build()?,
                    )
                    .send()
                    .await
                    .with_context(|| format!("enabling TTL on {name}"))?;
            }
            let arn = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}");
            self.resolver.refs.insert(id.clone(), name.clone());
            self.resolver.attributes.insert(format!("{id}.Arn"), arn);
            self.names.insert(id, name);
        }
        Ok(())
    }

    async fn create_queues(&mut self) -> Result<()> {
        let queues: Vec<(String, Value)> = self
            .template
            .resources_of("AWS::SQS::Queue")
            .iter()
            .map(|r| (r.logical_id.to_string(), r.properties.clone()))
            .collect();
        // Every queue first, so each redrive policy can name its DLQ's ARN.
        for (id, props) in &queues {
            let name = self.physical_name(id);
            let mut request = self.clients.sqs.create_queue().queue_name(&name);
            for (key, attribute) in [
                ("VisibilityTimeout", QueueAttributeName::VisibilityTimeout),
                (
                    "MessageRetentionPeriod",
                    QueueAttributeName::MessageRetentionPeriod,
                ),
                ("DelaySeconds", QueueAttributeName::DelaySeconds),
            ] {
                if let Some(value) = props.get(key) {
                    request = request.attributes(attribute, self.resolver.resolve(value)?);
                }
            }
            let url = request
                .send()
                .await
                .with_context(|| format!("creating queue {name}"))?
                .queue_url
                .context("queue URL")?;
            let arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}");
            self.resolver.refs.insert(id.clone(), url);
            self.resolver.attributes.insert(format!("{id}.Arn"), arn);
            self.resolver
                .attributes
                .insert(format!("{id}.QueueName"), name.clone());
            self.names.insert(id.clone(), name);
        }
        for (id, props) in &queues {
            let Some(redrive) = props.get("RedrivePolicy") else {
                continue;
            };
            let target = self.resolver.resolve(
                redrive
                    .get("deadLetterTargetArn")
                    .context("deadLetterTargetArn")?,
            )?;
            let max = redrive
                .get("maxReceiveCount")
                .and_then(as_u64)
                .context("maxReceiveCount")?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": target,
                "maxReceiveCount": max,
            });
            self.clients
                .sqs
                .set_queue_attributes()
                .queue_url(self.queue_url(id)?)
                .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
                .send()
                .await
                .with_context(|| format!("setting the redrive policy of {id}"))?;
        }
        Ok(())
    }

    async fn create_secrets(&mut self) -> Result<()> {
        let secrets: Vec<(String, Value)> = self
            .template
            .resources_of("AWS::SecretsManager::Secret")
            .iter()
            .map(|r| (r.logical_id.to_string(), r.properties.clone()))
            .collect();
        for (id, props) in secrets {
            let name = self.physical_name(&id);
            let value = match props.get("GenerateSecretString") {
                Some(generate) => generated_secret(generate)?,
                None => self.resolver.resolve(
                    props
                        .get("SecretString")
                        .context("a secret needs SecretString or GenerateSecretString")?,
                )?,
            };
            let arn = self
                .clients
                .secrets
                .create_secret()
                .name(&name)
                .secret_string(value)
                .send()
                .await
                .with_context(|| format!("creating secret {name}"))?
                .arn
                .context("secret ARN")?;
            self.resolver.refs.insert(id.clone(), arn);
            self.names.insert(id, name);
        }
        Ok(())
    }

    async fn create_schedule_groups(&mut self) -> Result<()> {
        let groups: Vec<String> = self
            .template
            .resources_of("AWS::Scheduler::ScheduleGroup")
            .iter()
            .map(|r| r.logical_id.to_string())
            .collect();
        for id in groups {
            let name = self.physical_name(&id);
            let arn = self
                .clients
                .scheduler
                .create_schedule_group()
                .name(&name)
                .send()
                .await
                .with_context(|| format!("creating schedule group {name}"))?
                .schedule_group_arn;
            self.resolver.refs.insert(id.clone(), name.clone());
            self.resolver.attributes.insert(format!("{id}.Arn"), arn);
            self.names.insert(id, name);
        }
        Ok(())
    }

    pub fn queue_url(&self, logical_id: &str) -> Result<String> {
        self.resolver
            .refs
            .get(logical_id)
            .cloned()
            .ok_or_else(|| anyhow!("no queue {logical_id}"))
    }

    /// The functions' environment as `template.yaml` sets it (Globals),
    /// resolved against this stack.
    pub fn environment(&self) -> Result<HashMap<String, String>> {
        self.template
            .global_environment()
            .into_iter()
            .map(|(name, value)| Ok((name, self.resolver.resolve(&value)?)))
            .collect()
    }

    /// Reads a variable of the template's function environment, the way a
    /// Lambda `main` reads its own.
    pub fn lookup(&self) -> Result<impl Fn(&str) -> Option<String>> {
        let environment = self.environment()?;
        Ok(move |name: &str| environment.get(name).cloned())
    }

    pub fn hub_store(&self) -> Result<DynamoHubStore> {
        let table = aws::required(&self.lookup()?, aws::env::HUB_TABLE)?;
        Ok(DynamoHubStore::new(self.clients.dynamodb.clone(), table))
    }

    pub fn patient_store(&self) -> Result<DynamoPatientStore> {
        let lookup = self.lookup()?;
        let table = aws::required(&lookup, aws::env::PATIENT_DATA_TABLE)?;
        let hub_table = aws::required(&lookup, aws::env::HUB_TABLE)?;
        Ok(DynamoPatientStore::new(self.clients.dynamodb.clone(), table)
            .counting_receipts_in(hub_table))
    }

    pub fn job_queue(&self) -> Result<SqsJobQueue> {
        let urls = aws::queue_urls(&self.lookup()?)?;
        Ok(SqsJobQueue::new(self.clients.sqs.clone(), urls))
    }

    pub fn schedule_targets(&self) -> Result<ScheduleTargets> {
        Ok(ScheduleTargets::from_lookup(&self.lookup()?)?)
    }

    pub fn scheduler(&self) -> Result<EventBridgeScheduler> {
        Ok(EventBridgeScheduler::new(
            self.clients.scheduler.clone(),
            self.schedule_targets()?,
        ))
    }

    pub fn secrets(&self) -> SecretsManagerSecrets {
        SecretsManagerSecrets::new(self.clients.secrets.clone())
    }

    /// Receives and deletes every message on a queue (until it is empty).
    pub async fn drain(&self, logical_id: &str) -> Result<Vec<String>> {
        let url = self.queue_url(logical_id)?;
        let mut bodies = Vec::new();
        loop {
            let out = self
                .clients
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(bodies);
            }
            for message in messages {
                bodies.push(message.body.unwrap_or_default());
                if let Some(handle) = message.receipt_handle {
                    self.clients
                        .sqs
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .send()
                        .await?;
                }
            }
        }
    }
}

fn attribute_definitions(props: &Value) -> Result<Vec<AttributeDefinition>> {
    props
        .get("AttributeDefinitions")
        .and_then(Value::as_sequence)
        .context("AttributeDefinitions")?
        .iter()
        .map(|definition| {
            let name = definition
                .get("AttributeName")
                .and_then(Value::as_str)
                .context("AttributeName")?;
            let kind = match definition.get("AttributeType").and_then(Value::as_str) {
                Some("S") => ScalarAttributeType::S,
                Some("N") => ScalarAttributeType::N,
                Some("B") => ScalarAttributeType::B,
                other => bail!("attribute type {other:?}"),
            };
            Ok(AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()?)
        })
        .collect()
}

fn key_schema(schema: Option<&Value>) -> Result<Vec<KeySchemaElement>> {
    schema
        .and_then(Value::as_sequence)
        .context("KeySchema")?
        .iter()
        .map(|element| {
            let name = element
                .get("AttributeName")
                .and_then(Value::as_str)
                .context("AttributeName")?;
            let kind = match element.get("KeyType").and_then(Value::as_str) {
                Some("HASH") => KeyType::Hash,
                Some("RANGE") => KeyType::Range,
                other => bail!("key type {other:?}"),
            };
            Ok(KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()?)
        })
        .collect()
}

fn global_index(index: &Value) -> Result<GlobalSecondaryIndex> {
    let name = index
        .get("IndexName")
        .and_then(Value::as_str)
        .context("IndexName")?;
    let projection = index.get("Projection").context("Projection")?;
    let kind = match projection.get("ProjectionType").and_then(Value::as_str) {
        Some("ALL") => ProjectionType::All,
        Some("KEYS_ONLY") => ProjectionType::KeysOnly,
        Some("INCLUDE") => ProjectionType::Include,
        other => bail!("projection type {other:?}"),
    };
    let mut projection_builder = Projection::builder().projection_type(kind);
    if let Some(attributes) = projection
        .get("NonKeyAttributes")
        .and_then(Value::as_sequence)
    {
        for attribute in attributes.iter().filter_map(Value::as_str) {
            projection_builder = projection_builder.non_key_attributes(attribute);
        }
    }
    Ok(GlobalSecondaryIndex::builder()
        .index_name(name)
        .set_key_schema(Some(key_schema(index.get("KeySchema"))?))
        .projection(projection_builder.build())
        .build()?)
}

/// What `GenerateSecretString` would produce: a random alphanumeric string,
/// alone or under `GenerateStringKey` in the `SecretStringTemplate` object.
fn generated_secret(generate: &Value) -> Result<String> {
    let length = generate
        .get("PasswordLength")
        .and_then(as_u64)
        .unwrap_or(32) as usize;
    let random: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(length)
        .map(char::from)
        .collect();
    match (
        generate.get("SecretStringTemplate").and_then(Value::as_str),
        generate.get("GenerateStringKey").and_then(Value::as_str),
    ) {
        (Some(template), Some(key)) => {
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(template)
                    .context("SecretStringTemplate is not a JSON object")?;
            object.insert(key.to_string(), serde_json::Value::String(random));
            Ok(serde_json::Value::Object(object).to_string())
        }
        (None, None) => Ok(random),
        _ => bail!("SecretStringTemplate and GenerateStringKey go together"),
    }
}
