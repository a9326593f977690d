//! The SMS Engagement Hub's core: the domain (pure rules), the ports (narrow
//! async traits to the outside world), the handlers every Lambda function and
//! the local stack run, and the staff API's HTTP routes. No adapter, no
//! simulator and no Lambda type lives here.

pub mod domain;
pub mod handlers;
pub mod http;
pub mod ports;
