//! Model-based test: random command sequences, with random time steps that include backward
//! clock jumps, run through the core's [`Ledger`] and through the naive reference model in
//! `model/`. Every outcome must be equal, every derived number must agree, the invariants must
//! hold after every step, and no transition may move a final state (a consumed or released hold,
//! a paid or cancelled order).
//!
//! Cases: 1,000 by default; set `PROPTEST_CASES` for more.

mod model;

use flashsale_core::{Ledger, Timestamp};
use model::{Model, ModelCommand, agree};
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// A step: move the clock by `dt_ms` (possibly backwards, never below zero), then apply.
#[derive(Clone, Debug)]
pub struct Step {
    dt_ms: i64,
    command: ModelCommand,
}

#[derive(Clone, Debug, Default)]
pub struct Reference {
    now: u64,
    model: Model,
    last: Option<Result<flashsale_core::Outcome, flashsale_core::Rejection>>,
}

/// An id that usually names a row of the wanted kind, sometimes any id (often the wrong kind or
/// one not allocated yet).
fn id_among(ids: Vec<u64>, ids_used: u64) -> BoxedStrategy<u64> {
    let any = (0..=ids_used.saturating_add(2)).boxed();
    if ids.is_empty() {
        return any;
    }
    prop_oneof![4 => proptest::sample::select(ids), 1 => any].boxed()
}

impl ReferenceStateMachine for Reference {
    type State = Reference;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Self::State> {
        Just(Reference::default()).boxed()
    }

    fn transitions(state: &Self::State) -> BoxedStrategy<Self::Transition> {
        let used = state.model.id_max();
        let products = id_among(state.model.products.iter().map(|p| p.id).collect(), used);
        let holds = id_among(state.model.holds.iter().map(|h| h.id).collect(), used);
        let dt = prop_oneof![
            3 => 0i64..2_000,
            2 => 2_000i64..12_000,
            1 => -8_000i64..0,
        ];
        let ttl = prop_oneof![8 => 1_000u64..6_000, 1 => Just(0u64), 1 => Just(86_400_001u64)];
        let window = prop_oneof![8 => 1_000u64..10_000, 1 => Just(999u64)];
        let key = (0u8..6).prop_map(|k| format!("evt_{k}"));
        // Client keys: few, so retries and reuse across requests and kinds are common.
        let client_key =
            || proptest::option::weighted(0.3, (0u8..4).prop_map(|k| format!("req_{k}")));
        let command = prop_oneof![
            1 => (prop_oneof![6 => Just("P".to_owned()), 1 => Just(" ".to_owned())],
                  0u64..1_000, 0u32..6)
                .prop_map(|(name, price, stock)| ModelCommand::CreateProduct { name, price, stock }),
            1 => (products.clone(), 0u32..4)
                .prop_map(|(product, qty)| ModelCommand::Restock { product, qty }),
            6 => (products, 0u32..4, ttl, client_key())
                .prop_map(|(product, qty, ttl, key)| ModelCommand::PlaceHold { product, qty, ttl, key }),
            4 => (holds.clone(), window, client_key())
                .prop_map(|(hold, window, key)| ModelCommand::PlaceOrder { hold, window, key }),
            4 => (key, holds, any::<bool>())
                .prop_map(|(key, hold, paid)| ModelCommand::Webhook { key, hold, paid }),
            1 => Just(ModelCommand::Sweep),
        ];
        (dt, command)
            .prop_map(|(dt_ms, command)| Step { dt_ms, command })
            .boxed()
    }

    fn apply(mut state: Self::State, step: &Self::Transition) -> Self::State {
        state.now = state.now.saturating_add_signed(step.dt_ms);
        state.last = Some(state.model.apply(state.now, &step.command));
        state
    }
}

struct LedgerTest;

impl StateMachineTest for LedgerTest {
    type SystemUnderTest = Ledger;
    type Reference = Reference;

    fn init_test(_: &Reference) -> Ledger {
        Ledger::new()
    }

    fn apply(mut ledger: Ledger, reference: &Reference, step: Step) -> Ledger {
        let before = ledger.clone();
        let now = Timestamp(reference.now);
        let outcome = ledger.apply(now, agree::to_command(&step.command));
        let expected = reference
            .last
            .as_ref()
            .expect("the reference applied the step");
        assert_eq!(&outcome, expected, "outcome of {step:?} at {now}");
        agree::final_states_never_move(&before, &ledger);
        ledger
    }

    fn check_invariants(ledger: &Ledger, reference: &Reference) {
        agree::assert_agree(ledger, &reference.model, reference.now);
    }
}

prop_state_machine! {
    #![proptest_config(Config { cases: model::cases(), ..Config::default() })]

    /// The ledger and the naive model agree on every outcome and every derived number.
    #[test]
    fn ledger_agrees_with_the_reference_model(sequential 1..60 => LedgerTest);
}
