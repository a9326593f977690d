//! The deadline function: invoked by the one-time EventBridge Scheduler
//! schedule at a campaign's opt-out deadline.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::handlers::deadline::{fire_deadline, DeadlineOutcome};
use shared::ports::ScheduledAction;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::lambda::init_tracing();
    let wired = shared::wiring::hub_from_env().await?;
    let hub = &wired.hub;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ScheduledAction>| async move {
            let ScheduledAction::Deadline { campaign } = event.payload else {
                return Err(Error::from(
                    "the deadline function only takes deadline actions",
                ));
            };
            // An error makes the scheduler retry the invocation.
            let outcome = fire_deadline(hub, &campaign).await?;
            tracing::info!(campaign = %campaign, ?outcome, "deadline handled");
            Ok::<_, Error>(matches!(outcome, DeadlineOutcome::Frozen { .. }))
        },
    ))
    .await
}
