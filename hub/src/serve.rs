//! `hub local serve`: the staff API's router over HTTP on the embedded local
//! stack, with SigV4 checked against local credentials as API Gateway's
//! IAM authorisation would.

use crate::client::CliError;
use crate::sigv4::{read_credentials_file, LocalIdentity, SignedRequest, Verifier};
use http_body_util::{BodyExt, Full, Limited};
use hub_core::domain::StaffId;
use hub_core::handlers::Hub;
use hub_core::http::{self, HttpRequest, HttpResponse, MAX_BODY};
use hub_local::demo::DemoOptions;
use hub_local::LocalStack;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The header `--insecure-test-identity` trusts as the caller.
pub const TEST_IDENTITY_HEADER: &str = "x-hub-test-identity";

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Port to listen on (0 picks a free one; the URL is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on. Loopback only unless you mean otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// GP practices in the synthetic region.
    #[arg(long, default_value_t = 12)]
    practices: usize,
    /// Registered patients across the region.
    #[arg(long, default_value_t = 30_000)]
    patients: u64,
    /// Seed for the synthetic region.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Simulated SMS providers.
    #[arg(long, default_value_t = 2)]
    providers: usize,
    /// Each simulated provider's rate limit, in fragments per second.
    #[arg(long, default_value_t = 2_500.0)]
    rate: f64,
    /// Keep the tables and queues in this SQLite file (default: in memory).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Local credentials file: [[identity]] entries with access_key_id,
    /// secret_access_key and arn.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// A local identity, ACCESS_KEY_ID:SECRET:ARN (repeatable).
    #[arg(long = "identity")]
    identities: Vec<String>,
    /// TEST ONLY: also accept unsigned requests whose `x-hub-test-identity`
    /// header names the caller. For fuzzing; never expose such a server.
    #[arg(long)]
    insecure_test_identity: bool,
}

struct State {
    hub: Hub,
    verifier: Verifier,
    insecure_test_identity: bool,
}

pub async fn run(args: ServeArgs, region: Option<String>) -> Result<(), CliError> {
    let region = region.unwrap_or_else(|| "eu-west-2".to_string());
    let mut identities = Vec::new();
    if let Some(path) = &args.credentials {
        identities.extend(read_credentials_file(path).map_err(CliError::Usage)?);
    }
    for flag in &args.identities {
        identities.push(LocalIdentity::parse_flag(flag).map_err(CliError::Usage)?);
    }
    if identities.is_empty() && !args.insecure_test_identity {
        return Err(CliError::usage(
            "no local identities: give --credentials FILE or --identity ACCESS_KEY_ID:SECRET:ARN",
        ));
    }
    if args.insecure_test_identity && !args.bind.is_loopback() {
        return Err(CliError::usage(
            "--insecure-test-identity is for tests on loopback only",
        ));
    }
    let listener = TcpListener::bind(SocketAddr::new(args.bind, args.port))
        .await
        .map_err(|e| {
            CliError::usage(format!("cannot listen on {}:{}: {e}", args.bind, args.port))
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::Failure(anyhow::anyhow!("no local address: {e}")))?;
    let options = DemoOptions {
        practices: args.practices,
        patients: args.patients,
        seed: args.seed,
        providers: args.providers,
        provider_rate: args.rate,
        database: args.db.clone(),
        ..DemoOptions::default()
    };
    let mut config = options.stack_config();
    config.hub.optout_base_url = format!("http://{address}");
    let stack = LocalStack::start(config)
        .await
        .map_err(|e| CliError::Failure(e.context("starting the local stack")))?;
    let state = Arc::new(State {
        hub: stack.hub.clone(),
        verifier: Verifier::new(identities, &region),
        insecure_test_identity: args.insecure_test_identity,
    });

    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "hub local serve: listening on http://{address}");
    let _ = writeln!(
        stdout,
        "  region {region}, service execute-api; {} practices, {} patients (seed {})",
        args.practices, args.patients, args.seed
    );
    for identity in state.verifier.identities() {
        let _ = writeln!(
            stdout,
            "  identity {} = {}",
            identity.access_key_id, identity.arn
        );
    }
    if args.insecure_test_identity {
        let _ = writeln!(
            stdout,
            "  WARNING: --insecure-test-identity: the {TEST_IDENTITY_HEADER} header is trusted \
             without a signature. For tests only."
        );
    }
    let _ = stdout.flush();

    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
                    });
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await
                    {
                        tracing::debug!(%error, "connection ended");
                    }
                });
            }
        }
    }
    stack.shutdown();
    Ok(())
}

async fn handle(state: &State, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let response = authenticate_and_route(state, request).await;
    let mut builder = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|_| {
            let mut fallback = hyper::Response::new(Full::new(Bytes::from_static(
                b"{\"code\":\"internal\",\"message\":\"internal error\",\"field\":null,\"errors\":[]}",
            )));
            *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}

async fn authenticate_and_route(state: &State, request: hyper::Request<Incoming>) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(_) => {
            return http::error_response(
                413,
                "payload_too_large",
                &format!("the request body must be at most {MAX_BODY} bytes"),
            )
        }
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let mut request = HttpRequest {
        method: parts.method.as_str().to_string(),
        path,
        query,
        headers,
        body,
        caller: None,
    };
    if !http::is_public(&request.path) {
        match caller(state, &request) {
            Ok(caller) => request.caller = Some(caller),
            Err(message) => {
                tracing::info!(method = %request.method, reason = %message, "request refused");
                return http::error_response(403, "forbidden", &message);
            }
        }
    }
    http::route(&state.hub, &request).await
}

fn caller(state: &State, request: &HttpRequest) -> Result<StaffId, String> {
    if state.insecure_test_identity {
        if let Some(identity) = request.header(TEST_IDENTITY_HEADER) {
            let identity = identity.trim();
            if identity.is_empty() || identity.len() > 200 {
                return Err(format!("{TEST_IDENTITY_HEADER} must name the caller"));
            }
            return Ok(StaffId(identity.to_string()));
        }
    }
    let signed = SignedRequest {
        method: &request.method,
        path: &request.path,
        query: &request.query,
        headers: &request.headers,
        body: &request.body,
    };
    state
        .verifier
        .verify(&signed, chrono::Utc::now())
        .map(|identity| StaffId(identity.arn.clone()))
        .map_err(|error| error.to_string())
}
