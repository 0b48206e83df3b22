//! Model-based test: random command sequences, with random time steps that include backward
//! clock jumps, run through the core's [`Ledger`] and through the naive reference model in
//! `model/`. Every outcome must be equal, every derived number must agree, the invariants must
//! hold after every step, and no transition may move a final state (a consumed or released hold,
//! a paid or cancelled order).
//!
//! Cases: 1,000 by default; set `PROPTEST_CASES` for more.

mod model;

use flashsale_core::{
    Cents, Command, HoldId, HoldState, IdempotencyKey, Ledger, OrderId, PaymentStatus, ProductId,
    Qty, Timestamp, WebhookPayload,
};
use model::{Model, ModelCommand};
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
        let command = prop_oneof![
            1 => (prop_oneof![6 => Just("P".to_owned()), 1 => Just(" ".to_owned())],
                  0u64..1_000, 0u32..6)
                .prop_map(|(name, price, stock)| ModelCommand::CreateProduct { name, price, stock }),
            1 => (products.clone(), 0u32..4)
                .prop_map(|(product, qty)| ModelCommand::Restock { product, qty }),
            6 => (products, 0u32..4, ttl)
                .prop_map(|(product, qty, ttl)| ModelCommand::PlaceHold { product, qty, ttl }),
            4 => (holds.clone(), window)
                .prop_map(|(hold, window)| ModelCommand::PlaceOrder { hold, window }),
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

/// The model's command in the core's terms.
fn to_command(command: &ModelCommand) -> Command {
    match command.clone() {
        ModelCommand::CreateProduct { name, price, stock } => Command::CreateProduct {
            name,
            price_cents: Cents(price),
            stock: Qty(stock),
        },
        ModelCommand::Restock { product, qty } => Command::Restock {
            product_id: ProductId(product),
            qty: Qty(qty),
        },
        ModelCommand::PlaceHold { product, qty, ttl } => Command::PlaceHold {
            product_id: ProductId(product),
            qty: Qty(qty),
            ttl_ms: ttl,
        },
        ModelCommand::PlaceOrder { hold, window } => Command::PlaceOrder {
            hold_id: HoldId(hold),
            payment_window_ms: window,
        },
        ModelCommand::Webhook { key, hold, paid } => Command::ApplyWebhook(WebhookPayload {
            key: IdempotencyKey::parse(&key).expect("generated keys are valid"),
            hold_id: HoldId(hold),
            status: if paid {
                PaymentStatus::Paid
            } else {
                PaymentStatus::Failed
            },
        }),
        ModelCommand::Sweep => Command::Sweep,
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
        let outcome = ledger.apply(now, to_command(&step.command));
        let expected = reference
            .last
            .as_ref()
            .expect("the reference applied the step");
        assert_eq!(&outcome, expected, "outcome of {step:?} at {now}");
        final_states_never_move(&before, &ledger);
        ledger
    }

    fn check_invariants(ledger: &Ledger, reference: &Reference) {
        if let Err(violation) = ledger.check_invariants() {
            panic!("invariant violated: {violation}");
        }
        let model = &reference.model;
        let now = Timestamp(reference.now);
        assert_eq!(ledger.products().count(), model.products.len());
        for product in &model.products {
            let id = ProductId(product.id);
            assert_eq!(ledger.product(id), Some(&model.product_row(product.id)));
            let available = Some(Qty(model.available(product.id, reference.now) as u32));
            assert_eq!(
                ledger.available(id, now),
                available,
                "available of {id} at {now}"
            );
        }
        assert_eq!(ledger.holds().count(), model.holds.len());
        for hold in &model.holds {
            assert_eq!(ledger.hold(HoldId(hold.id)), Some(&model.hold_row(hold.id)));
        }
        assert_eq!(ledger.orders().count(), model.orders.len());
        for order in &model.orders {
            assert_eq!(
                ledger.order(OrderId(order.id)),
                Some(&model.order_row(order.id))
            );
        }
        assert_eq!(ledger.webhooks().count(), model.webhooks.len());
        for webhook in &model.webhooks {
            let key = IdempotencyKey::parse(&webhook.key).expect("valid key");
            assert_eq!(ledger.webhook(&key), Some(&model.webhook_row(&webhook.key)));
        }
        assert_eq!(ledger.next_deadline(), model.next_deadline().map(Timestamp));
    }
}

/// A consumed or released hold keeps its state, and a paid or cancelled order its status, across
/// any command at any `now`.
fn final_states_never_move(before: &Ledger, after: &Ledger) {
    for hold in before.holds().filter(|h| h.state != HoldState::Held) {
        let now = after.hold(hold.id).map(|h| h.state);
        assert_eq!(now, Some(hold.state), "final hold {} moved", hold.id);
    }
    for order in before.orders().filter(|o| o.status.is_terminal()) {
        let now = after.order(order.id).map(|o| o.status);
        assert_eq!(now, Some(order.status), "final order {} moved", order.id);
    }
}

prop_state_machine! {
    #![proptest_config(Config { cases: model::cases(), ..Config::default() })]

    /// The ledger and the naive model agree on every outcome and every derived number.
    #[test]
    fn ledger_agrees_with_the_reference_model(sequential 1..60 => LedgerTest);
}
