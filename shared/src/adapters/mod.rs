//! Implementations of the ports.

pub mod embedded;
pub mod sim;
