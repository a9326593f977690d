//! The SMS Engagement Hub: domain, ports, adapters and the handlers that
//! every Lambda function and the embedded local stack run.

pub mod adapters;
pub mod domain;
pub mod handlers;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod local;
pub mod ports;
#[cfg(all(feature = "aws", feature = "lambda"))]
pub mod wiring;
