//! Test kit of the hub: one copy of the fixtures, and the contract suites
//! that every adapter of a port runs (one suite per port, run against every
//! adapter: SQLite and DynamoDB, the local queue and SQS).
//!
//! A backend runs a suite with a macro that expands to one named test per
//! contract case, each on fresh stores from the constructor it is given:
//!
//! ```ignore
//! async fn stores() -> hub_testkit::store::Stores {
//!     let store = Arc::new(SqliteStore::in_memory().unwrap());
//!     Stores { hub: store.clone(), patients: store, tamper: Arc::new(MyTamper) }
//! }
//! mod store {
//!     hub_testkit::store_contract!(super::stores);
//! }
//! ```
//!
//! A dev-dependency only: no production crate depends on it.

pub mod fixtures;
pub mod logs;
pub mod queue;
pub mod store;

/// One `#[tokio::test]` per store contract case, each on fresh stores from
/// `$stores`, an `async fn() -> Stores`. Needs `tokio` in the calling crate.
#[macro_export]
macro_rules! store_contract {
    ($stores:path) => {
        $crate::contract_cases!($stores, store;
            practices_are_upserted_and_listed_in_ods_order,
            campaigns_are_created_once_and_listed_oldest_first,
            update_campaign_is_compare_and_set,
            update_campaign_keeps_the_stored_counters,
            update_participation_is_compare_and_set,
            create_participations_leaves_existing_ones_alone,
            freeze_writes_campaign_and_participations_together,
            freeze_is_all_or_nothing,
            freeze_with_a_missing_participation_changes_nothing,
            freeze_beyond_one_transaction,
            put_chunks_keeps_an_existing_chunk,
            commit_extraction_moves_participation_and_counters_together,
            complete_chunk_stage_counts_each_stage_once,
            concurrent_stage_completions_decrement_once,
            a_chunk_stage_with_no_campaign_changes_nothing,
            delivery_receipts_are_recorded_and_counted_once_together,
            audit_is_listed_per_campaign_oldest_first,
            dedupe_keys_are_held_by_one_practice,
            key_holders_are_read_without_placing,
            a_key_is_taken_over_only_from_its_holder,
            standby_recipients_are_decided_once_and_only_as_standby,
            recipients_round_trip_in_index_order_and_are_overwritten,
            claim_takes_only_pending_recipients,
            a_stale_claim_is_released_once_and_never_over_a_newer_one,
            a_final_outcome_is_never_overwritten,
            racing_releases_of_stale_claims_let_one_worker_resend,
            statuses_deliveries_and_write_backs,
            delivery_is_recorded_once_and_write_back_marked,
            racing_claims_take_each_recipient_exactly_once,
            a_practice_retry_deletes_only_its_recipients,
            purge_deletes_a_campaign_to_zero,
            large_reads_return_everything,
            errors_never_quote_stored_patient_data,
            pace_buckets_are_compare_and_set,
            racing_reservations_share_one_rate,
        );
    };
}

/// One `#[tokio::test]` per queue contract case, each on fresh queues from
/// `$queues`, an `async fn() -> Queues`. Needs `tokio` in the calling crate.
#[macro_export]
macro_rules! queue_contract {
    ($queues:path) => {
        $crate::contract_cases!($queues, queue;
            jobs_reach_their_own_queue,
            sending_no_jobs_sends_nothing,
            delayed_jobs_arrive_after_their_delay,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! contract_cases {
    ($backend:path, $suite:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let backend = $backend().await;
                $crate::$suite::$case(&backend).await;
            }
        )*
    };
}
