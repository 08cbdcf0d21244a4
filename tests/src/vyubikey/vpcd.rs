//! The card's side of the vpcd protocol: a TCP client of the reader driver
//! inside pcscd. Every frame is a 2-byte big-endian length and a payload;
//! one-byte payloads are control (0 power off, 1 power on, 2 reset, 4 ATR),
//! longer ones are command APDUs answered with a response APDU.

use super::Shared;
use super::card::Step;
use socket2::{SockRef, TcpKeepalive};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A real YubiKey 5 NFC's ATR (offers T=1, which the crate asks for).
pub const ATR: [u8; 23] = [
    0x3b, 0xfd, 0x13, 0x00, 0x00, 0x81, 0x31, 0xfe, 0x15, 0x80, 0x73, 0xc0, 0x21, 0xc0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4b, 0x65, 0x79, 0x40,
];

/// An inserted card: the connection and the thread that serves it.
pub(crate) struct Connection {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
    reset_on_close: bool,
}

impl Connection {
    /// Connects to vpcd on `port` (retrying until `limit`: pcscd may still be
    /// starting) and serves the card from a thread. With `reset_on_close`
    /// the connection ends with a reset instead of a FIN (see below).
    pub(crate) fn open(
        port: u16,
        shared: Arc<Shared>,
        limit: Duration,
        reset_on_close: bool,
    ) -> io::Result<Self> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        // vpcd writes the length and the payload separately: without these
        // every exchange waits for a delayed ACK (~40 ms).
        stream.set_nodelay(true)?;
        SockRef::from(&stream).set_tcp_quickack(true)?;
        SockRef::from(&stream).set_tcp_keepalive(&TcpKeepalive::new())?;
        // For a pcscd a test stops and restarts: closed with a reset, not a
        // FIN, because when pcscd goes first its half-closed socket would
        // otherwise linger on the reader's port and the restarted pcscd
        // (vpcd binds without SO_REUSEADDR) could not listen there for a
        // minute. Not for the shared pcscd: its vpcd does not take a reset
        // well (the next card on that reader is not seen).
        if reset_on_close {
            SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
        }
        shared.removed.store(false, Ordering::SeqCst);
        let reader = stream.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(format!("vyubikey-{port}"))
            .spawn(move || {
                // The connection ends when vpcd or remove() closes it.
                let _ = serve(reader, &shared);
            })?;
        Ok(Connection {
            stream,
            thread: Some(thread),
            reset_on_close,
        })
    }

    /// Pulls the card: closes the connection and waits for the thread.
    pub(crate) fn close(mut self, shared: &Shared) {
        shared.removed.store(true, Ordering::SeqCst);
        shared.touched.notify_all();
        // A reset connection must not send a FIN first: answering pcscd's
        // own FIN (it stopped) would leave *its* side in TIME_WAIT on the
        // port. Shutting down only the read side wakes the thread and
        // sends nothing; dropping the socket then sends the reset.
        let how = if self.reset_on_close {
            Shutdown::Read
        } else {
            Shutdown::Both
        };
        let _ = self.stream.shutdown(how);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    // vpcd has sent the length alone and holds the payload back (Nagle)
    // until the length is acknowledged. Setting TCP_QUICKACK sends a pending
    // ACK at once; the kernel leaves quick-ACK mode as soon as we answer, so
    // it must be set here, between the two reads, every time.
    SockRef::from(&*stream).set_tcp_quickack(true)?;
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut payload)?;
    SockRef::from(&*stream).set_tcp_quickack(true)?;
    Ok(payload)
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    loop {
        let payload = read_frame(&mut stream)?;
        match payload.as_slice() {
            [0] | [1] | [2] => shared.card().reset_session(),
            [4] => write_frame(&mut stream, &ATR)?,
            [_] => {}
            apdu => {
                let response = answer(shared, apdu);
                let sign_time = shared.sign_time();
                if is_signature(apdu) && !sign_time.is_zero() {
                    std::thread::sleep(sign_time);
                }
                write_frame(&mut stream, &response)?;
            }
        }
    }
}

/// The last (or only) APDU of a GENERAL AUTHENTICATE with a key slot: a
/// signature, not management-key authentication (slot 9b).
fn is_signature(apdu: &[u8]) -> bool {
    matches!(apdu, [cla, 0x87, _, p2, ..] if cla & 0x10 == 0 && *p2 != 0x9b)
}

/// Answers one APDU, waiting for a touch (without holding the card's lock)
/// when a signature needs one.
fn answer(shared: &Shared, apdu: &[u8]) -> Vec<u8> {
    let mut card = shared.card();
    let pending = match card.respond(apdu) {
        Step::Done(response) => return response,
        Step::WaitTouch(p) => p,
    };
    card.touch.pending = true;
    card.touch.given = false;
    let deadline = Instant::now() + card.touch.timeout;
    let touched = loop {
        if card.touch.automatic || card.touch.given {
            break true;
        }
        let now = Instant::now();
        if now >= deadline || shared.removed.load(Ordering::SeqCst) {
            break false;
        }
        card = shared
            .touched
            .wait_timeout(card, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    };
    card.touch.pending = false;
    card.touch.given = false;
    card.finish_sign(pending, apdu, touched)
}
