//! Implementations of the ports.

#[cfg(feature = "aws")]
pub mod aws;
pub mod embedded;
#[cfg(feature = "eum")]
pub mod eum;
pub mod fhir;
pub mod notify;
pub mod sim;
