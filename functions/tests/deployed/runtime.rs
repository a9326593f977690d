//! The Lambda service's side of the Lambda Runtime API: each function
//! instance is its real binary in its own process, started with exactly the
//! environment its template gives it plus what Lambda adds (`AWS_LAMBDA_*`,
//! its role's credentials), polling `/2018-06-01/runtime/invocation/next`
//! on a runtime API server of its own.

use super::manifest::{Function, Manifest};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long an instance may take to reach its first `next` (Lambda's init
/// phase is limited to 10 s; a loaded test machine gets more).
const INIT_LIMIT: Duration = Duration::from_secs(60);

/// What an invocation ended with.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler's response (`/response`).
    Response(Value),
    /// The handler's error (`/error`): Lambda's `errorType`, `errorMessage`.
    Error(Value),
}

struct Invocation {
    id: String,
    payload: Value,
    deadline_ms: u128,
}

/// An invocation's waiting caller and, once taken, the instance running it.
struct Pending {
    reply: oneshot::Sender<Result<Outcome, String>>,
    instance: Option<usize>,
}

/// State shared by a function's instances: one queue of invocations, taken
/// by whichever instance asks for the next one, as Lambda routes them.
struct Shared {
    name: String,
    arn: String,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Per instance: when it first asked for an invocation.
    ready: Mutex<HashMap<usize, Instant>>,
    init_errors: Mutex<Vec<String>>,
    /// Instances replaced after a crash or a timeout.
    restarts: std::sync::atomic::AtomicUsize,
}

/// One function: its instances and the way to invoke it.
pub struct LambdaFunction {
    pub logical_id: String,
    pub spec: Function,
    shared: Arc<Shared>,
    send: mpsc::UnboundedSender<Invocation>,
    instances: Vec<Instance>,
    /// Each instance's init time (spawn to first `next`).
    pub init_times: Vec<Duration>,
}

struct Instance {
    child: Arc<tokio::sync::Mutex<tokio::process::Child>>,
    log: PathBuf,
    _server: tokio::task::JoinHandle<()>,
    _watch: tokio::task::JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // The supervisor first, so it does not start a replacement.
        self._watch.abort();
        self._server.abort();
        if let Ok(mut child) = self.child.try_lock() {
            let _ = child.start_kill();
        }
    }
}

/// Starts the process, its output appended to `log`.
fn launch(
    command: &mut tokio::process::Command,
    log: &FsPath,
) -> std::io::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    command.stdout(out.try_clone()?).stderr(out).spawn()
}

impl LambdaFunction {
    /// Starts `instances` processes of the function and waits for each to
    /// finish its init; the error says why one did not start.
    pub async fn start(
        logical_id: &str,
        manifest: &Manifest,
        binary: &FsPath,
        instances: usize,
        logs: &FsPath,
    ) -> Result<Self, String> {
        let spec = manifest.functions[logical_id].clone();
        let (send, receive) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            arn: spec.arn.clone(),
            queue: tokio::sync::Mutex::new(receive),
            pending: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
            init_errors: Mutex::new(Vec::new()),
            restarts: std::sync::atomic::AtomicUsize::new(0),
        });
        let mut function = Self {
            logical_id: logical_id.to_string(),
            spec,
            shared,
            send,
            instances: Vec::new(),
            init_times: Vec::new(),
        };
        for index in 0..instances {
            let started = Instant::now();
            let instance = function
                .spawn(index, manifest, binary, logs)
                .await
                .map_err(|error| format!("{logical_id} could not be started: {error}"))?;
            function.instances.push(instance);
            let init = function.wait_for_init(index, started).await?;
            function.init_times.push(init);
        }
        Ok(function)
    }

    async fn spawn(
        &self,
        index: usize,
        manifest: &Manifest,
        binary: &FsPath,
        logs: &FsPath,
    ) -> std::io::Result<Instance> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state((self.shared.clone(), index));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let spec = &self.spec;
        let log = logs.join(format!("{}-{index}.log", self.logical_id));
        let mut command = tokio::process::Command::new(binary);
        command
            .env_clear()
            .envs(&spec.environment)
            // What Lambda adds to every provided.al2023 function.
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", spec.memory.to_string())
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("instance-{index}"))
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
            .env("AWS_REGION", &manifest.region)
            .env("AWS_DEFAULT_REGION", &manifest.region)
            .env("AWS_ACCESS_KEY_ID", &spec.credentials.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &spec.credentials.secret_access_key)
            .env("AWS_SESSION_TOKEN", &spec.credentials.session_token)
            // The only difference from AWS: every SDK call goes to the
            // IAM-enforcing emulator.
            .env("AWS_ENDPOINT_URL", &manifest.endpoint)
            .env("_HANDLER", "bootstrap")
            .env("LAMBDA_TASK_ROOT", "/var/task")
            .env("TZ", ":UTC")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = Arc::new(tokio::sync::Mutex::new(launch(&mut command, &log)?));
        let watch = tokio::spawn(supervise(
            child.clone(),
            self.shared.clone(),
            index,
            command,
            log.clone(),
        ));
        Ok(Instance {
            child,
            log,
            _server: server,
            _watch: watch,
        })
    }

    async fn wait_for_init(&self, index: usize, started: Instant) -> Result<Duration, String> {
        loop {
            if let Some(ready) = self.shared.ready.lock().unwrap().get(&index) {
                return Ok(ready.duration_since(started));
            }
            let init_error = self.shared.init_errors.lock().unwrap().first().cloned();
            let exited = self.instances[index]
                .child
                .lock()
                .await
                .try_wait()
                .ok()
                .flatten();
            let why = match (init_error, exited) {
                (Some(error), _) => Some(format!("init error {error}")),
                (None, Some(status)) => Some(format!("exited during init ({status})")),
                _ if started.elapsed() > INIT_LIMIT => {
                    Some(format!("no call to /next in {INIT_LIMIT:?}"))
                }
                _ => None,
            };
            if let Some(why) = why {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "{} ({}) did not start: {why}; its last log lines:\n{}",
                    self.logical_id,
                    self.spec.name,
                    self.log_tail(index, 10)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills an instance's process, as a crash would.
    pub async fn crash(&self, index: usize) {
        if let Some(instance) = self.instances.get(index) {
            let _ = instance.child.lock().await.start_kill();
        }
    }

    /// How many instances were replaced after a crash or a timeout.
    pub fn restarts(&self) -> usize {
        self.shared
            .restarts
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last lines an instance wrote (no patient data: the functions log
    /// none, which `no_patient_data_in_logs` checks).
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.instances[index].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Invokes the function synchronously, as the SQS poller, the
    /// Scheduler and API Gateway do; limited by the template's Timeout.
    pub async fn invoke(&self, payload: Value) -> Result<Outcome, String> {
        let id = uuid::Uuid::new_v4().to_string();
        let timeout = Duration::from_secs(self.spec.timeout);
        let deadline = std::time::SystemTime::now() + timeout;
        let deadline_ms = deadline
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let (reply, answer) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(
            id.clone(),
            Pending {
                reply,
                instance: None,
            },
        );
        self.send
            .send(Invocation {
                id: id.clone(),
                payload,
                deadline_ms,
            })
            .map_err(|_| format!("{} is not running", self.logical_id))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("{}: the invocation was dropped", self.logical_id)),
            Err(_) => {
                // Lambda stops the environment of a timed-out invocation;
                // its supervisor starts a fresh one.
                let holder = self
                    .shared
                    .pending
                    .lock()
                    .unwrap()
                    .remove(&id)
                    .and_then(|p| p.instance);
                if let Some(instance) = holder.and_then(|i| self.instances.get(i)) {
                    let _ = instance.child.lock().await.start_kill();
                }
                Err(format!(
                    "{}: Task timed out after {} seconds",
                    self.logical_id, self.spec.timeout
                ))
            }
        }
    }
}

/// Instances an invocation may replace (crash or timeout) before the
/// function is left with fewer.
const MAX_RESTARTS: usize = 5;

/// An instance that exits fails the invocation it was running, as Lambda
/// reports `Runtime.ExitError`, and is replaced by a fresh process (a cold
/// start), as Lambda replaces an environment; one that never finished its
/// init is not (its failure is the start's).
async fn supervise(
    child: Arc<tokio::sync::Mutex<tokio::process::Child>>,
    shared: Arc<Shared>,
    index: usize,
    mut command: tokio::process::Command,
    log: PathBuf,
) {
    use std::sync::atomic::Ordering;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(status) = child.lock().await.try_wait().ok().flatten() else {
            continue;
        };
        {
            let mut pending = shared.pending.lock().unwrap();
            let running: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.instance == Some(index))
                .map(|(id, _)| id.clone())
                .collect();
            for id in running {
                if let Some(p) = pending.remove(&id) {
                    let _ = p.reply.send(Err(format!(
                        "{}: Runtime.ExitError ({status})",
                        shared.name
                    )));
                }
            }
        }
        let started = shared.ready.lock().unwrap().contains_key(&index);
        if !started || shared.restarts.load(Ordering::SeqCst) >= MAX_RESTARTS {
            return;
        }
        shared.restarts.fetch_add(1, Ordering::SeqCst);
        match launch(&mut command, &log) {
            Ok(fresh) => *child.lock().await = fresh,
            Err(_) => return,
        }
    }
}

type RuntimeState = (Arc<Shared>, usize);

async fn next(State((shared, index)): State<RuntimeState>) -> Response {
    shared
        .ready
        .lock()
        .unwrap()
        .entry(index)
        .or_insert_with(Instant::now);
    let invocation = loop {
        let Some(invocation) = shared.queue.lock().await.recv().await else {
            return StatusCode::GONE.into_response();
        };
        // One whose caller gave up (timed out) is not run.
        if let Some(pending) = shared.pending.lock().unwrap().get_mut(&invocation.id) {
            pending.instance = Some(index);
            break invocation;
        }
    };
    let mut headers = HeaderMap::new();
    let pairs = [
        ("lambda-runtime-aws-request-id", invocation.id.clone()),
        (
            "lambda-runtime-deadline-ms",
            invocation.deadline_ms.to_string(),
        ),
        ("lambda-runtime-invoked-function-arn", shared.arn.clone()),
        (
            "lambda-runtime-trace-id",
            format!("Root=1-{}", invocation.id),
        ),
    ];
    for (name, value) in pairs {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, invocation.payload.to_string()).into_response()
}

fn settle(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.pending.lock().unwrap().remove(id) {
        Some(pending) => {
            let _ = pending.reply.send(Ok(outcome));
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(
    State((shared, _)): State<RuntimeState>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    settle(&shared, &id, Outcome::Response(value))
}

async fn error(
    State((shared, _)): State<RuntimeState>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    settle(&shared, &id, Outcome::Error(value))
}

async fn init_error(State((shared, _)): State<RuntimeState>, body: Bytes) -> StatusCode {
    shared
        .init_errors
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    StatusCode::ACCEPTED
}
