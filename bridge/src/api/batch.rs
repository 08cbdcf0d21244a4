//! `POST /v1/sign/batch`: one command for a whole fleet, streamed both
//! ways, so that neither the bridge nor its client holds every envelope.
//!
//! The request body is lines (`\n`, or `\r\n`):
//!
//! ```text
//! {"key":"alice-yk","command":"run-script","args":{…},"ttl":300}   ← line 1: a sign request
//! dev-0001                                                        ← then one device id per line
//! dev-0002
//! …
//! ```
//!
//! Line 1 is the JSON of `POST /v1/sign` without `device`/`devices`; it is
//! checked as soon as it arrives (an unknown key is refused before the ids
//! are read). Every later line is one device id
//! ([`keybridge_protocol::device_id`]); an empty line is refused. Bad ids
//! and ids given twice are refused with their line numbers (the request
//! line is line 1), at most [`SHOWN`] of them named, and nothing is
//! signed. More ids than the policy's `max_batch` are refused as soon as
//! the one too many arrives.
//!
//! The bridge keeps the ids (sorted, each once: about 16 bytes a device)
//! and the tree (32 bytes a device); it signs once, writes the audit line
//! (size and root) and only then answers `200` with
//! `application/x-ndjson`, chunked:
//!
//! ```text
//! {"device":"dev-0001","envelope":"0oRYH6MB…"}                     ← one per device, sorted by id
//! …
//! {"complete":true,"size":2,"root":"…","kid":"…","audit":{"time":…,"cti":"…"},"backend":…}
//! ```
//!
//! The last line, and only it, has `"complete": true`: a stream without it
//! was cut short and must not be taken as the batch. The envelopes are
//! made as the client reads them, [`CHUNK`] bytes at a time with at most
//! [`IN_FLIGHT`] chunks waiting: a client that stops reading for 30 s
//! ([`crate::server::Limits::stream_stall`]) is given up on (the connection is cut, no trailer), one that
//! disconnects stops the work at once; either way the daemon goes on
//! serving. Every failure before the first envelope is an ordinary
//! problem answer.
//!
//! Reading the body has its own limits instead of the 2 MB of the other
//! routes: each read within the daemon's body deadline, the whole body
//! within [`BODY_DEADLINES`] of them, the request line at most
//! [`MAX_BODY`] bytes, an id line at most [`MAX_DEVICE_ID_LEN`] bytes.

use super::problem::ApiError;
use super::sign::{Asked, check_batch_size, record};
use super::{MAX_BODY, Shared};
use crate::wire::{BatchAudit, BatchTrailer, SignRequest};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use keybridge_protocol::device_id::MAX_DEVICE_ID_LEN;
use keybridge_protocol::{Batch, BatchEnvelopes, DeviceIds};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Most problems named in a refusal (the rest are counted).
pub const SHOWN: usize = 20;
/// Bytes of NDJSON per chunk of the answer.
pub const CHUNK: usize = 64 * 1024;
/// Chunks made ahead of the client.
pub const IN_FLIGHT: usize = 4;
/// The whole body must arrive within this many body deadlines.
pub const BODY_DEADLINES: u32 = 10;

/// `POST /v1/sign/batch`
pub async fn sign_batch(State(s): State<Shared>, request: Request) -> Result<Response, ApiError> {
    let (asked, ids) = read_request(&s, request.into_body()).await?;
    // Sorting a million ids and building the tree: ~1 s of CPU, off the
    // runtime's threads.
    let batch = tokio::task::spawn_blocking(move || sorted_batch(ids))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let claims = asked.claims(&s, None, Some(batch.signed_root()))?;
    let chosen = asked.sign(&s, &claims).await?;
    let by = chosen.signed_by();
    let size = batch.len();
    // The signature is checked here, before the audit line: a backend's
    // bad signature never leaves as a command.
    let envelopes = chosen
        .unsigned
        .batch_envelopes(&chosen.signature, batch)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let audit = record(&s, &chosen.entry, &claims, &by)?;
    let trailer = BatchTrailer {
        complete: true,
        size,
        root: audit.batch_root.clone().unwrap_or_default(),
        kid: chosen.entry.kid_hex.clone(),
        audit: BatchAudit {
            time: audit.time,
            cti: audit.cti.clone().unwrap_or_default(),
        },
        by,
    };
    tracing::info!(
        size,
        root = %trailer.root,
        kid = %trailer.kid,
        "batch signed: streaming its envelopes"
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        stream(envelopes, trailer, s.stream_stall),
    )
        .into_response())
}

/// Reads the body: the request line (checked at once), then the ids, in
/// the order given, with every bad line counted and the first [`SHOWN`]
/// named.
async fn read_request(s: &Shared, mut body: Body) -> Result<(Asked, DeviceIds), ApiError> {
    let deadline = tokio::time::Instant::now() + s.body_read * BODY_DEADLINES;
    let mut intake = Intake {
        line: 0,
        asked: None,
        ids: DeviceIds::new(),
        problems: vec![],
        bad: 0,
        partial: vec![],
        overlong: false,
    };
    loop {
        let frame = tokio::time::timeout(
            s.body_read
                .min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            body.frame(),
        )
        .await
        .map_err(|_| ApiError::RequestTimeout)?;
        match frame {
            None => break,
            Some(Err(e)) => {
                return Err(ApiError::BadRequest(format!(
                    "the request body is unreadable: {e}"
                )));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    intake.take(s, &data)?;
                }
            }
        }
    }
    intake.finish(s)
}

/// The body as it is read.
struct Intake {
    /// Lines complete so far.
    line: usize,
    /// Line 1, checked.
    asked: Option<Asked>,
    ids: DeviceIds,
    /// Bad lines, for a person (at most [`SHOWN`]).
    problems: Vec<String>,
    /// Bad lines in all.
    bad: usize,
    /// The line being read (bounded: see [`Intake::limit`]).
    partial: Vec<u8>,
    /// The line being read is too long (the rest of it is dropped).
    overlong: bool,
}

impl Intake {
    /// Longest line kept: the request line, or an id and its `\r`.
    fn limit(&self) -> usize {
        if self.asked.is_none() {
            MAX_BODY
        } else {
            MAX_DEVICE_ID_LEN + 1
        }
    }

    /// Takes a piece of the body.
    fn take(&mut self, s: &Shared, mut data: &[u8]) -> Result<(), ApiError> {
        while !data.is_empty() {
            let (piece, rest, ends) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            data = rest;
            if !self.overlong {
                if self.partial.len().saturating_add(piece.len()) > self.limit() {
                    self.overlong = true;
                    self.partial.clear();
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            if ends {
                let line = std::mem::take(&mut self.partial);
                let overlong = std::mem::take(&mut self.overlong);
                self.line(s, &line, overlong)?;
                // The buffer is reused (one allocation for the whole body).
                self.partial = line;
                self.partial.clear();
            }
        }
        Ok(())
    }

    /// One whole line (without its `\n`).
    fn line(&mut self, s: &Shared, line: &[u8], overlong: bool) -> Result<(), ApiError> {
        self.line += 1;
        let n = self.line;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.asked.is_none() {
            if overlong {
                return Err(ApiError::BadRequest(format!(
                    "line 1, the sign request, is longer than {MAX_BODY} bytes"
                )));
            }
            let req: SignRequest = serde_json::from_slice(line).map_err(|e| {
                ApiError::BadRequest(format!(
                    "line 1 is not a sign request (JSON on one line, then one device id per line): {e}"
                ))
            })?;
            if req.device.is_some() || req.devices.is_some() {
                return Err(ApiError::BadRequest(
                    "line 1 names no devices: they are the lines after it, one per line".into(),
                ));
            }
            self.asked = Some(Asked::check(s, req)?);
            return Ok(());
        }
        let problem = if overlong {
            Some(format!(
                "line {n}: longer than a device id may be ({MAX_DEVICE_ID_LEN} bytes)"
            ))
        } else {
            match std::str::from_utf8(line) {
                Err(_) => Some(format!("line {n}: not UTF-8")),
                Ok(id) => match self.ids.push(id) {
                    Ok(()) => None,
                    Err(keybridge_protocol::BatchError::BadDeviceId { error, .. }) => {
                        Some(format!("line {n}: device id {id:?}: {error}"))
                    }
                    Err(_) => Some(format!("line {n}: too many devices for one batch")),
                },
            }
        };
        if let Some(p) = problem {
            self.bad += 1;
            if self.problems.len() < SHOWN {
                self.problems.push(p);
            }
        }
        check_batch_size(s, self.ids.len())
    }

    /// The request line and the ids, once the body has ended.
    fn finish(mut self, s: &Shared) -> Result<(Asked, DeviceIds), ApiError> {
        if !self.partial.is_empty() || self.overlong {
            // A last line without its newline.
            let line = std::mem::take(&mut self.partial);
            let overlong = self.overlong;
            self.line(s, &line, overlong)?;
        }
        let Some(asked) = self.asked else {
            return Err(ApiError::BadRequest(
                "the body is empty: a sign request on line 1, then one device id per line".into(),
            ));
        };
        if self.bad > 0 {
            return Err(refusal(self.problems, self.bad));
        }
        if self.ids.is_empty() {
            return Err(ApiError::BadRequest(
                "no device ids: one per line after the sign request".into(),
            ));
        }
        Ok((asked, self.ids))
    }
}

/// The refusal naming the first problems, counting the rest.
fn refusal(problems: Vec<String>, all: usize) -> ApiError {
    let mut text = problems.join("; ");
    let more = all.saturating_sub(problems.len());
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    ApiError::BadRequest(format!("{text}; nothing was signed"))
}

/// The batch over `ids`, or the ids given twice with their lines.
fn sorted_batch(ids: DeviceIds) -> Result<Batch, ApiError> {
    let (sorted, repeated) = ids.sort_dedup();
    if !repeated.is_empty() {
        let all = repeated.len();
        let named = repeated
            .into_iter()
            .take(SHOWN)
            .map(|r| {
                // Position 0 is line 2 (the request is line 1).
                let lines: Vec<String> = r.positions.iter().map(|p| (p + 2).to_string()).collect();
                format!(
                    "device id {:?} is on lines {} (each device once)",
                    r.id,
                    lines.join(", ")
                )
            })
            .collect();
        return Err(refusal(named, all));
    }
    Batch::from_sorted(sorted).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The answer's body: the envelopes as the client reads them, then the
/// trailer; cut (an error, so the connection is closed without the last
/// chunk) if the maker stops before the trailer.
fn stream(envelopes: BatchEnvelopes<Batch>, trailer: BatchTrailer, stall: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT);
    let complete = Arc::new(AtomicBool::new(false));
    tokio::spawn(make(envelopes, trailer, tx, Arc::clone(&complete), stall));
    let chunks = futures_util::stream::unfold(Some(rx), move |rx| {
        let complete = Arc::clone(&complete);
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(chunk) => Some((Ok(chunk), Some(rx))),
                None if complete.load(Ordering::Acquire) => None,
                None => Some((
                    Err(std::io::Error::other(
                        "the batch stopped before its last envelope",
                    )),
                    None,
                )),
            }
        }
    });
    Body::from_stream(chunks)
}

/// Makes the answer's chunks at the pace the client takes them.
async fn make(
    mut envelopes: BatchEnvelopes<Batch>,
    trailer: BatchTrailer,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    complete: Arc<AtomicBool>,
    stall: Duration,
) {
    let total = envelopes.remaining();
    let mut env = Vec::with_capacity(2048);
    loop {
        let mut chunk = Vec::with_capacity(CHUNK + 4096);
        let mut last = false;
        while chunk.len() < CHUNK {
            let Some(id) = envelopes.next_into(&mut env) else {
                serde_json::to_writer(&mut chunk, &trailer).expect("a trailer serializes");
                chunk.push(b'\n');
                last = true;
                break;
            };
            chunk.extend_from_slice(br#"{"device":"#);
            serde_json::to_writer(&mut chunk, id).expect("a string serializes");
            chunk.extend_from_slice(br#","envelope":""#);
            let start = chunk.len();
            let len = base64::encoded_len(env.len(), true).expect("an envelope is small");
            chunk.resize(start + len, 0);
            B64.encode_slice(&env, &mut chunk[start..])
                .expect("sized for the envelope");
            chunk.extend_from_slice(b"\"}\n");
        }
        if last {
            complete.store(true, Ordering::Release);
        }
        match tokio::time::timeout(stall, tx.send(Bytes::from(chunk))).await {
            Ok(Ok(())) if last => return,
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                tracing::warn!(
                    sent = total - envelopes.remaining(),
                    total,
                    "the client went away before the end of the batch"
                );
                return;
            }
            Err(_) => {
                complete.store(false, Ordering::Release);
                tracing::warn!(
                    sent = total - envelopes.remaining(),
                    total,
                    ?stall,
                    "the client stopped reading the batch: cut off"
                );
                return;
            }
        }
    }
}
