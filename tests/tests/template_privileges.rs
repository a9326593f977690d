//! Least privilege in template.yaml, read statically: what each function's
//! role may do to the tables, which functions may read which secrets, and
//! the concurrency limits that protect GP systems and providers. (The
//! deployed-stack test judges every real request against the roles.)

#[path = "../src/aws/template.rs"]
#[allow(dead_code)]
mod template;

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use template::{intrinsic, Template};

/// The logical id a `!GetAtt X.Arn`, `!Ref X` or `!Sub "${X.Arn}/…"` names.
fn names(value: &Value) -> Vec<String> {
    if let Some(values) = value.as_sequence() {
        return values.iter().flat_map(names).collect();
    }
    match intrinsic(value) {
        Some((function, argument)) => {
            let text = match argument.as_str() {
                Some(text) => text.to_string(),
                None => argument
                    .as_sequence()
                    .and_then(|parts| parts.first())
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            let id = match function.as_str() {
                "Fn::Sub" => text
                    .trim_start_matches("${")
                    .split(['.', '}'])
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                _ => text.split('.').next().unwrap_or_default().to_string(),
            };
            vec![id]
        }
        None => vec![value.as_str().unwrap_or_default().to_string()],
    }
}

/// Every (action, resource id) a function's inline statements allow, and
/// the SAM policy templates it uses by name.
fn grants(function: &template::Resource<'_>) -> (BTreeSet<(String, String)>, Vec<String>) {
    let mut allowed = BTreeSet::new();
    let mut templates = Vec::new();
    for policy in function.properties["Policies"].as_sequence().unwrap() {
        // A policy under a condition counts as granted (the configured case).
        let policy = conditional_policy(policy).map_or(policy, |(_, granted)| granted);
        let Some(statements) = policy.get("Statement").and_then(Value::as_sequence) else {
            let name = policy.as_mapping().unwrap().keys().next().unwrap();
            let argument = policy.as_mapping().unwrap().values().next().unwrap();
            let target = argument
                .as_mapping()
                .and_then(|m| m.values().next())
                .map(names)
                .unwrap_or_default()
                .join(",");
            templates.push(format!("{}:{target}", name.as_str().unwrap()));
            continue;
        };
        for statement in statements {
            assert_eq!(statement["Effect"].as_str(), Some("Allow"));
            let actions: Vec<String> = match &statement["Action"] {
                Value::String(one) => vec![one.clone()],
                many => many
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
            };
            for resource in names(&statement["Resource"]) {
                for action in &actions {
                    allowed.insert((action.clone(), resource.clone()));
                }
            }
        }
    }
    (allowed, templates)
}

/// A policy granted only under a condition, `!If [Condition, policy,
/// !Ref AWS::NoValue]`: the condition and the policy.
fn conditional_policy(policy: &Value) -> Option<(String, &Value)> {
    let (function, arguments) = intrinsic(policy)?;
    if function != "Fn::If" {
        return None;
    }
    let [condition, granted, otherwise] = arguments.as_sequence()?.as_slice() else {
        panic!("Fn::If takes three arguments: {arguments:?}");
    };
    assert_eq!(
        names(otherwise),
        ["AWS::NoValue"],
        "a conditional policy grants nothing otherwise"
    );
    Some((condition.as_str()?.to_string(), granted))
}

/// What a function may act on, sorted: the targets of the SAM policy
/// template `template` and of inline grants of actions starting `action`.
fn targets(function: &template::Resource<'_>, template: &str, action: &str) -> Vec<String> {
    let (allowed, templates) = grants(function);
    let mut targets: Vec<String> = templates
        .iter()
        .filter_map(|t| t.strip_prefix(template))
        .map(str::to_string)
        .chain(
            allowed
                .iter()
                .filter(|(granted, _)| granted.starts_with(action))
                .map(|(_, resource)| resource.clone()),
        )
        .collect();
    targets.sort();
    targets
}

fn functions(t: &Template) -> BTreeMap<String, template::Resource<'_>> {
    t.resources_of("AWS::Serverless::Function")
        .into_iter()
        .map(|f| (f.logical_id.to_string(), f))
        .collect()
}

fn table_actions(allowed: &BTreeSet<(String, String)>, table: &str) -> BTreeSet<String> {
    allowed
        .iter()
        .filter(|(action, resource)| resource == table && action.starts_with("dynamodb:"))
        .map(|(action, _)| action.trim_start_matches("dynamodb:").to_string())
        .collect()
}

#[test]
fn each_role_has_only_the_table_actions_its_code_calls() {
    let t = Template::load().unwrap();
    let hub = ["GetItem", "PutItem", "UpdateItem", "Query"];
    let expected: [(&str, &[&str], &[&str]); 10] = [
        ("ApiFunction", &hub, &["Query"]),
        ("OptoutLinkFunction", &["GetItem", "PutItem"], &[]),
        ("ReceiptsFunction", &["UpdateItem"], &["UpdateItem"]),
        ("PracticeNoticesFunction", &hub, &[]),
        ("DeadlineFunction", &hub, &[]),
        (
            "ExtractFunction",
            &hub,
            &["BatchWriteItem", "PutItem", "Query"],
        ),
        ("SendFunction", &hub, &["GetItem", "Query", "UpdateItem"]),
        ("WritebackFunction", &hub, &["Query", "UpdateItem"]),
        ("LettersFunction", &hub, &["GetItem", "Query", "UpdateItem"]),
        // the watchdog records the texts it finds sent in a stuck chunk
        (
            "PurgeFunction",
            &hub,
            &["BatchWriteItem", "Query", "UpdateItem"],
        ),
    ];
    let all = functions(&t);
    assert_eq!(all.len(), expected.len());
    for (name, hub_actions, patient_actions) in expected {
        let (allowed, templates) = grants(&all[name]);
        assert!(
            templates.iter().all(|t| !t.starts_with("DynamoDB")),
            "{name} uses a SAM DynamoDB policy template: {templates:?}"
        );
        let sorted = |actions: &[&str]| -> BTreeSet<String> {
            actions.iter().map(|a| a.to_string()).collect()
        };
        assert_eq!(
            table_actions(&allowed, "HubTable"),
            sorted(hub_actions),
            "{name} on the hub table"
        );
        assert_eq!(
            table_actions(&allowed, "PatientDataTable"),
            sorted(patient_actions),
            "{name} on the patient-data table"
        );
    }
}

#[test]
fn each_role_reads_only_the_secrets_its_function_reads() {
    let t = Template::load().unwrap();
    let expected: [(&str, &[&str]); 10] = [
        ("ApiFunction", &[]),
        ("OptoutLinkFunction", &["OptoutLinkKeySecret"]),
        ("ReceiptsFunction", &["CallbackTokenSecret"]),
        (
            "PracticeNoticesFunction",
            &["NotifySecret", "OptoutLinkKeySecret"],
        ),
        ("DeadlineFunction", &[]),
        ("ExtractFunction", &["GP"]),
        ("SendFunction", &["NotifySecret"]),
        ("WritebackFunction", &["GP"]),
        ("LettersFunction", &["NotifySecret"]),
        // the watchdog asks Notify about a stuck chunk's claimed texts
        ("PurgeFunction", &["NotifySecret"]),
    ];
    let all = functions(&t);
    for (name, secrets) in expected {
        let read = targets(
            &all[name],
            "AWSSecretsManagerGetSecretValuePolicy:",
            "secretsmanager:GetSecretValue",
        );
        // An inline grant is `arn:…:secret:${GpSecretPrefix}*`.
        let read: Vec<String> = read
            .into_iter()
            .map(|secret| {
                if secret.ends_with("Secret") {
                    secret
                } else {
                    "GP".to_string()
                }
            })
            .collect();
        assert_eq!(read, secrets, "{name}");
    }
}

#[test]
fn each_role_sends_only_to_the_queues_its_function_feeds() {
    let t = Template::load().unwrap();
    let expected: [(&str, &[&str]); 10] = [
        // approve queues notices; cancel queues the purge; a decision on a
        // held practice is carried out by its extract job
        (
            "ApiFunction",
            &["ExtractQueue", "NoticesQueue", "PurgeQueue"],
        ),
        ("OptoutLinkFunction", &[]),
        ("ReceiptsFunction", &[]),
        ("PracticeNoticesFunction", &[]),
        ("DeadlineFunction", &["ExtractQueue"]),
        ("ExtractFunction", &["LettersQueue", "SendQueue"]),
        // a paused chunk comes back as a new, delayed send job
        ("SendFunction", &["SendQueue", "WritebackQueue"]),
        ("WritebackFunction", &[]),
        // letters are written back like texts
        ("LettersFunction", &["WritebackQueue"]),
        // the watchdog re-queues whatever is stuck
        (
            "PurgeFunction",
            &[
                "ExtractQueue",
                "LettersQueue",
                "PurgeQueue",
                "SendQueue",
                "WritebackQueue",
            ],
        ),
    ];
    let all = functions(&t);
    for (name, queues) in expected {
        let sent = targets(&all[name], "SQSSendMessagePolicy:", "sqs:SendMessage");
        assert_eq!(sent, queues, "{name}");
    }
}

#[test]
fn only_functions_that_schedule_may_and_only_through_the_scheduler_role() {
    let t = Template::load().unwrap();
    let arrange: &[&str] = &["scheduler:CreateSchedule", "scheduler:UpdateSchedule"];
    let expected: [(&str, &[&str]); 10] = [
        // schedules deadlines and purges, deletes them on cancel
        (
            "ApiFunction",
            &[
                "scheduler:CreateSchedule",
                "scheduler:DeleteSchedule",
                "scheduler:UpdateSchedule",
            ],
        ),
        ("OptoutLinkFunction", &[]),
        ("ReceiptsFunction", &[]),
        ("PracticeNoticesFunction", &[]),
        // the step that finishes a campaign arranges its purge
        ("DeadlineFunction", arrange),
        ("ExtractFunction", arrange),
        ("SendFunction", arrange),
        ("WritebackFunction", arrange),
        ("LettersFunction", arrange),
        // so does the watchdog when it finishes a stuck campaign
        ("PurgeFunction", arrange),
    ];
    let all = functions(&t);
    for (name, actions) in expected {
        let (allowed, _) = grants(&all[name]);
        let scheduling: BTreeSet<&str> = allowed
            .iter()
            .filter(|(action, _)| action.starts_with("scheduler:"))
            .map(|(action, _)| action.as_str())
            .collect();
        assert_eq!(
            scheduling.into_iter().collect::<Vec<_>>(),
            actions,
            "{name}"
        );
        let passes: Vec<&str> = allowed
            .iter()
            .filter(|(action, _)| action == "iam:PassRole")
            .map(|(_, role)| role.as_str())
            .collect();
        let expected_passes: &[&str] = if actions.is_empty() {
            &[]
        } else {
            &["SchedulerRole"]
        };
        assert_eq!(passes, expected_passes, "{name}");
    }
}

#[test]
fn every_queue_consumer_is_capped_and_may_delay_its_own_failed_messages() {
    let t = Template::load().unwrap();
    for (name, function) in functions(&t) {
        let (allowed, _) = grants(&function);
        let Some(events) = function
            .properties
            .get("Events")
            .and_then(Value::as_mapping)
        else {
            continue;
        };
        for event in events.values() {
            if event["Type"].as_str() != Some("SQS") {
                continue;
            }
            let properties = &event["Properties"];
            assert!(
                properties["ScalingConfig"]
                    .get("MaximumConcurrency")
                    .is_some(),
                "{name}: no MaximumConcurrency"
            );
            let queue = names(&properties["Queue"]).remove(0);
            assert!(
                allowed.contains(&("sqs:ChangeMessageVisibility".to_string(), queue.clone())),
                "{name} may not change the visibility of {queue}'s messages"
            );
            let others: Vec<_> = allowed
                .iter()
                .filter(|(action, resource)| {
                    action == "sqs:ChangeMessageVisibility" && *resource != queue
                })
                .collect();
            assert!(others.is_empty(), "{name}: {others:?}");
        }
    }
    // The GP systems: no more extractions or write-backs at once however
    // the functions are invoked.
    let all = functions(&t);
    for (name, parameter) in [
        ("ExtractFunction", "ExtractMaxConcurrency"),
        ("WritebackFunction", "WritebackMaxConcurrency"),
    ] {
        let reserved = &all[name].properties["ReservedConcurrentExecutions"];
        assert_eq!(names(reserved), [parameter], "{name}");
    }
}

#[test]
fn the_watchdog_runs_every_15_minutes_on_the_purge_function() {
    let t = Template::load().unwrap();
    let all = functions(&t);
    let events = &all["PurgeFunction"].properties["Events"];
    let watchdog: Vec<&Value> = events
        .as_mapping()
        .unwrap()
        .values()
        .filter(|e| e["Properties"]["Input"].as_str() == Some(r#"{"action":"watchdog"}"#))
        .collect();
    assert_eq!(watchdog.len(), 1, "one watchdog schedule: {events:?}");
    assert_eq!(watchdog[0]["Type"].as_str(), Some("ScheduleV2"));
    assert_eq!(
        watchdog[0]["Properties"]["ScheduleExpression"].as_str(),
        Some("rate(15 minutes)")
    );
    assert_eq!(watchdog[0]["Properties"]["State"].as_str(), Some("ENABLED"));
}

#[test]
fn only_send_may_text_through_end_user_messaging_and_only_its_configured_identity() {
    let t = Template::load().unwrap();
    for (name, function) in functions(&t) {
        let (allowed, _) = grants(&function);
        let texting: Vec<&(String, String)> = allowed
            .iter()
            .filter(|(action, _)| action.starts_with("sms-voice:") || action == "*")
            .collect();
        if name == "SendFunction" {
            assert_eq!(
                texting,
                [&(
                    "sms-voice:SendTextMessage".to_string(),
                    "EumOriginationIdentityArn".to_string()
                )],
                "send texts through the one origination identity configured"
            );
        } else {
            assert!(texting.is_empty(), "{name} may use End User Messaging");
        }
    }
    // Granted only when an identity is configured (empty: Notify only).
    let send = &functions(&t)["SendFunction"];
    let conditions: Vec<String> = send.properties["Policies"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(conditional_policy)
        .map(|(condition, _)| condition)
        .collect();
    assert_eq!(conditions, ["HasEum"]);
    let has_eum = &t.root["Conditions"]["HasEum"];
    let (not, inner) = intrinsic(has_eum).unwrap();
    assert_eq!(not, "Fn::Not");
    let (equals, operands) = intrinsic(&inner.as_sequence().unwrap()[0]).unwrap();
    assert_eq!(equals, "Fn::Equals");
    let operands = operands.as_sequence().unwrap();
    assert_eq!(names(&operands[0]), ["EumOriginationIdentityArn"]);
    assert_eq!(operands[1].as_str(), Some(""));
    assert_eq!(
        t.root["Parameters"]["EumOriginationIdentityArn"]["Default"].as_str(),
        Some(""),
        "off by default"
    );
}
