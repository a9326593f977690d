//! Implementations of the ports.

pub mod embedded;
#[cfg(feature = "eum")]
pub mod eum;
pub mod fhir;
pub mod notify;
pub mod sim;
