//! The conformance suite: every behaviour a Happen user relies on, written once
//! and run against each runtime. A runtime joins by implementing [`Backend`]
//! and invoking [`conformance_suite!`] in its own test file.
//!
//! Each topic has its own module; this one holds the [`Backend`] trait, the
//! helpers the topics share, and the macro that lists every test per topic.
//!
//! # An unlisted test fails the build
//!
//! A test is a `pub async fn name(backend: &dyn Backend)` in a topic module, and
//! it only runs if `conformance_suite!` lists it under that topic. Nothing
//! outside the macro calls it, so `#![deny(dead_code)]` below turns a test that
//! is missing from the list into a compile error in every runner:
//!
//! ```text
//! error: function `name` is never used
//! ```
//!
//! `pub` does not exempt it: a test binary is a crate that exports nothing, so
//! only what its tests reach is used. The lint is inherited by the topic
//! modules, and it catches an unused helper the same way. The converse, a name
//! that is listed but not defined (or listed under the wrong topic), is an
//! unresolved path; a name listed twice is a duplicate definition.
//!
//! Do not weaken this with `allow(dead_code)`: everything here is used by both
//! runners, and a helper only one runner needs belongs in that runner's file.

#![deny(dead_code)]

pub mod causality;
pub mod communication;
pub mod concurrency;
pub mod confluence;
pub mod continuum;
pub mod durability;
pub mod errors;
pub mod guards;
pub mod identity;
pub mod observation;
pub mod patterns;
pub mod robustness;
pub mod state;
pub mod streaming;
pub mod trace;
pub mod zero;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use happen::Causal;
use happen::prelude::*;
use tokio::sync::{Notify, mpsc};

/// Builds a fresh, isolated runtime for one test.
pub trait Backend: Send + Sync + 'static {
    /// A runtime with `config`.
    fn start(&self, config: HappenConfig) -> BoxFuture<'static, Happen>;
}

/// Generates one `#[tokio::test]` per conformance test for a backend, in one
/// module per topic: `causality::event_ids_are_time_ordered` runs
/// `conformance::causality::event_ids_are_time_ordered`. `$backend` is
/// evaluated afresh for every test.
///
/// `conformance_suite!(backend)` runs every test on a two-worker runtime;
/// `conformance_suite!(paused: backend)` on one thread with tokio's paused
/// clock, except the tests marked `@threads` (they need plain threads to
/// run while the runtime waits, which a paused clock cannot see: it would
/// jump to the next timer), which keep the two-worker runtime.
///
/// Every `pub async fn` of a topic module must be listed here under its topic;
/// one that is not fails the build (see the module documentation).
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr) => {
        $crate::conformance_suite!(@suite $backend;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]);
    };
    (paused: $backend:expr) => {
        $crate::conformance_suite!(@suite $backend;
            [tokio::test(flavor = "current_thread", start_paused = true)]
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]);
    };
    (@suite $backend:expr; [$runtime:meta] [$threads:meta]) => {
        fn conformance_backend() -> impl $crate::conformance::Backend {
            $backend
        }

        $crate::conformance_suite!(@topic [$runtime] [$threads] causality;
            causality_is_automatic_across_three_hops,
            user_correlation_id_is_inherited,
            origin_and_application_context_arrive,
            event_ids_are_time_ordered,
            response_event_carries_causal_context,
            spawned_work_keeps_causality,
            origin_and_application_context_flow_to_child_events,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] guards;
            asking_back_a_node_that_waits_is_a_deadlock,
            a_cycle_through_three_nodes_is_a_deadlock,
            asking_yourself_with_one_slot_is_a_deadlock,
            asking_back_with_a_free_slot_is_answered,
            asking_back_a_node_busy_with_other_work_waits_for_its_slot,
            an_event_of_two_handlers_waits_as_one_slot,
            one_waiting_flow_of_two_holds_their_only_slot,
            two_chains_holding_both_slots_are_a_deadlock,
            a_group_send_waits_as_one_flow,
            a_stream_read_to_its_end_no_longer_waits,
            a_wait_handed_to_a_task_no_longer_counts_once_its_flow_ends,
            a_late_wait_refuses_the_request_back_it_deadlocks,
            a_tell_in_the_chain_waits_for_the_slot,
            a_dropped_request_waits_for_the_slot_instead_of_deadlocking,
            a_spawned_follow_up_waits_for_a_busy_slot,
            waiting_for_a_stream_that_would_deadlock_is_refused,
            a_runaway_loop_stops_at_the_causal_depth,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] patterns;
            string_patterns_select_handlers,
            function_and_combinator_patterns_select_handlers,
            invalid_pattern_is_an_error_at_registration,
            invalid_event_type_is_rejected,
            invalid_and_duplicate_node_ids_are_rejected,
            broadcast_receivers_follow_handler_changes,
            a_shut_down_node_is_not_kept_by_broadcast_routes,
            a_removed_handler_is_not_kept_by_broadcast_routes,
            a_removed_handler_is_not_kept_by_another_handlers_flow,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] continuum;
            steps_chain_and_share_context,
            step_can_loop_with_again,
            step_can_name_itself_with_step_macro,
            steps_branch_on_conditions,
            every_return_form_completes_the_flow,
            context_describes_the_flow,
            node_local_value_reaches_every_step,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] errors;
            step_error_reaches_requester,
            error_in_later_step_reaches_requester,
            a_downstream_failure_reaches_the_requester_typed,
            failed_flows_are_counted_where_they_ran,
            panic_reaches_requester_and_node_keeps_serving,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] communication;
            broadcast_reaches_every_matching_node_including_sender,
            send_dispatches_without_awaiting,
            response_callback_receives_result,
            per_call_timeout,
            per_node_default_timeout,
            the_longest_timeout_waits_for_the_answer,
            no_handler_is_reported_at_once,
            unknown_node_is_reported_at_once,
            removed_handler_no_longer_runs,
            a_handler_removed_mid_queue_takes_no_later_events,
            several_handlers_each_run_and_first_registered_answers,
            tell_runs_the_flow_without_an_answer,
            typed_responses_with_response_as,
            synchronous_callers_block_where_waiting_stops_nothing @threads,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] concurrency;
            slow_flow_does_not_block_others,
            max_concurrent_bounds_running_flows,
            full_queue_is_reported_to_sender,
            node_id_patterns_override_limits,
            shutdown_drains_in_flight_flows,
            a_shutdown_out_of_time_starts_nothing_queued,
            node_shutdown_finishes_its_flows_and_frees_its_id,
            priority_queue_starts_higher_priorities_first,
            backpressure_is_reported_before_the_queue_is_full,
            a_request_does_not_overtake_events_sent_before_it,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] state;
            state_get_set_and_projection,
            concurrent_state_updates_are_atomic,
            views_see_other_nodes_and_missing_nodes_are_none,
            global_state_is_shared_and_watchable,
            global_watchers_miss_no_change,
            temporal_snapshots_record_the_causing_event,
            temporal_retention_by_count_and_age,
            state_of_reads_and_writes_without_becoming_the_node,
            snapshots_are_taken_for_selected_events_only,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] durability;
            failed_flow_is_retried_and_the_requester_gets_the_final_answer,
            a_retried_streaming_request_sends_its_items_nowhere,
            last_failure_is_dead_lettered_and_reported,
            saturated_durable_node_takes_events_later,
            exactly_once_re_run_emits_the_same_events,
            exactly_once_re_run_applies_its_state_changes_once,
            exactly_once_flows_of_one_event_emit_distinct_events,
            receipts_resolve_once_events_are_kept,
            broadcasts_to_durable_nodes_are_retried_and_taken_once,
            an_event_sent_to_a_group_reaches_each_durable_node,
            a_re_run_flow_gets_the_answer_to_its_request_again,
            a_node_falling_behind_is_reported_down_then_up,
            a_timed_out_request_to_a_durable_node_is_still_processed,
            zero_handlers_and_zero_events_stay_off_durable_nodes,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] identity;
            accept_from_admits_matching_senders_and_refuses_others,
            accept_from_sources_follows_the_origin_down_the_chain,
            a_refused_broadcast_is_counted_and_reported,
            accept_from_for_a_pattern_of_nodes,
            the_receiver_sees_the_hash_the_sender_made,
            signed_senders_are_verified_and_unsigned_refused_where_required,
            a_custom_verifier_decides,
            a_zero_handler_takes_what_its_nodes_rules_accept,
            each_member_of_a_batch_answers_for_its_own_origin,
            the_runtimes_own_reports_reach_nodes_that_require_signatures,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] observation;
            observers_see_stamps_deliveries_and_finishes,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] trace;
            the_recorder_answers_why_and_effects,
            the_recorder_names_slow_and_failed_flows,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] robustness;
            error_whose_display_panics_is_reported_and_node_keeps_serving,
            error_whose_drop_panics_leaves_the_node_serving,
            shutdown_awaited_in_the_nodes_own_handler_returns,
            panicking_matcher_counts_as_no_match,
            invalid_target_id_is_rejected,
            handler_ids_belong_to_their_node,
            timeout_counts_from_send,
            dropping_the_runtime_stops_its_nodes,
            dropping_the_runtime_ends_started_flows_and_refuses_the_rest,
            send_from_a_thread_outside_tokio,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] confluence;
            group_handler_runs_divergent_flows_per_node,
            a_node_named_twice_in_a_group_is_in_it_once,
            group_send_reports_each_nodes_outcome_separately,
            batch_is_one_invocation_with_each_events_context,
            batch_to_a_group,
            empty_and_mixed_batches_are_errors,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] zero;
            a_zero_tell_reaches_the_zero_handler_with_its_causal_context,
            a_zero_request_is_answered_with_a_zero_event_a_value_or_an_error,
            zero_and_ordinary_handlers_meet_at_the_boundary,
            a_zero_handler_continues_in_ordinary_steps,
            events_a_zero_handler_sends_carry_its_event_as_cause,
            acceptance_controls_and_off_apply_to_zero_handlers,
            shutdown_waits_for_queued_zero_events,
            a_zero_request_does_not_overtake_zero_events_sent_before_it,
            a_batch_for_a_zero_handler_is_refused_not_flattened,
            a_zero_reply_of_a_reserved_type_is_refused,
            observers_see_zero_events_with_their_causal_context,
        );
        $crate::conformance_suite!(@topic [$runtime] [$threads] streaming;
            stream_delivers_items_then_final_in_order,
            stream_error_after_items_arrives_in_order,
            slow_consumer_bounds_the_producer,
            dropping_the_stream_cancels_the_producer,
            a_dropped_request_lets_a_streaming_flow_run_to_its_end,
            items_of_a_flow_the_requester_does_not_hear_go_nowhere,
            continuation_step_can_stream,
            response_of_a_streaming_flow_is_its_final_value,
            broadcast_streaming_handler_broadcasts_its_items,
            a_full_subscriber_does_not_end_a_broadcast_stream,
        );
    };
    (@topic [$runtime:meta] [$threads:meta] $topic:ident;
        $($name:ident $(@$flag:ident)?),* $(,)?) => {
        mod $topic {
            $(
                $crate::conformance_suite!(@test [$runtime] [$threads] $topic $name $($flag)?);
            )*
        }
    };
    (@test [$runtime:meta] [$threads:meta] $topic:ident $name:ident threads) => {
        $crate::conformance_suite!(@test [$threads] [$threads] $topic $name);
    };
    (@test [$runtime:meta] [$threads:meta] $topic:ident $name:ident) => {
        #[$runtime]
        async fn $name() {
            let backend = super::conformance_backend();
            tokio::time::timeout(
                std::time::Duration::from_secs(60),
                $crate::conformance::$topic::$name(&backend),
            )
            .await
            .expect("conformance test did not finish within 60 s");
        }
    };
}

async fn start(backend: &dyn Backend) -> Happen {
    backend.start(HappenConfig::default()).await
}

/// A handler that records every event it receives and answers `reply`.
fn recorder(tx: mpsc::UnboundedSender<Event>, reply: Value) -> impl happen::Handler {
    move |event: Event, _cx: Context| {
        let tx = tx.clone();
        let reply = reply.clone();
        async move {
            let _ = tx.send(event);
            reply
        }
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("channel closed")
}

/// Asserts that nothing more arrives within a short grace period.
async fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<Event>, what: &str) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("{what}: unexpected event {e:?}");
    }
}

fn ev(event_type: &str, payload: Value) -> Event {
    Event::new(event_type, payload)
}

fn assert_child_of(child: &Causal, parent: &Causal, sender: &str) {
    assert_eq!(
        child.causation_id.as_deref(),
        Some(parent.id.as_str()),
        "causationId"
    );
    assert_eq!(child.correlation_id, parent.correlation_id, "correlationId");
    let mut path = parent.path.clone();
    path.push(happen::Id::from(sender));
    assert_eq!(child.path, path, "path");
    assert_eq!(child.sender, sender, "sender");
    assert_ne!(child.id, parent.id);
}

/// Registers a handler for `event_type` on `node` that never answers; the
/// returned [`Notify`] releases it.
fn never_answers(node: &Node, event_type: &str) -> Arc<Notify> {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    node.on(event_type, move |_e: Event, _cx: Context| {
        let r = r.clone();
        async move { r.notified().await }
    })
    .unwrap();
    release
}
