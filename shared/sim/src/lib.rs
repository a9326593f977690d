//! Simulators for the embedded stack and the tests: a synthetic GP estate
//! ([`GpEstate`], a [`hub_core::ports::GpConnector`]) and an SMS / email /
//! letter gateway ([`GatewaySim`]), both with fault injection.

mod gateway;
mod gp_estate;
pub mod http;

pub use gateway::*;
pub use gp_estate::*;
