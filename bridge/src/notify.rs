//! Desktop notifications of signatures (`notify = true` in `config.toml`;
//! off by default): each signature the daemon makes shows a notification,
//! so that a user notices a key used behind their back, as Secretive's
//! users do.
//!
//! One D-Bus method call per signature, `org.freedesktop.Notifications.Notify`
//! at `/org/freedesktop/Notifications` on the session bus
//! (`DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`), as the
//! [Desktop Notifications Specification] has it: app name `keybridge`,
//! no icon, no actions, normal urgency, the server's default timeout.
//!
//! It says what was signed and with what — the command kind, the key
//! (backend, label, kid prefix), the device or the size of the batch, the
//! agent and its account — and never a command's arguments, which may hold
//! secrets.
//!
//! A notification never delays or fails a signature: it is sent from a
//! task of its own, after the audit line is written, and given up after
//! [`DEADLINE`]. The connection is made at the first notification and kept;
//! a closed one is made again. Without a session bus (a server, a daemon
//! started outside a desktop session) a warning is logged once, and a new
//! connection is tried at most every [`RETRY`]; a failed call is logged as
//! a warning once, then at debug level.
//!
//! `zbus` rather than `notify-rust`: notify-rust is itself a wrapper over
//! zbus (with zbus's own runtime and more features by default), for one
//! method call with fixed arguments; zbus with only its `tokio` feature
//! runs on the daemon's runtime, with no thread or executor of its own, no
//! proxy or object-server code, and no C library (libdbus).
//!
//! [Desktop Notifications Specification]: https://specifications.freedesktop.org/notification-spec/latest/

use crate::audit::Entry;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use zbus::Connection;

/// Longest a notification may take (connecting included); then it is
/// given up.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// Without a session bus, how long before connecting is tried again.
pub const RETRY: Duration = Duration::from_secs(60);

/// Notifications on their way at once; more are dropped (a notification
/// server that does not answer must not pile up tasks).
const IN_FLIGHT: usize = 16;

/// The notifications' application name.
pub const APP_NAME: &str = "keybridge";

/// The notification server's bus name, which is also its interface.
const SERVER: &str = "org.freedesktop.Notifications";
/// Its object.
const PATH: &str = "/org/freedesktop/Notifications";

/// Longest name (label, agent, account, device) shown, in characters.
const MAX_SHOWN: usize = 64;

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// One line: `keybridge signed run-script`.
    pub summary: String,
    /// The key, the device or batch, the agent and account; one per line,
    /// with `&`, `<` and `>` escaped (servers may read the body as markup).
    pub body: String,
}

impl Notification {
    /// The notification of a signature, from its audit line and the
    /// signing key's label.
    pub fn of_signature(entry: &Entry, label: Option<&str>) -> Self {
        let kid = entry.kid.get(..16).unwrap_or(&entry.kid);
        let backend = entry.backend.as_deref().unwrap_or("unknown");
        let key = match label {
            Some(label) => format!("{backend} key \"{}\" ({kid})", shown(label)),
            None => format!("{backend} key {kid}"),
        };
        let target = match (&entry.audience, entry.batch_size) {
            (Some(device), _) => format!("for device {}", shown(device)),
            (None, Some(1)) => "for a batch of 1 device".to_owned(),
            (None, Some(n)) => format!("for a batch of {n} devices"),
            (None, None) => "for no device".to_owned(),
        };
        let mut lines = vec![
            format!("with the {key}"),
            target,
            format!(
                "agent {}, account {}",
                shown(&entry.agent),
                shown(&entry.account)
            ),
        ];
        if entry.fallback {
            lines.push(format!(
                "(fallback: {} earlier key(s) of the agent not there)",
                entry.skipped.len()
            ));
        }
        Notification {
            summary: format!("{APP_NAME} signed {}", shown(&entry.cmd)),
            body: escape_markup(&lines.join("\n")),
        }
    }
}

/// Tells the desktop about a signature (see the module docs): returns at
/// once; the notification goes out from a task of its own.
pub fn signed(entry: &Entry, label: Option<&str>) {
    notifier().send(Notification::of_signature(entry, label));
}

/// A name as shown: control characters (a newline would fake a line) as
/// spaces, at most [`MAX_SHOWN`] characters.
fn shown(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_SHOWN)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if name.chars().nth(MAX_SHOWN).is_some() {
        out.push('…');
    }
    out
}

/// `&`, `<`, `>` as entities: the body may be read as markup
/// (`body-markup`), and a name must not be taken for it.
fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The session bus, as far as the notifier knows it.
enum Bus {
    /// Not tried yet, or to be tried again.
    Untried,
    /// Connected.
    Connected(Connection),
    /// No session bus when last tried.
    Missing(Instant),
}

/// The daemon's one notifier: its connection, made lazily.
struct Notifier {
    bus: Mutex<Bus>,
    in_flight: Semaphore,
}

/// Whether "no session bus" was logged as a warning.
static WARNED_NO_BUS: AtomicBool = AtomicBool::new(false);
/// Whether a failed notification was logged as a warning.
static WARNED_FAILED: AtomicBool = AtomicBool::new(false);

fn notifier() -> &'static Notifier {
    static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
    NOTIFIER.get_or_init(|| Notifier {
        bus: Mutex::new(Bus::Untried),
        in_flight: Semaphore::new(IN_FLIGHT),
    })
}

/// Logs `message` (with `error`) as a warning the first time `flag` is
/// raised, at debug level after that.
fn warn_once(flag: &AtomicBool, message: &str, error: &dyn std::fmt::Display) {
    if flag.swap(true, Ordering::Relaxed) {
        tracing::debug!(%error, "{message}");
    } else {
        tracing::warn!(%error, "{message} (logged once)");
    }
}

impl Notifier {
    /// Sends `n` from a task of its own, within [`DEADLINE`].
    fn send(&'static self, n: Notification) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no async runtime: no desktop notification");
            return;
        };
        let Ok(permit) = self.in_flight.try_acquire() else {
            tracing::debug!("too many desktop notifications on their way: one dropped");
            return;
        };
        runtime.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(DEADLINE, self.deliver(&n)).await {
                Ok(Ok(true)) => tracing::debug!(summary = %n.summary, "desktop notification sent"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn_once(&WARNED_FAILED, "desktop notification failed", &e),
                Err(_) => {
                    warn_once(
                        &WARNED_FAILED,
                        "desktop notification failed",
                        &format_args!("no answer within {DEADLINE:?}"),
                    );
                    // A bus that does not answer: connect afresh next time.
                    if let Ok(mut bus) = self.bus.try_lock()
                        && matches!(*bus, Bus::Connected(_))
                    {
                        *bus = Bus::Untried;
                    }
                }
            }
        });
    }

    /// Sends `n`; false when there is no session bus.
    async fn deliver(&self, n: &Notification) -> zbus::Result<bool> {
        let Some(conn) = self.connection().await else {
            return Ok(false);
        };
        let hints = HashMap::from([("urgency", zbus::Variant::U8(1))]);
        conn.call_method(
            Some(SERVER),
            PATH,
            Some(SERVER),
            "Notify",
            &(
                APP_NAME,
                0u32, // replaces_id: a new notification
                "",   // app_icon
                n.summary.as_str(),
                n.body.as_str(),
                Vec::<&str>::new(), // actions
                hints,
                -1i32, // expire_timeout: the server's default
            ),
        )
        .await?;
        Ok(true)
    }

    /// The connection to the session bus: the one made before, or a new
    /// one; `None` when there is no session bus (tried again after
    /// [`RETRY`]).
    async fn connection(&self) -> Option<Connection> {
        let mut bus = self.bus.lock().await;
        match &*bus {
            Bus::Connected(conn) if !conn.is_closed() => return Some(conn.clone()),
            Bus::Missing(since) if since.elapsed() < RETRY => return None,
            _ => {}
        }
        match zbus::connection::Builder::session()
            .method_timeout(DEADLINE)
            .build()
            .await
        {
            Ok(conn) => {
                tracing::debug!("connected to the session bus for desktop notifications");
                *bus = Bus::Connected(conn.clone());
                Some(conn)
            }
            Err(e) => {
                warn_once(
                    &WARNED_NO_BUS,
                    "no session bus, so no desktop notifications (notify = true in config.toml)",
                    &e,
                );
                *bus = Bus::Missing(Instant::now());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: 1_800_000_000,
            kid: "3f2a9c01d4e5b6a7c8d9e0f1a2b3c4d5".into(),
            account: "acme".into(),
            agent: "alice".into(),
            cmd: "run-script".into(),
            audience: Some("dev-1".into()),
            batch_size: None,
            batch_root: None,
            cti: Some("00".repeat(16)),
            backend: Some("passphrase".into()),
            fallback: false,
            skipped: vec![],
        }
    }

    #[test]
    fn a_signature_names_the_command_the_key_the_device_and_the_agent() {
        let n = Notification::of_signature(&entry(), Some("alice-pass"));
        assert_eq!(n.summary, "keybridge signed run-script");
        assert_eq!(
            n.body,
            "with the passphrase key \"alice-pass\" (3f2a9c01d4e5b6a7)\n\
             for device dev-1\n\
             agent alice, account acme"
        );
    }

    #[test]
    fn a_batch_names_its_size_and_a_fallback_says_so() {
        let mut e = entry();
        e.audience = None;
        e.batch_size = Some(3);
        e.fallback = true;
        e.skipped = vec!["aa".into()];
        let n = Notification::of_signature(&e, None);
        assert!(
            n.body.contains("passphrase key 3f2a9c01d4e5b6a7\n"),
            "{n:?}"
        );
        assert!(n.body.contains("for a batch of 3 devices"), "{n:?}");
        assert!(n.body.contains("fallback: 1 earlier key"), "{n:?}");
    }

    #[test]
    fn names_cannot_fake_lines_or_markup_and_are_bounded() {
        let mut e = entry();
        e.audience = Some("<b>dev</b>&".into());
        e.agent = format!("eve\nkeybridge signed nothing{}", "x".repeat(200));
        let n = Notification::of_signature(&e, Some("a\u{1b}[31m"));
        assert!(n.body.contains("&lt;b&gt;dev&lt;/b&gt;&amp;"), "{n:?}");
        assert!(n.body.contains("\"a [31m\""), "{n:?}");
        assert_eq!(n.body.lines().count(), 3, "{n:?}");
        assert!(n.body.contains("eve keybridge signed nothing"), "{n:?}");
        assert!(n.body.contains('…') && n.body.len() < 300, "{n:?}");
    }
}
