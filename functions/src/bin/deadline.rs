//! The deadline function: invoked by the one-time EventBridge Scheduler
//! schedule at a campaign's opt-out deadline.

use functions::lambda::InvocationError;
use hub_core::handlers::deadline::{fire_deadline, DeadlineOutcome};
use hub_core::ports::ScheduledAction;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    functions::lambda::init_tracing();
    let hub = functions::wiring::hub_from_env(functions::wiring::Function::Deadline).await?;
    let hub = &hub;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ScheduledAction>| async move {
            let ScheduledAction::Deadline { campaign } = event.payload else {
                return Err(InvocationError::WrongEvent("a purge action"));
            };
            // An error makes the scheduler retry the invocation.
            let outcome = fire_deadline(hub, &campaign).await?;
            tracing::info!(campaign = %campaign, ?outcome, "deadline handled");
            Ok(matches!(outcome, DeadlineOutcome::Frozen { .. }))
        },
    ))
    .await
}
