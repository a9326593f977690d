//! Narrow async traits between the handlers and the outside world. Each has
//! an embedded adapter (SQLite, simulators) and a real one (AWS, Notify, FHIR).

mod gp;
mod providers;
mod queue;
mod secrets;
mod store;

pub use gp::*;
pub use providers::*;
pub use queue::*;
pub use secrets::*;
pub use store::*;

use chrono::{DateTime, Utc};

/// Wall clock, a port so tests can move time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
