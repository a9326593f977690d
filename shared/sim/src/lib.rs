//! Simulators for the embedded stack and the tests: a synthetic GP estate
//! ([`GpEstate`], a [`hub_core::ports::GpConnector`]) and an SMS / email /
//! letter gateway ([`GatewaySim`]), both with fault injection; NHS England's
//! `mesh-sandbox` and simulated MESH practices ([`mesh`]).

mod gateway;
mod gp_estate;
pub mod http;
pub mod mesh;

pub use gateway::*;
pub use gp_estate::*;
