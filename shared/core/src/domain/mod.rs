//! Pure types and rules: no I/O.

mod access;
mod campaign;
mod mobile;
mod nhs_number;
mod ods;
mod outcome;
pub mod pacing;
mod participation;
mod personal;
pub mod plan;
mod postcode;
#[cfg(test)]
mod proptests;
mod recipient;
mod target;
mod template;

pub use access::*;
pub use campaign::*;
pub use mobile::*;
pub use nhs_number::*;
pub use ods::*;
pub use outcome::*;
pub use participation::*;
pub use personal::*;
pub use postcode::*;
pub use recipient::*;
pub use target::*;
pub use template::*;
