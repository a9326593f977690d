//! `hub local serve`: the staff API's router (the one the api function
//! serves on Lambda) over HTTP on the embedded local stack, with SigV4
//! checked against local credentials as API Gateway's IAM authorisation
//! would, in a middleware in front of it.

use crate::client::CliError;
use crate::sigv4::{read_credentials_file, LocalIdentity, SignedRequest, Verifier};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hub_core::domain::{AccessPolicy, StaffId};
use hub_core::http::{Caller, HttpError, NotAuthenticated, MAX_BODY};
use hub_local::demo::DemoOptions;
use hub_local::LocalStack;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Hub roles: ROLE=PATTERN[,PATTERN] (repeatable; roles requester,
    /// approver, registry_admin, auditor; a pattern matches an identity's
    /// ARN, `user/NAME` or assumed-role name, `*` a run of characters).
    /// Without any, every local identity holds every role.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// TEST ONLY: also accept unsigned requests whose `x-hub-test-identity`
    /// header names the caller. For fuzzing; never expose such a server.
    #[arg(long)]
    insecure_test_identity: bool,
}

/// What the authenticating middleware checks callers against.
struct Authenticator {
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
    if !args.roles.is_empty() {
        config.hub.access = AccessPolicy::parse(&args.roles.join(";"))
            .map_err(|e| CliError::usage(format!("--role: {e}")))?;
    }
    config.hub.optout_base_url = format!("http://{address}");
    let config_open = config.hub.access.open;
    let stack = LocalStack::start(config)
        .await
        .map_err(|e| CliError::Failure(e.context("starting the local stack")))?;
    let authenticator = Arc::new(Authenticator {
        verifier: Verifier::new(identities, &region),
        insecure_test_identity: args.insecure_test_identity,
    });
    let app = hub_core::http::router(stack.hub.clone()).layer(
        axum::middleware::from_fn_with_state(authenticator.clone(), authenticate),
    );

    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "hub local serve: listening on http://{address}");
    let _ = writeln!(
        stdout,
        "  region {region}, service execute-api; {} practices, {} patients (seed {})",
        args.practices, args.patients, args.seed
    );
    for identity in authenticator.verifier.identities() {
        let _ = writeln!(
            stdout,
            "  identity {} = {}",
            identity.access_key_id, identity.arn
        );
    }
    if config_open {
        let _ = writeln!(
            stdout,
            "  every identity holds every role (give --role ROLE=PATTERN to limit them)"
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

    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    stack.shutdown();
    served.map_err(|e| CliError::Failure(anyhow::anyhow!("serving: {e}")))
}

/// Puts the caller a request is signed by (or, with
/// `--insecure-test-identity`, the one its test header names) in its
/// extensions as the [`Caller`]; why a signature was refused, as
/// [`NotAuthenticated`]. The router decides which routes need a caller.
async fn authenticate(
    State(authenticator): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, mut body) = request.into_parts();
    let test_identity = parts
        .headers
        .get(TEST_IDENTITY_HEADER)
        .filter(|_| authenticator.insecure_test_identity);
    let found = if let Some(identity) = test_identity {
        let identity = String::from_utf8_lossy(identity.as_bytes())
            .trim()
            .to_string();
        if identity.is_empty() || identity.len() > 200 {
            Err(format!("{TEST_IDENTITY_HEADER} must name the caller"))
        } else {
            Ok(Some(StaffId::new(identity)))
        }
    } else if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        // The signature covers the body: read it (within the limit) first.
        let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => return HttpError::PayloadTooLarge.into_response(),
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
        let signed = SignedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or_default(),
            headers: &headers,
            body: &bytes,
        };
        let verified = authenticator
            .verifier
            .verify(&signed, chrono::Utc::now())
            .map(|identity| Some(StaffId::new(identity.arn.clone())));
        body = axum::body::Body::from(bytes);
        verified.map_err(|error| error.to_string())
    } else {
        // Unsigned: no caller, as on API Gateway.
        Ok(None)
    };
    match found {
        Ok(Some(caller)) => {
            parts.extensions.insert(Caller(caller));
        }
        Ok(None) => {}
        Err(reason) => {
            parts.extensions.insert(NotAuthenticated(reason));
        }
    }
    next.run(Request::from_parts(parts, body)).await
}
