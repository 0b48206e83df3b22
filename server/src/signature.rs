//! Webhook signature verification: the `X-Flashsale-Signature` header the payment provider sends
//! with every webhook. The header is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw
//! body>")>`; several `v1=` entries may appear so the provider can rotate its secret without a
//! window of rejected webhooks, and any one matching any configured secret is enough. The
//! timestamp must lie within [`SIGNATURE_TOLERANCE_S`] of our clock in either direction, which
//! bounds how long a captured request can be replayed. This module owns only the cryptographic
//! check; it reads no clock and no configuration (the caller passes `now_unix_s` and the
//! secrets), so it is a pure function the fuzz targets and tests can drive with any input.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries the signature, lowercase as HTTP/2 and warp's header filters use it.
pub const SIGNATURE_HEADER: &str = "x-flashsale-signature";

/// How far, in seconds, the signed timestamp may be from our clock in either direction.
///
/// Past: a captured webhook can only be replayed for this long (and the idempotency key stops
/// replays of the same event anyway). Future: the provider's clock may run ahead of ours.
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

/// Longest header value we parse. A legitimate header with a few rotated signatures is about
/// 80 bytes per entry; the cap keeps the parsing and HMAC work per request bounded.
pub const SIGNATURE_HEADER_BYTES_MAX: usize = 1024;

/// Most `v1=` entries we accept in one header. Each one costs an HMAC per configured secret,
/// so without a cap one request could make us compute thousands of them.
pub const SIGNATURES_PER_HEADER_MAX: usize = 8;

/// Length of an HMAC-SHA256 tag in bytes (64 hex digits in the header).
const TAG_BYTES: usize = 32;

// A header at the size cap must still be able to hold the largest number of entries we accept.
const _: () = assert!(SIGNATURES_PER_HEADER_MAX * (4 + 2 * TAG_BYTES) < SIGNATURE_HEADER_BYTES_MAX);

type HmacSha256 = Hmac<Sha256>;

/// A webhook signing secret. `Debug` never prints the bytes, so a secret inside a config struct
/// cannot leak into logs through `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps raw secret bytes. Precondition: not empty (an empty HMAC key is valid
    /// cryptographically but always means a misconfiguration); use [`Secret::from_str`] for
    /// values from configuration, which rejects it.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Returned by [`Secret::from_str`] for an empty value: an unset environment variable expanded
/// to `""` must stop the server at startup, not make every signature computable by anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret must not be empty")]
pub struct EmptySecret;

impl FromStr for Secret {
    type Err = EmptySecret;

    /// Takes the UTF-8 bytes of `s` as the secret; fails on an empty string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(EmptySecret);
        }
        Ok(Self::new(s.as_bytes()))
    }
}

/// Why a webhook signature was refused. All four are answered 401; the variants exist for logs,
/// metrics and tests, and [`SignatureError::code`] gives each a stable problem code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request carried no `X-Flashsale-Signature` header.
    #[error("missing X-Flashsale-Signature header")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<64 hex digits>[,v1=...]`, or is over a limit.
    #[error("malformed X-Flashsale-Signature header")]
    Malformed,
    /// The timestamp is more than `SIGNATURE_TOLERANCE_S` seconds away from our clock.
    #[error("X-Flashsale-Signature timestamp is outside the tolerance")]
    Stale,
    /// The header is well formed and fresh, but no `v1` matches any configured secret.
    #[error("X-Flashsale-Signature does not match")]
    Mismatch,
}

impl SignatureError {
    /// A stable, machine-readable code for the problem+json `code` member.
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Stale => "signature_stale",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// Verifies the `X-Flashsale-Signature` header `header` for the raw request `body`.
///
/// Succeeds when the header parses, its `t` is within [`SIGNATURE_TOLERANCE_S`] of
/// `now_unix_s` (inclusive, either direction), and at least one `v1` entry equals
/// `HMAC-SHA256(secret, "<t>.<body>")` for at least one of `secrets`. Tags are compared in
/// constant time. `body` must be the bytes exactly as received, before any JSON parsing.
/// Entries with another scheme (`v0=`, `v2=`) are ignored so the provider can add schemes.
///
/// # Errors
/// [`SignatureError::Missing`] for `None`; [`SignatureError::Malformed`] for a header that
/// does not parse or is over a limit; [`SignatureError::Stale`] for a timestamp out of
/// tolerance; [`SignatureError::Mismatch`] when nothing matches (always, if `secrets` is empty).
/// Never panics, whatever the input.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    now_unix_s: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let parsed = parse_header(header)?;
    // Freshness first: it costs nothing, while the HMACs below cost a hash per pair.
    let skew_s = now_unix_s.abs_diff(parsed.t_value);
    if skew_s > SIGNATURE_TOLERANCE_S.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    for secret in secrets {
        let Some(mac) = signed_mac(secret, parsed.t_text, body) else {
            continue;
        };
        // `verify_slice` consumes the MAC, so each tag is checked against a clone of the state.
        if parsed
            .tags
            .iter()
            .any(|tag| mac.clone().verify_slice(tag).is_ok())
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Signs `body` at unix time `t` with `secret` and returns the full header value,
/// `t=<t>,v1=<hex>`. Used by tests, the simulator's payment provider and the load generator.
pub fn sign(secret: &Secret, t: i64, body: &[u8]) -> String {
    let t_text = t.to_string();
    let tag = match signed_mac(secret, &t_text, body) {
        Some(mac) => hex::encode(mac.finalize().into_bytes()),
        // HMAC accepts keys of any length, so `signed_mac` never returns `None`; an empty tag
        // keeps this function total and can never verify.
        None => String::new(),
    };
    format!("t={t_text},v1={tag}")
}

/// The header's fields after parsing: the timestamp both as sent (it is part of the signed
/// message) and as a number (for the freshness check), and the decoded tags.
struct Parsed<'a> {
    t_text: &'a str,
    t_value: i64,
    tags: Vec<[u8; TAG_BYTES]>,
}

fn parse_header(header: &str) -> Result<Parsed<'_>, SignatureError> {
    if header.len() > SIGNATURE_HEADER_BYTES_MAX {
        return Err(SignatureError::Malformed);
    }
    let mut t_text = None;
    let mut tags = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            // A second `t` would make it ambiguous which timestamp was signed.
            "t" if t_text.is_some() => return Err(SignatureError::Malformed),
            "t" => t_text = Some(value),
            "v1" => {
                if tags.len() >= SIGNATURES_PER_HEADER_MAX {
                    return Err(SignatureError::Malformed);
                }
                let mut tag = [0_u8; TAG_BYTES];
                hex::decode_to_slice(value, &mut tag).map_err(|_| SignatureError::Malformed)?;
                tags.push(tag);
            }
            "" => return Err(SignatureError::Malformed),
            _ => {} // Another scheme: ignored, as documented on `verify`.
        }
    }
    let t_text = t_text.ok_or(SignatureError::Malformed)?;
    let t_value = parse_unix_seconds(t_text).ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    Ok(Parsed {
        t_text,
        t_value,
        tags,
    })
}

/// Digits only: `i64::from_str` would also take `+5` and `-5`, and a signed or negative
/// timestamp is never what a provider meant to send.
fn parse_unix_seconds(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// HMAC-SHA256 over `"<t>.<body>"`, fed in pieces so the body is never copied.
fn signed_mac(secret: &Secret, t_text: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret.bytes()).ok()?;
    mac.update(t_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"idempotency_key":"evt_1","hold_id":7,"status":"paid"}"#;

    fn secret(s: &str) -> Secret {
        Secret::new(s)
    }

    #[test]
    fn valid_signature_is_accepted() {
        let header = sign(&secret("s1"), NOW, BODY);
        assert_eq!(verify(Some(&header), BODY, &[secret("s1")], NOW), Ok(()));
    }

    #[test]
    fn signature_matches_an_independent_computation() {
        // The signed message is "<t>.<body>": recompute it with the plain HMAC API.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").expect("HMAC takes any key length");
        mac.update(b"5.hello");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            sign(&secret("Jefe"), 5, b"hello"),
            format!("t=5,v1={expected}")
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Guards against a hash/HMAC version pair that compiles but computes something else.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").expect("HMAC takes any key length");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rotated_secret_matches_any_v1_entry() {
        let old = sign(&secret("old"), NOW, BODY);
        let new = sign(&secret("new"), NOW, BODY);
        let new_tag = new.split_once(",v1=").expect("sign output has a v1").1;
        let header = format!("{old},v1={new_tag}");
        // Only the new secret configured: the second entry matches.
        assert_eq!(verify(Some(&header), BODY, &[secret("new")], NOW), Ok(()));
        // Only the old secret configured: the first entry matches.
        assert_eq!(verify(Some(&header), BODY, &[secret("old")], NOW), Ok(()));
        // Both configured, header signed with one of them only.
        let single = sign(&secret("new"), NOW, BODY);
        assert_eq!(
            verify(Some(&single), BODY, &[secret("old"), secret("new")], NOW),
            Ok(())
        );
    }

    /// Every single-byte change of a valid signature's tag, timestamp or body is refused: a
    /// comparison over only a prefix of the tag, or of the message, would let some through.
    #[test]
    fn every_single_byte_change_of_tag_timestamp_or_body_is_refused() {
        let key = [secret("s")];
        let header = sign(&key[0], NOW, BODY);
        let (t_part, tag_hex) = header.split_once(",v1=").expect("t and v1");
        let mut tag = [0_u8; TAG_BYTES];
        hex::decode_to_slice(tag_hex, &mut tag).expect("hex");
        for at in 0..TAG_BYTES {
            for flip in [0x01_u8, 0x80, 0xff] {
                let mut changed = tag;
                if let Some(byte) = changed.get_mut(at) {
                    *byte ^= flip;
                }
                let forged = format!("{t_part},v1={}", hex::encode(changed));
                assert_eq!(
                    verify(Some(&forged), BODY, &key, NOW),
                    Err(SignatureError::Mismatch),
                    "tag byte {at} ^ {flip:#04x}"
                );
            }
        }
        // A tag cut short is no tag, however much of it is right.
        for len in 0..tag_hex.len() {
            let cut = format!("{t_part},v1={}", tag_hex.get(..len).unwrap_or_default());
            assert_eq!(
                verify(Some(&cut), BODY, &key, NOW),
                Err(SignatureError::Malformed),
                "tag cut to {len} hex digits"
            );
        }
        // Each digit of the timestamp changed to every other digit: signed over another
        // message, so never accepted, whether or not it is still fresh.
        let t_text = NOW.to_string();
        for (at, _) in t_text.char_indices() {
            for digit in b'0'..=b'9' {
                let mut t_bytes = t_text.clone().into_bytes();
                let Some(slot) = t_bytes.get_mut(at) else {
                    continue;
                };
                if *slot == digit {
                    continue;
                }
                *slot = digit;
                let t_changed = String::from_utf8(t_bytes).expect("digits");
                let forged = format!("t={t_changed},v1={tag_hex}");
                let answer = verify(Some(&forged), BODY, &key, NOW);
                assert!(
                    matches!(
                        answer,
                        Err(SignatureError::Mismatch | SignatureError::Stale)
                    ),
                    "timestamp {t_changed}: {answer:?}"
                );
            }
        }
        // Each byte of the body changed.
        for at in 0..BODY.len() {
            let mut body = BODY.to_vec();
            if let Some(byte) = body.get_mut(at) {
                *byte ^= 0x01;
            }
            assert_eq!(
                verify(Some(&header), &body, &key, NOW),
                Err(SignatureError::Mismatch),
                "body byte {at}"
            );
        }
        assert_eq!(verify(Some(&header), BODY, &key, NOW), Ok(()));
    }

    #[test]
    fn timestamp_exactly_at_the_tolerance_is_accepted() {
        let past = sign(&secret("s"), NOW - SIGNATURE_TOLERANCE_S, BODY);
        let future = sign(&secret("s"), NOW + SIGNATURE_TOLERANCE_S, BODY);
        assert_eq!(verify(Some(&past), BODY, &[secret("s")], NOW), Ok(()));
        assert_eq!(verify(Some(&future), BODY, &[secret("s")], NOW), Ok(()));
    }

    #[test]
    fn stale_timestamp_in_the_past_is_refused() {
        let header = sign(&secret("s"), NOW - SIGNATURE_TOLERANCE_S - 1, BODY);
        assert_eq!(
            verify(Some(&header), BODY, &[secret("s")], NOW),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn stale_timestamp_in_the_future_is_refused() {
        let header = sign(&secret("s"), NOW + SIGNATURE_TOLERANCE_S + 1, BODY);
        assert_eq!(
            verify(Some(&header), BODY, &[secret("s")], NOW),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn extreme_clocks_do_not_overflow() {
        let header = sign(&secret("s"), 0, BODY);
        assert_eq!(
            verify(Some(&header), BODY, &[secret("s")], i64::MIN),
            Err(SignatureError::Stale)
        );
        let max = format!("t={},v1={}", i64::MAX, "00".repeat(TAG_BYTES));
        assert_eq!(
            verify(Some(&max), BODY, &[secret("s")], i64::MIN),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn tampered_body_is_refused() {
        let header = sign(&secret("s"), NOW, BODY);
        let tampered = br#"{"idempotency_key":"evt_1","hold_id":8,"status":"paid"}"#;
        assert_eq!(
            verify(Some(&header), tampered, &[secret("s")], NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn tampered_timestamp_is_refused() {
        let header = sign(&secret("s"), NOW, BODY);
        let shifted = header.replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1);
        assert_eq!(
            verify(Some(&shifted), BODY, &[secret("s")], NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        let header = sign(&secret("s"), NOW, BODY);
        assert_eq!(
            verify(Some(&header), BODY, &[secret("other")], NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn no_configured_secret_refuses_everything() {
        let header = sign(&secret("s"), NOW, BODY);
        assert_eq!(
            verify(Some(&header), BODY, &[], NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_header_is_refused() {
        assert_eq!(
            verify(None, BODY, &[secret("s")], NOW),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let tag = "ab".repeat(TAG_BYTES);
        let too_many = format!("t={NOW}{}", format!(",v1={tag}").repeat(9));
        let cases = [
            String::new(),
            "   ".to_owned(),
            "garbage".to_owned(),
            "t=,v1=".to_owned(),
            format!("v1={tag}"),                              // missing t
            format!("t=abc,v1={tag}"),                        // non-numeric t
            format!("t=-5,v1={tag}"),                         // signed t
            format!("t=+{NOW},v1={tag}"),                     // signed t
            format!("t=99999999999999999999,v1={tag}"),       // t over i64
            format!("t={NOW}"),                               // no v1
            format!("t={NOW},v1=abc"),                        // odd hex
            format!("t={NOW},v1={}", "zz".repeat(TAG_BYTES)), // not hex
            format!("t={NOW},v1={}", "ab".repeat(16)),        // wrong length
            format!("t={NOW},t={NOW},v1={tag}"),              // two timestamps
            format!("t={NOW},,v1={tag}"),                     // empty item
            format!("t={NOW},=x,v1={tag}"),                   // empty key
            format!("t={NOW};v1={tag}"),                      // wrong separator
            too_many,
            format!(
                "t={NOW},v1={tag},v0={}",
                "x".repeat(SIGNATURE_HEADER_BYTES_MAX)
            ),
            "t=1,v1=é".to_owned(), // non-ASCII hex
        ];
        for header in &cases {
            assert_eq!(
                verify(Some(header), BODY, &[secret("s")], NOW),
                Err(SignatureError::Malformed),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn unknown_schemes_and_spaces_are_tolerated() {
        let header = sign(&secret("s"), NOW, BODY);
        let (t, v1) = header.split_once(',').expect("sign output has two items");
        let padded = format!(" {t} , v0=deadbeef, {v1} ");
        assert_eq!(verify(Some(&padded), BODY, &[secret("s")], NOW), Ok(()));
    }

    #[test]
    fn leading_zeros_in_t_are_part_of_the_signed_message() {
        // The provider signs the timestamp text it sends, so we must MAC that text verbatim.
        let mut mac = HmacSha256::new_from_slice(b"s").expect("HMAC takes any key length");
        mac.update(format!("0{NOW}.").as_bytes());
        mac.update(BODY);
        let header = format!("t=0{NOW},v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(verify(Some(&header), BODY, &[secret("s")], NOW), Ok(()));
    }

    #[test]
    fn arbitrary_headers_never_panic() {
        let inputs = [
            "t",
            "=",
            ",",
            "t==",
            "v1",
            "t=1,v1",
            "t=1,v1=",
            "t=1,v1=,",
            "\u{0}",
            "t=\u{0}",
            "t=1,v1=\u{1F600}",
            ",,,,",
            "t=1,v1=0",
            "t=١٢٣,v1=00",
        ];
        for input in inputs {
            let result = verify(Some(input), BODY, &[secret("s")], NOW);
            assert!(result.is_err(), "input {input:?}");
        }
    }

    #[test]
    fn secret_debug_does_not_print_the_bytes() {
        let printed = format!("{:?}", secret("hunter2"));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("104"), "{printed}"); // 'h' as a byte
    }

    #[test]
    fn empty_secret_from_configuration_is_refused() {
        assert_eq!("".parse::<Secret>(), Err(EmptySecret));
        assert_eq!("k".parse::<Secret>(), Ok(Secret::new("k")));
    }

    #[test]
    fn error_codes_are_distinct() {
        let codes = [
            SignatureError::Missing.code(),
            SignatureError::Malformed.code(),
            SignatureError::Stale.code(),
            SignatureError::Mismatch.code(),
        ];
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
