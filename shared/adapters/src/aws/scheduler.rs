//! `Scheduler` on EventBridge Scheduler one-time schedules.
//!
//! Each [`ScheduledAction`] is one schedule named [`ScheduledAction::name`]
//! in the hub's schedule group: `at(yyyy-mm-ddThh:mm:ss)` in UTC, flexible
//! time window off, deleted by the service after it fires. A deadline
//! invokes the deadline function with the action's JSON as its event; a
//! purge sends a `Job::Purge` body to the purge queue. Scheduling again
//! replaces the schedule; cancelling a schedule that is gone is a no-op.

use super::fault::{backoff, Fault, FaultKind};
use async_trait::async_trait;
use aws_sdk_scheduler::types::{
    ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, RetryPolicy, ScheduleState,
    Target,
};
use aws_sdk_scheduler::Client;
use chrono::{DateTime, Duration, DurationRound, Utc};
use hub_core::ports::{Job, QueueError, ScheduledAction, Scheduler};

const ATTEMPTS: u32 = 4;
const BACKOFF_BASE: std::time::Duration = std::time::Duration::from_millis(100);
const BACKOFF_CAP: std::time::Duration = std::time::Duration::from_secs(2);

/// Where schedules go and what they may invoke. From the function's
/// configuration (`SCHEDULE_GROUP`, `DEADLINE_FUNCTION_ARN`,
/// `PURGE_QUEUE_ARN`, `SCHEDULER_ROLE_ARN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleTargets {
    /// The schedule group (`default` if the stack made none).
    pub group: String,
    pub deadline_function_arn: String,
    pub purge_queue_arn: String,
    /// The execution role EventBridge Scheduler assumes to invoke a target.
    pub role_arn: String,
}

#[derive(Clone, Debug)]
pub struct EventBridgeScheduler {
    client: Client,
    targets: ScheduleTargets,
}

/// The `at()` expression for `at`, whole seconds in UTC. Sub-second times
/// round up so nothing fires early; a time already past moves one minute
/// ahead, because a one-time schedule created for the past may never run.
pub fn at_expression(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let at = if at <= now {
        now + Duration::minutes(1)
    } else {
        at
    };
    let whole = at.duration_trunc(Duration::seconds(1)).unwrap_or(at);
    let rounded = if whole < at {
        whole + Duration::seconds(1)
    } else {
        whole
    };
    format!("at({})", rounded.format("%Y-%m-%dT%H:%M:%S"))
}

fn unexpected(
    context: &'static str,
) -> impl FnOnce(aws_sdk_scheduler::error::BuildError) -> QueueError {
    move |err| QueueError::Unexpected(anyhow::Error::new(err).context(context))
}

impl EventBridgeScheduler {
    pub fn new(client: Client, targets: ScheduleTargets) -> Self {
        Self { client, targets }
    }

    pub fn targets(&self) -> &ScheduleTargets {
        &self.targets
    }

    /// The target ARN and the input it is given for `action`.
    fn target(&self, action: &ScheduledAction) -> Result<Target, QueueError> {
        let (arn, input) = match action {
            ScheduledAction::Deadline { .. } => (
                &self.targets.deadline_function_arn,
                serde_json::to_string(action),
            ),
            ScheduledAction::Purge { campaign } => (
                &self.targets.purge_queue_arn,
                serde_json::to_string(&Job::Purge {
                    campaign: campaign.clone(),
                }),
            ),
        };
        let input = input.map_err(|e| {
            QueueError::Unexpected(anyhow::Error::new(e).context("encoding a schedule's input"))
        })?;
        Target::builder()
            .arn(arn)
            .role_arn(&self.targets.role_arn)
            .input(input)
            .retry_policy(
                RetryPolicy::builder()
                    .maximum_event_age_in_seconds(24 * 60 * 60)
                    .maximum_retry_attempts(185)
                    .build(),
            )
            .build()
            .map_err(unexpected("building a schedule target"))
    }

    fn description(action: &ScheduledAction) -> String {
        match action {
            ScheduledAction::Deadline { campaign } => {
                format!("Opt-out deadline of campaign {campaign}")
            }
            ScheduledAction::Purge { campaign } => {
                format!("Patient data purge of campaign {campaign}")
            }
        }
    }

    /// Flexible window off, and the action's target: the same for create
    /// and update, whose SDK builders are different types.
    fn window_and_target(
        &self,
        action: &ScheduledAction,
        operation: &'static str,
    ) -> Result<(FlexibleTimeWindow, aws_sdk_scheduler::types::Target), Fault> {
        let build_error = || Fault::new(FaultKind::Permanent, operation, "BuildError");
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(|_| build_error())?;
        let target = self.target(action).map_err(|_| build_error())?;
        Ok((window, target))
    }

    async fn create(
        &self,
        name: &str,
        expression: &str,
        action: &ScheduledAction,
    ) -> Result<(), Fault> {
        let (window, target) = self.window_and_target(action, "CreateSchedule")?;
        self.client
            .create_schedule()
            .name(name)
            .group_name(&self.targets.group)
            .schedule_expression(expression)
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window)
            .target(target)
            .action_after_completion(ActionAfterCompletion::Delete)
            .state(ScheduleState::Enabled)
            .description(Self::description(action))
            .send()
            .await
            .map_err(|e| Fault::from_sdk("CreateSchedule", &e, true))?;
        Ok(())
    }

    async fn update(
        &self,
        name: &str,
        expression: &str,
        action: &ScheduledAction,
    ) -> Result<(), Fault> {
        let (window, target) = self.window_and_target(action, "UpdateSchedule")?;
        self.client
            .update_schedule()
            .name(name)
            .group_name(&self.targets.group)
            .schedule_expression(expression)
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window)
            .target(target)
            .action_after_completion(ActionAfterCompletion::Delete)
            .state(ScheduleState::Enabled)
            .description(Self::description(action))
            .send()
            .await
            .map_err(|e| Fault::from_sdk("UpdateSchedule", &e, true))?;
        Ok(())
    }
}

#[async_trait]
impl Scheduler for EventBridgeScheduler {
    async fn schedule(
        &self,
        action: &ScheduledAction,
        at: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        // Validate the target before any call, so a bad one is not retried.
        self.target(action)?;
        let name = action.name();
        let expression = at_expression(at, Utc::now());
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)).await;
            }
            // Create; if it exists, replace it; if it vanished in between
            // (fired and deleted), go round and create it again.
            let fault = match self.create(&name, &expression, action).await {
                Ok(()) => return Ok(()),
                Err(fault) if fault.code == "ConflictException" => {
                    match self.update(&name, &expression, action).await {
                        Ok(()) => return Ok(()),
                        Err(fault) if fault.kind == FaultKind::NotFound => fault,
                        Err(fault) if fault.is_transient() => fault,
                        Err(fault) => return Err(fault.into()),
                    }
                }
                Err(fault) if fault.is_transient() => fault,
                Err(fault) => return Err(fault.into()),
            };
            last = Some(fault);
        }
        Err(match last {
            Some(fault) if fault.kind == FaultKind::NotFound => {
                QueueError::Unavailable(format!("schedule {name} kept changing: {fault}"))
            }
            Some(fault) => fault.into(),
            None => QueueError::Unavailable(format!("schedule {name} was not written")),
        })
    }

    async fn cancel(&self, action: &ScheduledAction) -> Result<(), QueueError> {
        let name = action.name();
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)).await;
            }
            let result = self
                .client
                .delete_schedule()
                .name(&name)
                .group_name(&self.targets.group)
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(err) => {
                    let fault = Fault::from_sdk("DeleteSchedule", &err, true);
                    match fault.kind {
                        FaultKind::NotFound => return Ok(()),
                        // A conflict means the schedule is being changed.
                        _ if fault.is_transient() || fault.code == "ConflictException" => {
                            last = Some(fault)
                        }
                        _ => return Err(fault.into()),
                    }
                }
            }
        }
        Err(match last {
            Some(fault) => QueueError::Unavailable(fault.to_string()),
            None => QueueError::Unavailable(format!("schedule {name} was not deleted")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn at_expressions_are_whole_seconds_in_the_future() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 14, 30, 0).unwrap();
        assert_eq!(at_expression(at, now), "at(2026-11-22T14:30:00)");
        let fraction = at + Duration::milliseconds(250);
        assert_eq!(at_expression(fraction, now), "at(2026-11-22T14:30:01)");
        let past = now - Duration::hours(1);
        assert_eq!(at_expression(past, now), "at(2026-11-22T09:01:00)");
    }
}
