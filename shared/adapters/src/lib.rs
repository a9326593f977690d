//! Production implementations of the ports: GOV.UK Notify, FHIR R4 for the
//! GP systems, NHS MESH (CSV extracts), AWS End User Messaging (feature `eum`) and the AWS adapters
//! (feature `aws`: DynamoDB, SQS, EventBridge Scheduler, Secrets Manager).

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "eum")]
pub mod eum;
pub mod fhir;
pub mod mesh;
pub mod notify;
mod secret_json;
