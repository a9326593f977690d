//! The simulators behind the real wire protocols, on 127.0.0.1 with an
//! ephemeral port: a GOV.UK Notify API and an AWS End User Messaging SMS
//! API over [`super::GatewaySim`]s, and a FHIR R4 server over a
//! [`super::GpEstate`]. The real adapters
//! (`adapters::notify`, `adapters::fhir`) talk to them exactly as they
//! talk to the real services.

// Handlers return an HTTP response as their error: its size does not
// matter on a test server.
#[allow(clippy::result_large_err)]
mod eum;
#[allow(clippy::result_large_err)]
mod fhir;
#[allow(clippy::result_large_err)]
mod notify;
#[allow(clippy::result_large_err)]
mod smart_auth;

pub use eum::*;
pub use fhir::*;
pub use notify::*;

/// Aborts the server task when the last handle goes.
struct ServerTask(tokio::task::JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A listener on 127.0.0.1 with an ephemeral port.
async fn bind() -> std::io::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> ServerTask {
    ServerTask(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "simulator server stopped");
        }
    }))
}
