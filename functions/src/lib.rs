//! The Lambda functions' shared glue: Lambda event types to handler calls
//! ([`lambda`]) and the hub built from a function's environment ([`wiring`]).
//! Each binary in `src/bin` is one function of `template.yaml`.

pub mod eum;
pub mod lambda;
pub mod metrics;
pub mod notify;
pub mod wiring;
