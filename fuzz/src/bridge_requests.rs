//! The bridge's API bodies: every request a route reads (and every answer
//! the client reads), and the streamed batch body.

use keybridge::api::log::{
    Appended, Approve, MadeRequest, MakeRequest, Reject, Revoke, SetThreshold,
};
use keybridge::api::pair::{PairRequest, PairingView};
use keybridge::pairing::check_origin;
use keybridge::wire::{
    AccountInit, AccountLog, Args, BatchLine, BatchTrailer, CreateKey, CreatedKey, KeyView,
    LockState, Problem, SignRequest, Signed, Status, Unlock, arg_json,
};
use keybridge_protocol::command::is_valid_command;
use keybridge_protocol::key::unhex;
use keybridge_protocol::{ArgValue, Batch, DeviceIds, check_device_id};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Longest id line the bridge keeps (an id and its `\r`).
const MAX_ID_LINE: usize = keybridge_protocol::device_id::MAX_DEVICE_ID_LEN + 1;

/// 1. `data` as the JSON body of every route, and of every answer: what
///    is read writes back as JSON that reads again to the same JSON.
/// 2. `args` read strictly (no duplicate keys, floats or nulls) are what
///    a plain JSON reader sees.
/// 3. A pairing's origin, once normalized, is its own normal form.
/// 4. `data` as the body of `POST /v1/sign/batch`: line 1 a sign request,
///    then one device id per line, read as the route reads them; the ids
///    it keeps make a batch.
pub fn bridge_requests(data: &[u8]) {
    // Requests.
    let sign = round_trip::<SignRequest>(data);
    round_trip::<CreateKey>(data);
    round_trip::<Unlock>(data);
    round_trip::<AccountInit>(data);
    round_trip::<MakeRequest>(data);
    round_trip::<Approve>(data);
    round_trip::<Reject>(data);
    round_trip::<Revoke>(data);
    round_trip::<SetThreshold>(data);
    if let Some(pair) = round_trip::<PairRequest>(data)
        && let Ok(origin) = check_origin(&pair.origin)
    {
        assert_eq!(check_origin(&origin), Ok(origin.clone()), "a normal origin");
    }
    if let Some(sign) = &sign {
        check_sign_request(sign);
    }
    strict_args(data);
    // Answers, as the client reads them.
    round_trip::<Status>(data);
    round_trip::<KeyView>(data);
    round_trip::<CreatedKey>(data);
    round_trip::<LockState>(data);
    round_trip::<Signed>(data);
    round_trip::<AccountLog>(data);
    round_trip::<Problem>(data);
    round_trip::<MadeRequest>(data);
    round_trip::<Appended>(data);
    round_trip::<PairingView>(data);
    round_trip::<BatchTrailer>(data);
    if let Ok(line) = serde_json::from_slice::<BatchLine<'_>>(data) {
        let json = serde_json::to_vec(&line).expect("JSON");
        let back: BatchLine<'_> = serde_json::from_slice(&json).expect("reads back");
        assert_eq!(back, line);
    }

    batch_body(data);
}

/// `data` read as `T`; when it reads, its JSON reads back to the same
/// JSON.
fn round_trip<T: DeserializeOwned + Serialize>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_vec(&value).expect("JSON");
    let back: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{} does not read back: {e}: {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        serde_json::to_vec(&back).expect("JSON"),
        json,
        "{} changes when it is read back",
        std::any::type_name::<T>()
    );
    Some(value)
}

/// The checks of `POST /v1/sign` that need no daemon: none panics.
fn check_sign_request(req: &SignRequest) {
    let _ = is_valid_command(&req.command);
    if let Some(h) = &req.body_sha256 {
        let _ = unhex(h).and_then(|b| <[u8; 32]>::try_from(b).ok());
    }
    if let Some(d) = &req.device {
        let _ = check_device_id(d);
    }
    if let Some(ds) = &req.devices {
        let _ = Batch::new(ds.iter());
    }
}

/// Strict `args` are what a plain JSON reader sees (which keeps the last
/// of two equal keys: so there were none).
fn strict_args(data: &[u8]) {
    let Ok(args) = serde_json::from_slice::<Args>(data) else {
        return;
    };
    let plain: serde_json::Value = serde_json::from_slice(data).expect("strict JSON is JSON");
    assert_eq!(arg_json(&ArgValue::Map(args.0.clone())), plain);
    assert_eq!(serde_json::to_value(&args).expect("JSON"), plain);
}

/// The streamed batch body, read as the route reads it
/// (`bridge/src/api/batch.rs`, `Intake`): lines split at `\n`, a `\r`
/// before it dropped, line 1 a sign request without devices, every later
/// line a device id of at most [`MAX_ID_LINE`] bytes.
fn batch_body(data: &[u8]) {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    // A body that ends with a newline has no line after it.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let Some((first, ids_lines)) = lines.split_first() else {
        return;
    };
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let Ok(req) = serde_json::from_slice::<SignRequest>(first) else {
        return;
    };
    if req.device.is_some() || req.devices.is_some() {
        return;
    }
    check_sign_request(&req);
    let mut ids = DeviceIds::new();
    let mut bad = 0;
    for line in ids_lines {
        if line.len() > MAX_ID_LINE {
            bad += 1;
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(id) => {
                let valid = check_device_id(id).is_ok();
                assert_eq!(ids.push(id).is_ok(), valid);
                bad += usize::from(!valid);
            }
            Err(_) => bad += 1,
        }
    }
    if bad > 0 || ids.is_empty() {
        return;
    }
    let (sorted, repeated) = ids.sort_dedup();
    if !repeated.is_empty() {
        return;
    }
    let batch = Batch::from_sorted(sorted).expect("sorted, unique, valid ids make a batch");
    let signed = batch.signed_root();
    for (i, id) in batch.device_ids().iter().enumerate().take(64) {
        assert!(batch.proof(i).verify_signed(id, &signed));
    }
}
