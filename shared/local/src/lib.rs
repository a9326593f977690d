//! The embedded local stack: SQLite store, durable local queue and timer
//! scheduler ([`embedded`]), the whole hub in one process over the
//! simulators ([`LocalStack`]), the demo driver ([`demo`]) and the
//! realistic-limits scenario in virtual time ([`bench`]).

pub mod bench;
pub mod demo;
pub mod embedded;
mod stack;

pub use stack::*;
