//! The bodies of the fuzz targets. `fuzz/` (cargo-fuzz, outside the workspace) calls each with the
//! fuzzer's bytes; `tests/corpus.rs` replays every committed input of `fuzz/corpus/<target>/`
//! through the same function, so an ordinary `cargo test` exercises every target on every run.
//!
//! Each target panics on a finding (a panic inside the code under test, or a broken property)
//! and returns quietly otherwise.

// The targets are test code: a broken property is a panic by design.
#![allow(clippy::panic, clippy::expect_used)]

use arbitrary::Unstructured;
use flashsale_core::{IdempotencyKey, Ledger, Timestamp};
use flashsale_server::problem::Problem;
use flashsale_server::signature::{self, Secret, SignatureError};
use flashsale_server::{api, request_log, routes};

#[path = "../../core/tests/model/mod.rs"]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "the reference model is test code"
)]
mod model;

use model::{Model, ModelCommand, agree};

/// A fuzz target: takes the fuzzer's bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` name them.
pub const TARGETS: [(&str, Target); 4] = [
    ("core_commands", core_commands),
    ("request_bodies", request_bodies),
    ("signature_header", signature_header),
    ("keys_and_paths", keys_and_paths),
];

/// One step drawn from the input: a clock move (backwards sometimes) and a command whose ids
/// mostly name existing rows.
fn step(u: &mut Unstructured<'_>, model: &Model) -> arbitrary::Result<(i64, ModelCommand)> {
    let dt: i64 = match u.int_in_range(0..=5)? {
        0..=2 => u.int_in_range(0..=1_999)?,
        3 | 4 => u.int_in_range(2_000..=11_999)?,
        _ => u.int_in_range(-8_000..=-1)?,
    };
    let id_max = model.id_max().saturating_add(2);
    let id = |u: &mut Unstructured<'_>| u.int_in_range(0..=id_max);
    let command = match u.int_in_range(0..=16)? {
        0 => ModelCommand::CreateProduct {
            name: if u.ratio(1, 7)? {
                " ".into()
            } else {
                "P".into()
            },
            price: u.int_in_range(0..=999)?,
            stock: u.int_in_range(0..=5)?,
        },
        1 => ModelCommand::Restock {
            product: id(u)?,
            qty: u.int_in_range(0..=3)?,
        },
        2..=7 => ModelCommand::PlaceHold {
            product: id(u)?,
            qty: u.int_in_range(0..=3)?,
            ttl: match u.int_in_range(0..=9)? {
                0 => 0,
                1 => 86_400_001,
                _ => u.int_in_range(1_000..=5_999)?,
            },
            key: client_key(u)?,
        },
        8..=11 => ModelCommand::PlaceOrder {
            hold: id(u)?,
            window: if u.ratio(1, 9)? {
                999
            } else {
                u.int_in_range(1_000..=9_999)?
            },
            key: client_key(u)?,
        },
        12..=15 => ModelCommand::Webhook {
            key: format!("evt_{}", u.int_in_range(0..=5)?),
            hold: id(u)?,
            paid: u.arbitrary()?,
        },
        _ => ModelCommand::Sweep,
    };
    Ok((dt, command))
}

/// A client's `Idempotency-Key`, now and then, from a few: retries and reuse across requests.
fn client_key(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<String>> {
    Ok(match u.ratio(1, 4)? {
        true => Some(format!("req_{}", u.int_in_range(0..=3)?)),
        false => None,
    })
}

/// Command sequences into the core: every outcome equals the naive model's, every row and
/// derived number agrees, the invariants hold and no final state moves, after every step.
pub fn core_commands(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut ledger = Ledger::new();
    let mut model = Model::default();
    let mut now: u64 = 0;
    for _ in 0..64 {
        let Ok((dt, command)) = step(&mut u, &model) else {
            break;
        };
        now = now.saturating_add_signed(dt);
        let before = ledger.clone();
        let outcome = ledger.apply(Timestamp(now), agree::to_command(&command));
        let expected = model.apply(now, &command);
        assert_eq!(outcome, expected, "outcome of {command:?} at {now}");
        agree::final_states_never_move(&before, &ledger);
        agree::assert_agree(&ledger, &model, now);
        if u.is_empty() {
            break;
        }
    }
}

/// The statuses a refused body may get.
fn assert_refusal(route: &str, body: &[u8], problem: &Problem) {
    assert!(
        matches!(problem.status, 400 | 413 | 415 | 422),
        "{route}: a body refused with {} {}",
        problem.status,
        problem.code
    );
    assert!(!problem.detail.is_empty(), "{route}: a refusal says why");
    // Words the client sent may be quoted back; the server's own words name no Rust type.
    let sent = String::from_utf8_lossy(body);
    for word in ["u32", "u64", "i64", "usize", "struct "] {
        assert!(
            sent.contains(word) || !problem.detail.contains(word),
            "{route}: a refusal in Rust's words: {}",
            problem.detail
        );
    }
}

/// Request bodies into every route's JSON decoder: an answer, never a panic, and a refusal is a
/// client error that says why in the API's words.
pub fn request_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let body_routes: Vec<&str> = api::ROUTES
        .iter()
        .filter(|(_, method)| *method == "POST")
        .map(|(route, _)| *route)
        .collect();
    let Some(route) = body_routes.get(
        usize::from(which)
            .checked_rem(body_routes.len())
            .unwrap_or(0),
    ) else {
        return;
    };
    match routes::decode_body(route, body) {
        Ok(decoded) => assert!(decoded, "{route} takes a body"),
        Err(problem) => assert_refusal(route, body, &problem),
    }
}

/// The signature header into the verifier: never a panic; only the right tag over exactly these
/// bytes verifies; and a header this side signs verifies. The input is the header, a newline,
/// then the body.
pub fn signature_header(data: &[u8]) {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (
            data.get(..at).unwrap_or_default(),
            data.get(at.saturating_add(1)..).unwrap_or_default(),
        ),
        None => (data, &[][..]),
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let secrets = [Secret::new("fuzz-secret")];
    let now = 1_800_000_000;
    let answer = signature::verify(Some(header), body, &secrets, now);
    if answer.is_ok() {
        // Accepted: then the header carries the one tag this body signs to, at a fresh `t`.
        let t = header
            .split(',')
            .find_map(|item| item.trim().strip_prefix("t="))
            .and_then(|t| t.parse::<i64>().ok())
            .expect("an accepted header has a t");
        let expected = signature::sign(&secrets[0], t, body);
        let tag = expected
            .split_once(",v1=")
            .map(|(_, tag)| tag)
            .unwrap_or_default();
        // Hex digits in either case name the same tag.
        let header_lower = header.to_ascii_lowercase();
        assert!(
            header_lower.contains(tag),
            "accepted without the right tag: {header:?}"
        );
    }
    let signed = signature::sign(&secrets[0], now, body);
    assert_eq!(
        signature::verify(Some(&signed), body, &secrets, now),
        Ok(())
    );
    let other = [Secret::new("another")];
    assert_eq!(
        signature::verify(Some(&signed), body, &other, now),
        Err(SignatureError::Mismatch)
    );
}

/// `Idempotency-Key` values and request paths: never a panic; a key is accepted exactly when it
/// is 1 to 255 printable ASCII characters, and keeps its text; a path's route keeps its
/// segments, naming only all-digit ones `{id}`, and a route the server answers has methods.
pub fn keys_and_paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let printable = !text.is_empty()
        && text.len() <= IdempotencyKey::BYTES_MAX
        && text.bytes().all(|b| (0x21..=0x7e).contains(&b));
    match IdempotencyKey::parse(&text) {
        Some(key) => {
            assert!(printable, "accepted {text:?}");
            assert_eq!(key.as_str(), text);
        }
        None => assert!(!printable, "refused {text:?}"),
    }
    let path = format!("/{}", text.trim_start_matches('/'));
    let route = request_log::route_of(&path);
    let segments: Vec<&str> = path.split('/').collect();
    let named: Vec<&str> = route.split('/').collect();
    assert_eq!(segments.len(), named.len(), "{path:?} -> {route:?}");
    for (segment, name) in segments.iter().zip(&named) {
        let digits = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
        if digits {
            assert_eq!(*name, "{id}", "{path:?}");
        } else {
            assert_eq!(name, segment, "{path:?}");
        }
    }
    if let Some(methods) = api::allowed_methods(&route) {
        assert!(!methods.is_empty());
    }
}
