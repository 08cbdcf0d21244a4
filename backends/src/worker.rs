//! One worker thread per key (DESIGN.md §6): the thread owns the signer
//! (for hardware, its session); requests queue to it over a channel and each
//! gets its answer on a tokio `oneshot`, so async code never blocks on a PIN
//! check, a touch or a 64 MiB key derivation.
//!
//! Requests run one at a time, in the order they were sent. A request whose
//! caller stops waiting still runs (a `sign_then_lock` still locks).
//!
//! A hardware key's worker has a deadline ([`Worker::spawn_with_deadline`]):
//! a token that hangs (a card that never answers, a PKCS#11 module or a TPM
//! that blocks) costs its callers at most that long. A request not answered
//! in time gets [`BackendError::NotAnswering`]; while the thread has been
//! stuck in one job longer than the deadline, new requests are refused at
//! once instead of queueing behind it (no queue grows without bound), an
//! unlock that was given up is undone by a lock queued right behind it, and
//! other keys, on their own threads, are not affected.

use crate::{BackendError, Signer};
use keybridge_protocol::PublicKey;
use secrecy::SecretString;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A cheap, cloneable handle to the thread that owns one key's signer.
///
/// When the last handle is dropped the thread locks the signer, drops it
/// (wiping what it holds) and exits. If the signer panics, the caller gets
/// [`BackendError::Failed`], the worker locks and drops the signer and
/// stops: every later request also answers `Failed` and
/// [`Worker::is_stopped`] turns true, so the owner can open the key again.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

struct Shared {
    name: String,
    public: PublicKey,
    touch: Option<Arc<AtomicBool>>,
    presence: Option<Arc<crate::Presence>>,
    evidence: Option<crate::Evidence>,
    stopped: AtomicBool,
    /// The signer; `None` once the worker has stopped. The thread takes the
    /// lock for each job; a signer that [`Signer::signs_in_place`] is also
    /// used directly by callers that find it free.
    signer: Mutex<Option<Box<dyn Signer>>>,
    in_place: bool,
    /// How long a caller waits for an answer; `None`: as long as it takes
    /// (software keys: a costly key derivation is not a hang).
    deadline: Option<Duration>,
    /// Since when the thread runs its current job.
    busy_since: Mutex<Option<Instant>>,
}

type Reply<T> = oneshot::Sender<Result<T, BackendError>>;

enum Job {
    Unlock {
        secret: SecretString,
        spend_last_attempt: bool,
        reply: Reply<()>,
    },
    Lock {
        reply: oneshot::Sender<()>,
    },
    IsUnlocked {
        reply: oneshot::Sender<bool>,
    },
    Sign {
        tbs: Vec<u8>,
        then_lock: bool,
        reply: Reply<Vec<u8>>,
    },
}

/// The signer panicked; the worker stops.
struct Panicked;

// The bridge shares handles across tasks and threads.
const _: fn() = || {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Worker>();
};

impl Worker {
    /// Starts the thread that owns `signer`. `name` names the thread and
    /// appears in errors (e.g. the key's label or kid).
    pub fn spawn(name: String, signer: Box<dyn Signer>) -> Worker {
        Worker::spawn_with_deadline(name, signer, None)
    }

    /// [`Worker::spawn`], with callers waiting at most `deadline` for each
    /// answer (see the module's documentation).
    pub fn spawn_with_deadline(
        name: String,
        signer: Box<dyn Signer>,
        deadline: Option<Duration>,
    ) -> Worker {
        let shared = Arc::new(Shared {
            public: signer.public_key().clone(),
            touch: signer.touch_indicator(),
            presence: signer.presence(),
            evidence: signer.residency_evidence(),
            stopped: AtomicBool::new(false),
            in_place: signer.signs_in_place(),
            signer: Mutex::new(Some(signer)),
            name,
            deadline,
            busy_since: Mutex::new(None),
        });
        let (jobs, queue) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("key {}", shared.name.replace('\0', "")))
            .spawn(move || serve(queue, &thread_shared));
        if spawned.is_err() {
            // The queue was dropped: every request answers `Failed`.
            stop(&shared);
        }
        Worker { shared, jobs }
    }

    /// The key's public key (cached; no round trip to the thread).
    pub fn public_key(&self) -> &PublicKey {
        &self.shared.public
    }

    /// The signer's residency evidence, read once at spawn.
    pub fn evidence(&self) -> Option<crate::Evidence> {
        self.shared.evidence.clone()
    }

    /// Whether a signature is waiting for the user to touch the token now.
    pub fn touch_pending(&self) -> bool {
        self.shared
            .touch
            .as_ref()
            .is_some_and(|t| t.load(Ordering::Acquire))
    }

    /// Whether the key's token is there, as its backend's watch saw it
    /// last ([`crate::Seen::Present`] for keys that cannot be pulled out).
    pub fn presence(&self) -> crate::Seen {
        self.shared
            .presence
            .as_ref()
            .map_or(crate::Seen::Present, |p| p.get())
    }

    /// The name given at [`Worker::spawn`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How long the thread has been in its current job; `None` when idle.
    pub fn busy_for(&self) -> Option<Duration> {
        let since = *self
            .shared
            .busy_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        since.map(|s| s.elapsed())
    }

    /// Whether the thread has stopped (after a panic in the signer); a
    /// stopped worker answers every request with [`BackendError::Failed`].
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// [`Signer::unlock`] on the worker thread. The secret is wiped when the
    /// job is done.
    pub async fn unlock(
        &self,
        secret: SecretString,
        spend_last_attempt: bool,
    ) -> Result<(), BackendError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Unlock {
            secret,
            spend_last_attempt,
            reply,
        })?;
        let result = self.wait(answer).await;
        if let Err(BackendError::NotAnswering { .. }) = result {
            // Given up: if the token answers later, the unlock it then
            // does must not stay without a grant. The lock queued behind
            // it undoes it.
            let (reply, _) = oneshot::channel();
            let _ = self.jobs.send(Job::Lock { reply });
        }
        result?
    }

    /// [`Signer::lock`] on the worker thread; returns once the key is locked.
    ///
    /// A stuck token is not waited for past the deadline: the lock stays
    /// queued and runs when the token answers.
    pub async fn lock(&self) {
        let (reply, answer) = oneshot::channel();
        // Queued even behind a stuck job: the lock must happen eventually.
        if self.jobs.send(Job::Lock { reply }).is_ok() {
            // An error means the thread is gone, and with it the key.
            let _ = self.wait(answer).await;
        }
    }

    /// [`Signer::is_unlocked`]; false if the worker has stopped.
    pub async fn is_unlocked(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.send(Job::IsUnlocked { reply }).is_err() {
            return false;
        }
        self.wait(answer).await.unwrap_or(false)
    }

    /// [`Signer::sign`] on the worker thread.
    pub async fn sign(&self, tbs: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        self.sign_job(tbs, false).await
    }

    /// Signs and then locks, as one job: no other request can run in
    /// between (the `each-task` unlock policy). Locks whether or not the
    /// signature succeeded.
    pub async fn sign_then_lock(&self, tbs: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        self.sign_job(tbs, true).await
    }

    async fn sign_job(&self, tbs: Vec<u8>, then_lock: bool) -> Result<Vec<u8>, BackendError> {
        if let Some(result) = self.sign_in_place(&tbs, then_lock) {
            return result;
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Sign {
            tbs,
            then_lock,
            reply,
        })?;
        self.wait(answer).await?
    }

    /// A software signer that is free right now signs on the caller's
    /// thread: two thread hand-offs less per signature. `None` when the
    /// job must queue (a hardware signer, or a busy one, e.g. unlocking).
    fn sign_in_place(&self, tbs: &[u8], then_lock: bool) -> Option<Result<Vec<u8>, BackendError>> {
        if !self.shared.in_place {
            return None;
        }
        let mut slot = self.shared.signer.try_lock().ok()?;
        let signer = slot.as_mut()?;
        match guarded(|| sign(signer.as_mut(), tbs, then_lock)) {
            Ok(result) => Some(result),
            Err(Panicked) => {
                drop(slot);
                stop(&self.shared);
                Some(Err(panicked(&self.shared.name)))
            }
        }
    }

    /// Queues `job`, unless the thread is stuck in another one past the
    /// deadline: then the job (and any secret in it) is dropped here and
    /// the caller told at once.
    fn send(&self, job: Job) -> Result<(), BackendError> {
        if let Some(deadline) = self.shared.deadline {
            let since = *self
                .shared
                .busy_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(since) = since
                && since.elapsed() >= deadline
            {
                return Err(self.not_answering(since.elapsed()));
            }
        }
        // On failure the job (and any secret in it) is dropped right here.
        self.jobs.send(job).map_err(|_| self.stopped())
    }

    /// The answer to a queued job, waited for at most the deadline.
    async fn wait<T>(&self, answer: oneshot::Receiver<T>) -> Result<T, BackendError> {
        match self.shared.deadline {
            None => answer.await.map_err(|_| self.stopped()),
            Some(deadline) => match tokio::time::timeout(deadline, answer).await {
                Ok(answer) => answer.map_err(|_| self.stopped()),
                Err(_) => Err(self.not_answering(deadline)),
            },
        }
    }

    fn not_answering(&self, waited: Duration) -> BackendError {
        BackendError::NotAnswering {
            key: self.shared.name.clone(),
            waited_secs: waited.as_secs().max(1),
        }
    }

    fn stopped(&self) -> BackendError {
        BackendError::Failed(format!(
            "the worker of key {} has stopped",
            self.shared.name
        ))
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.shared.name)
            .field("kid", &self.shared.public.kid())
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

/// The thread: runs jobs until every handle is gone or the signer panics.
fn serve(queue: mpsc::Receiver<Job>, shared: &Shared) {
    while let Ok(job) = queue.recv() {
        let mut slot = shared.signer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(signer) = slot.as_mut() else {
            // Stopped by a panic on a caller's thread: the job's reply is
            // dropped, and its caller answers `Failed`.
            break;
        };
        set_busy(shared, Some(Instant::now()));
        let outcome = run(signer.as_mut(), job, shared);
        set_busy(shared, None);
        if outcome.is_err() {
            break;
        }
    }
    // Stopped before the queue goes: a caller answered `Failed` by the
    // dropped queue already sees `is_stopped`. Queued requests are answered
    // at once, not after cleanup.
    shared.stopped.store(true, Ordering::Release);
    drop(queue);
    stop(shared);
}

fn set_busy(shared: &Shared, since: Option<Instant>) {
    *shared.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = since;
}

/// Marks the worker stopped and locks and drops the signer: whatever
/// happened, nothing is left unlocked behind.
fn stop(shared: &Shared) {
    shared.stopped.store(true, Ordering::Release);
    let taken = shared
        .signer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(mut signer) = taken {
        let _ = catch_unwind(AssertUnwindSafe(|| signer.lock()));
        let _ = catch_unwind(AssertUnwindSafe(move || drop(signer)));
    }
}

/// One signature, then a lock if asked (locking whatever the outcome).
fn sign(signer: &mut dyn Signer, tbs: &[u8], then_lock: bool) -> Result<Vec<u8>, BackendError> {
    let signature = signer.sign(tbs);
    if then_lock {
        signer.lock();
    }
    signature
}

fn panicked(name: &str) -> BackendError {
    BackendError::Failed(format!(
        "the backend of key {name} panicked; the key is locked and must be opened again"
    ))
}

fn run(signer: &mut dyn Signer, job: Job, shared: &Shared) -> Result<(), Panicked> {
    match job {
        Job::Unlock {
            secret,
            spend_last_attempt,
            reply,
        } => answer(
            reply,
            guarded(|| signer.unlock(&secret, spend_last_attempt)),
            shared,
        ),
        Job::Lock { reply } => {
            let outcome = guarded(|| signer.lock());
            let _ = reply.send(());
            outcome
        }
        Job::IsUnlocked { reply } => {
            let outcome = guarded(|| signer.is_unlocked());
            let _ = reply.send(*outcome.as_ref().unwrap_or(&false));
            outcome.map(drop)
        }
        Job::Sign {
            tbs,
            then_lock,
            reply,
        } => answer(reply, guarded(|| sign(signer, &tbs, then_lock)), shared),
    }
}

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| Panicked)
}

fn answer<T>(
    reply: Reply<T>,
    outcome: Result<Result<T, BackendError>, Panicked>,
    shared: &Shared,
) -> Result<(), Panicked> {
    match outcome {
        Ok(result) => {
            let _ = reply.send(result);
            Ok(())
        }
        Err(Panicked) => {
            // Stopped before the caller hears of it.
            shared.stopped.store(true, Ordering::Release);
            let _ = reply.send(Err(panicked(&shared.name)));
            Err(Panicked)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_protocol::Algorithm;
    use secrecy::ExposeSecret;
    use std::time::Duration;

    const PIN: &str = "123456";

    /// A signer with a PIN and hooks to observe the worker.
    struct TestSigner {
        key: ed25519_dalek::SigningKey,
        public: PublicKey,
        unlocked: bool,
        panic_on_sign: bool,
        in_place: bool,
        locked_and_dropped: Arc<AtomicBool>,
    }

    impl TestSigner {
        fn new(panic_on_sign: bool) -> (Self, Arc<AtomicBool>) {
            let key = ed25519_dalek::SigningKey::from_bytes(&[11; 32]);
            let public = PublicKey::ed25519(key.verifying_key().as_bytes()).unwrap();
            let flag = Arc::new(AtomicBool::new(false));
            let signer = TestSigner {
                key,
                public,
                unlocked: false,
                panic_on_sign,
                in_place: false,
                locked_and_dropped: Arc::clone(&flag),
            };
            (signer, flag)
        }
    }

    impl Signer for TestSigner {
        fn public_key(&self) -> &PublicKey {
            &self.public
        }
        fn unlock(&mut self, secret: &SecretString, _: bool) -> Result<(), BackendError> {
            if secret.expose_secret() != PIN {
                return Err(BackendError::WrongSecret {
                    retries_left: Some(2),
                });
            }
            self.unlocked = true;
            Ok(())
        }
        fn lock(&mut self) {
            self.unlocked = false;
        }
        fn is_unlocked(&self) -> bool {
            self.unlocked
        }
        fn signs_in_place(&self) -> bool {
            self.in_place
        }
        fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
            assert!(!self.panic_on_sign, "simulated backend bug");
            if !self.unlocked {
                return Err(BackendError::Locked);
            }
            Ok(ed25519_dalek::Signer::sign(&self.key, tbs).to_vec())
        }
    }

    impl Drop for TestSigner {
        fn drop(&mut self) {
            if !self.unlocked {
                self.locked_and_dropped.store(true, Ordering::SeqCst);
            }
        }
    }

    fn pin() -> SecretString {
        SecretString::from(PIN.to_owned())
    }

    /// Fails the test instead of hanging it.
    async fn soon<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("the worker answered in time")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_signatures_from_many_tasks_all_verify() {
        let passphrase = SecretString::from("correct horse battery staple".to_owned());
        let (signer, record) =
            crate::passphrase::create("ACME", "carol", &passphrase, None, 0).unwrap();
        let worker = Worker::spawn("carol".into(), Box::new(signer));
        assert_eq!(worker.public_key(), &record.public().unwrap());
        assert!(worker.is_unlocked().await);

        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let worker = worker.clone();
                tokio::spawn(async move {
                    let mut signed = Vec::new();
                    for i in 0..20 {
                        let msg = format!("task {t} message {i}").into_bytes();
                        let sig = worker.sign(msg.clone()).await.unwrap();
                        signed.push((msg, sig));
                    }
                    signed
                })
            })
            .collect();
        let mut count = 0;
        for task in tasks {
            for (msg, sig) in soon(task).await.unwrap() {
                worker
                    .public_key()
                    .verify(Algorithm::Ed25519, &msg, &sig)
                    .unwrap();
                count += 1;
            }
        }
        assert_eq!(count, 32 * 20);
    }

    #[tokio::test]
    async fn sign_then_lock_leaves_the_key_locked() {
        let (signer, _) = TestSigner::new(false);
        let worker = Worker::spawn("t".into(), Box::new(signer));
        soon(worker.unlock(pin(), false)).await.unwrap();
        assert!(worker.is_unlocked().await);

        let sig = soon(worker.sign_then_lock(b"once".to_vec())).await.unwrap();
        worker
            .public_key()
            .verify(Algorithm::Ed25519, b"once", &sig)
            .unwrap();
        assert!(!worker.is_unlocked().await);
        assert!(matches!(
            worker.sign(b"twice".to_vec()).await,
            Err(BackendError::Locked)
        ));
        assert!(matches!(
            worker.sign_then_lock(b"twice".to_vec()).await,
            Err(BackendError::Locked)
        ));
        assert!(!worker.is_unlocked().await);
    }

    #[tokio::test]
    async fn wrong_pin_is_reported_with_retries_and_keeps_it_locked() {
        let (signer, _) = TestSigner::new(false);
        let worker = Worker::spawn("t".into(), Box::new(signer));
        let wrong = SecretString::from("000000".to_owned());
        assert!(matches!(
            worker.unlock(wrong, false).await,
            Err(BackendError::WrongSecret {
                retries_left: Some(2)
            })
        ));
        assert!(!worker.is_unlocked().await);
        worker.unlock(pin(), false).await.unwrap();
        worker.lock().await;
        assert!(!worker.is_unlocked().await);
    }

    #[tokio::test]
    async fn a_panicking_backend_answers_failed_and_never_hangs() {
        let (signer, dropped) = TestSigner::new(true);
        let worker = Worker::spawn("panicky".into(), Box::new(signer));
        soon(worker.unlock(pin(), false)).await.unwrap();
        let queued = worker.clone();
        let (first, second) =
            soon(async { tokio::join!(worker.sign(b"boom".to_vec()), queued.sign(b"x".to_vec())) })
                .await;
        assert!(matches!(first, Err(BackendError::Failed(_))));
        assert!(matches!(second, Err(BackendError::Failed(_))));

        assert!(matches!(
            soon(worker.unlock(pin(), false)).await,
            Err(BackendError::Failed(_))
        ));
        assert!(!soon(worker.is_unlocked()).await);
        soon(worker.lock()).await;
        assert!(worker.is_stopped());
        // Cleanup runs on the worker thread right after it stops.
        soon(wait_for(&dropped)).await;
    }

    #[tokio::test]
    async fn an_in_place_signer_signs_on_the_caller_and_still_stops_on_panic() {
        let (mut signer, _) = TestSigner::new(false);
        signer.in_place = true;
        let worker = Worker::spawn("fast".into(), Box::new(signer));
        soon(worker.unlock(pin(), false)).await.unwrap();
        let sig = soon(worker.sign(b"tbs".to_vec())).await.unwrap();
        worker
            .public_key()
            .verify(Algorithm::Ed25519, b"tbs", &sig)
            .unwrap();
        soon(worker.sign_then_lock(b"tbs".to_vec())).await.unwrap();
        assert!(!soon(worker.is_unlocked()).await, "sign_then_lock locked");

        let (mut signer, dropped) = TestSigner::new(true);
        signer.in_place = true;
        let worker = Worker::spawn("fast-panicky".into(), Box::new(signer));
        soon(worker.unlock(pin(), false)).await.unwrap();
        assert!(matches!(
            soon(worker.sign(b"boom".to_vec())).await,
            Err(BackendError::Failed(_))
        ));
        assert!(worker.is_stopped());
        // Signed in place (the usual case) it is dropped at once; if the
        // worker thread still held the signer from the unlock, the job went
        // to the thread, which drops it right after answering.
        soon(wait_for(&dropped)).await;
        assert!(matches!(
            soon(worker.sign(b"x".to_vec())).await,
            Err(BackendError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn dropping_every_handle_locks_and_drops_the_signer() {
        let (signer, dropped) = TestSigner::new(false);
        let worker = Worker::spawn("t".into(), Box::new(signer));
        worker.unlock(pin(), false).await.unwrap();
        let other = worker.clone();
        drop(worker);
        assert!(other.is_unlocked().await, "one handle keeps it alive");
        drop(other);
        soon(wait_for(&dropped)).await;
    }

    /// A token that hangs in every call until `release` is sent; counts
    /// the calls that reached it.
    struct HangingSigner {
        inner: TestSigner,
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl HangingSigner {
        fn hang(&self) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let (open, cv) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        }
    }

    impl Signer for HangingSigner {
        fn public_key(&self) -> &PublicKey {
            self.inner.public_key()
        }
        fn unlock(&mut self, secret: &SecretString, last: bool) -> Result<(), BackendError> {
            self.hang();
            self.inner.unlock(secret, last)
        }
        fn lock(&mut self) {
            self.inner.lock();
        }
        fn is_unlocked(&self) -> bool {
            self.inner.is_unlocked()
        }
        fn sign(&mut self, tbs: &[u8]) -> Result<Vec<u8>, BackendError> {
            self.hang();
            self.inner.sign(tbs)
        }
    }

    /// Until the worker's thread is out of the stuck job and has run what
    /// was queued behind it.
    async fn idle(worker: &Worker) {
        while worker.busy_for().is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (reply, answer) = oneshot::channel();
        worker.jobs.send(Job::IsUnlocked { reply }).unwrap();
        answer.await.unwrap();
    }

    #[tokio::test]
    async fn a_token_that_hangs_costs_its_callers_the_deadline_and_no_more() {
        let deadline = Duration::from_millis(300);
        let gate = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let signer = HangingSigner {
            inner: TestSigner::new(false).0,
            gate: Arc::clone(&gate),
            calls: Arc::clone(&calls),
        };
        let worker = Worker::spawn_with_deadline("stuck".into(), Box::new(signer), Some(deadline));
        soon(worker.unlock(pin(), false)).await.unwrap();
        let close = |open: bool| {
            *gate.0.lock().unwrap() = open;
            gate.1.notify_all();
        };

        close(false);
        let err = soon(worker.sign(b"one".to_vec())).await.unwrap_err();
        assert!(
            matches!(err, BackendError::NotAnswering { ref key, waited_secs: 1 } if key == "stuck"),
            "{err:?}"
        );
        assert!(err.to_string().contains("did not answer"), "{err}");
        // (The job started a moment after it was sent.)
        tokio::time::sleep(deadline / 4).await;
        // Stuck past the deadline: refused at once, never queued.
        for _ in 0..50 {
            let err = worker.sign(b"more".to_vec()).await.unwrap_err();
            assert!(matches!(err, BackendError::NotAnswering { .. }), "{err:?}");
        }
        let err = worker.unlock(pin(), false).await.unwrap_err();
        assert!(matches!(err, BackendError::NotAnswering { .. }), "{err:?}");
        // A lock does not wait past the deadline, and is queued.
        soon(worker.lock()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "unlock and the first sign");

        // The token answers again: the stuck signature's answer goes
        // nowhere, the queued lock runs, and the key works after an unlock.
        close(true);
        soon(idle(&worker)).await;
        assert!(!soon(worker.is_unlocked()).await);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "nothing else was queued");
        soon(worker.unlock(pin(), false)).await.unwrap();
        soon(worker.sign(b"two".to_vec())).await.unwrap();

        // An unlock given up on is undone when the token comes back.
        soon(worker.lock()).await;
        close(false);
        let err = soon(worker.unlock(pin(), false)).await.unwrap_err();
        assert!(matches!(err, BackendError::NotAnswering { .. }), "{err:?}");
        close(true);
        soon(idle(&worker)).await;
        assert!(
            !soon(worker.is_unlocked()).await,
            "the late unlock was undone"
        );
        assert!(!worker.is_stopped());
    }

    async fn wait_for(flag: &AtomicBool) {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
