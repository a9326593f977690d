//! The embedded local stack: SQLite store, durable local queue and timer
//! scheduler ([`embedded`]), the whole hub in one process over the
//! simulators ([`LocalStack`]) and the demo driver ([`demo`]).

pub mod demo;
pub mod embedded;
mod stack;

pub use stack::*;
