//! Property tests of the sync wire format: round trips, and no panic on any input.

use fq_core::case::{AdminCode, CaseId, ReplicaId};
use fq_core::ledger::Tier;
use fq_core::sync::wire::{
    self, Envelope, ErrorCode, FrameDecoder, LogPosition, MAX_FRAME_BYTES, Message, PREFIX_BYTES, RefuseReason, Refused,
};
use proptest::prelude::*;

const MAX_BUFFERED: usize = MAX_FRAME_BYTES + PREFIX_BYTES;

fn hash() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn case_id() -> impl Strategy<Value = CaseId> {
    any::<[u8; 16]>().prop_map(CaseId::from_bytes)
}

fn scope() -> impl Strategy<Value = AdminCode> {
    // province 11..=82, city, county 01..=99, then an optional township and village part.
    (11u32..=82, 0u32..100, 1u32..100, prop::option::of((1u32..1000, prop::option::of(1u32..1000)))).prop_map(
        |(p, c, k, rest)| {
            let mut s = format!("{p:02}{c:02}{k:02}");
            if let Some((t, v)) = rest {
                s.push_str(&format!("{t:03}"));
                if let Some(v) = v {
                    s.push_str(&format!("{v:03}"));
                }
            }
            AdminCode::parse(&s).unwrap()
        },
    )
}

fn tier() -> impl Strategy<Value = Tier> {
    prop_oneof![Just(Tier::Device), Just(Tier::Township), Just(Tier::County)]
}

fn text() -> impl Strategy<Value = String> {
    // Up to 40 characters of up to 4 bytes each: always under MAX_TEXT_BYTES.
    "\\PC{0,40}"
}

fn position() -> impl Strategy<Value = LogPosition> {
    prop_oneof![Just(LogPosition::START), (1..i64::MAX, hash()).prop_map(|(seq, hash)| LogPosition { seq, hash })]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        case_id(),
        prop::option::of(any::<[u8; 32]>()),
        prop::option::of(prop::array::uniform::<_, 64>(any::<u8>())),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(case, signer, signature, change)| Envelope { case, signer, signature, change })
}

fn refused() -> impl Strategy<Value = Refused> {
    (case_id(), hash(), any::<u8>(), text()).prop_map(|(case, hash, code, text)| Refused {
        case,
        hash,
        reason: RefuseReason::from_code(code),
        text,
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<[u8; 16]>(), tier(), scope(), 0..i64::MAX, position(), 1u8..=255, any::<u8>()).prop_map(
            |(replica, tier, scope, log_head, have, min_version, extra)| Message::Hello {
                replica: ReplicaId::from_bytes(replica),
                tier,
                scope,
                log_head,
                have,
                min_version,
                max_version: min_version.saturating_add(extra),
            }
        ),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|bytes| Message::Grant { bytes }),
        (any::<u64>(), prop::option::of((0..i64::MAX, any::<[u8; 32]>())), prop::collection::vec(envelope(), 0..8))
            .prop_map(|(batch, upto, envelopes)| Message::Push {
                batch,
                upto: upto.map(|(seq, hash)| LogPosition { seq, hash }),
                envelopes
            }),
        (any::<u64>(), 0..i64::MAX, any::<u32>(), any::<u32>(), any::<u32>(), prop::collection::vec(refused(), 0..6))
            .prop_map(|(batch, upto, applied, duplicates, pending, refused)| Message::Ack {
                batch,
                upto,
                applied,
                duplicates,
                pending,
                refused
            }),
        (any::<u32>(), any::<bool>(), prop::collection::vec((case_id(), hash()), 0..16))
            .prop_map(|(part, last, entries)| Message::Digest { part, last, entries }),
        prop::collection::vec((case_id(), prop::collection::vec(hash(), 0..4)), 0..8)
            .prop_map(|cases| Message::Want { cases }),
        (0..i64::MAX).prop_map(|log_head| Message::Done { log_head }),
        (any::<u16>(), text()).prop_map(|(code, text)| Message::Error { code: ErrorCode::from_code(code), text }),
    ]
}

/// Feeds `bytes` in chunks of the given sizes (cycled), draining after each; checks the buffer
/// bound throughout and returns the messages decoded before the first error.
fn feed(bytes: &[u8], chunks: &[usize]) -> Vec<Message> {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let pushed = dec.push(piece);
        assert!(dec.buffered() <= MAX_BUFFERED, "buffered {}", dec.buffered());
        if pushed.is_err() {
            assert!(dec.is_poisoned());
            assert!(dec.push(piece).is_err());
            return out;
        }
        loop {
            match dec.next() {
                Ok(Some(msg)) => out.push(msg),
                Ok(None) => break,
                Err(_) => {
                    assert!(dec.is_poisoned());
                    return out;
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Set { at: usize, byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        (any::<usize>(), prop_oneof![Just(0u8), Just(0xff), Just(0x80), any::<u8>()])
            .prop_map(|(at, byte)| Mutation::Set { at, byte }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::Flip { at, bit } if len > 0 => bytes[at % len] ^= 1 << bit,
        Mutation::Insert { at, byte } => bytes.insert(at % (len + 1), byte),
        Mutation::Delete { at } if len > 0 => {
            bytes.remove(at % len);
        }
        Mutation::Set { at, byte } if len > 0 => bytes[at % len] = byte,
        _ => {}
    }
}

/// Rewrites the length prefix to match the payload, so mutations reach the message decoder
/// instead of only desynchronising the framing.
fn reframe(frame: &mut [u8]) {
    if frame.len() >= PREFIX_BYTES {
        let len = u32::try_from(frame.len() - PREFIX_BYTES).unwrap();
        frame[..PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn wire_round_trips_arbitrary_messages(msgs in prop::collection::vec(message(), 1..4), chunk in 1usize..300) {
        let mut stream = Vec::new();
        for msg in &msgs {
            let frame = wire::encode(msg).unwrap();
            prop_assert_eq!(&wire::decode(&frame[PREFIX_BYTES..]).unwrap(), msg);
            stream.extend(frame);
        }
        prop_assert_eq!(feed(&stream, &[chunk]), msgs);
    }

    #[test]
    fn wire_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunks in prop::collection::vec(1usize..512, 1..8),
    ) {
        let _ = wire::decode(&bytes);
        feed(&bytes, &chunks);
    }

    #[test]
    fn wire_never_panics_on_arbitrary_payloads_in_valid_frames(
        kind in 0u8..=9,
        body in prop::collection::vec(any::<u8>(), 0..512),
        chunks in prop::collection::vec(1usize..64, 1..4),
    ) {
        let mut payload = vec![wire::PROTOCOL_VERSION, kind];
        payload.extend(body);
        let _ = wire::decode(&payload);
        let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        frame.extend(payload);
        feed(&frame, &chunks);
    }

    #[test]
    fn wire_never_panics_on_mutated_frames(
        msg in message(),
        mutations in prop::collection::vec(mutation(), 1..6),
        fix_prefix in any::<bool>(),
        chunk in 1usize..128,
    ) {
        let mut frame = wire::encode(&msg).unwrap();
        for m in &mutations {
            mutate(&mut frame, m);
        }
        if fix_prefix {
            reframe(&mut frame);
        }
        if let Some(payload) = frame.get(PREFIX_BYTES..)
            && let Ok(decoded) = wire::decode(payload)
        {
            // Whatever decodes is a valid message again.
            prop_assert!(wire::encode(&decoded).is_ok());
        }
        feed(&frame, &[chunk]);
    }
}

#[test]
fn wire_refuses_many_oversize_prefixes_without_buffering() {
    for len in [MAX_FRAME_BYTES as u32 + 1, u32::MAX] {
        let mut dec = FrameDecoder::new();
        let mut stream = len.to_be_bytes().to_vec();
        stream.extend(vec![0u8; 4096]);
        assert!(dec.push(&stream).is_err());
        assert_eq!(dec.buffered(), 0);
    }
}
