//! `keybridge status` and `keybridge audit`.

use super::{Ctx, date, key_line, short};
use crate::audit;
use crate::wire::Status;

pub(super) async fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let status = ctx.client().status().await?;
    ctx.print(&status, |s: &Status| {
        let mut out = format!(
            "daemon {} (pid {}) on {}, since {}\n",
            s.version,
            s.pid,
            s.socket,
            date(s.started)
        );
        for k in &s.keys {
            out.push_str(&key_line(k));
            out.push('\n');
        }
        // Keys made before the policy raised its floor: they sign, but
        // should be replaced.
        for k in &s.keys {
            if let Some(why) = k.kdf.as_ref().and_then(|d| d.below_policy.as_ref()) {
                out.push_str(&format!(
                    "WARNING: key {}: {}\n",
                    k.label.as_deref().unwrap_or_else(|| short(&k.kid, 16)),
                    super::keys::below_policy_text(why)
                ));
            }
        }
        out.trim_end().to_owned()
    });
    Ok(())
}

/// Reads the audit log directly (the daemon appends; reading needs no
/// daemon).
pub(super) fn audit(ctx: &Ctx) -> anyhow::Result<()> {
    let path = ctx.paths.audit_log();
    let (entries, bad) = audit::read(&path)?;
    if bad > 0 {
        eprintln!(
            "keybridge: {bad} unreadable line(s) in {} skipped",
            path.display()
        );
    }
    ctx.print(&entries, |entries| {
        entries
            .iter()
            .map(|e| {
                let target = match (&e.audience, e.batch_size) {
                    (Some(a), _) => a.clone(),
                    (None, Some(n)) => format!("batch of {n}"),
                    _ => "-".into(),
                };
                let how = match (&e.backend, e.fallback) {
                    (Some(b), true) => format!("  ({b} key, fallback)"),
                    (Some(b), false) => format!("  ({b} key)"),
                    (None, _) => String::new(),
                };
                format!(
                    "{}  {}  {}/{}  {:<18} {}{how}",
                    date(e.time),
                    short(&e.kid, 16),
                    e.account,
                    e.agent,
                    e.cmd,
                    target
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
