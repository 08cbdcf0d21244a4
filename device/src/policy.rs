//! Hardware-gated trust: per command kind, a device accepts a command only
//! from a key whose residency evidence verifies against roots the device
//! holds, and, with `touch`, whose attested touch policy is `always` or
//! `cached`.
//!
//! Two files per account, both JSON, written atomically like every state
//! file:
//!
//! - `policy.json`, the rules (`keybridge-device policy set/unset`):
//!   `{"version": 1, "rules": {CMD: {"require": ["hardware"] or
//!   ["hardware", "touch"], "roots": ROOTS_ID}}, "roots": {ROOTS_ID: [HEX DER
//!   CERTIFICATE…]}}`. The roots are copied in at `policy set`: the policy
//!   does not depend on any file outside the state folder. A roots set's id
//!   is the SHA-256 of its sorted, length-prefixed certificates, so the same
//!   roots given for two commands are kept once.
//! - `hardware.json`, what the device knows of each *active* key that
//!   carries residency evidence (`{"version": 1, "len", "head", "keys":
//!   {KID: {"agent", "kind", "chain": [HEX…], "verdicts": {ROOTS_ID:
//!   VERDICT}}}}`): the evidence, copied from the key's request in its
//!   `add` event when the log is taken, and its verdict against each roots
//!   set of the policy, computed when the log or the policy changes (`trust
//!   init/update`, `policy set`). `verify` reads verdicts, never the log:
//!   its cost does not grow with the log. A verdict that is missing (an
//!   interrupted `policy set`) is computed on the spot, from the same
//!   evidence and roots.
//!
//! The evidence check is [`keybridge_evidence`]'s (pure Rust):
//!
//! - YubiKey PIV attestations (`yubikey-piv-attestation`): the f9
//!   certificate must chain to the roots (Yubico's PIV roots);
//! - TPM2_Certify statements (`tpm2-certify`): the statement must verify
//!   and the TPM's attestation key (AK) must have a certificate of its own
//!   that chains to the roots (an IAK certificate from the TPM's or the
//!   computer's maker, or an AK certificate from the organization's CA). An
//!   EK certificate alone is refused: it names a genuine TPM, but it is
//!   public and does not bind the AK to that TPM, so a statement made by a
//!   software key that claims a TPM key's attributes would carry one just
//!   as well. A TPM has no touch: a rule that requires touch refuses TPM
//!   keys ([`PolicyRefusal::NoTouch`]).
//!
//! Any other kind is refused with a reason of its own
//! ([`PolicyRefusal::Uncheckable`]).

use crate::exit_code::PolicyRefusal;
use keybridge_evidence::x509::{MAX_CERTIFICATE_LEN, MAX_ROOTS, Parsed, Roots};
use keybridge_evidence::{TPM2_CERTIFY, YUBIKEY_PIV_ATTESTATION, tpm, yubikey};
use keybridge_protocol::key::{hex, unhex};
use keybridge_protocol::log::Event;
use keybridge_protocol::{KeyRequest, Kid, Op, PublicKey, Trust};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// Largest `policy.json` read (64 rules; roots are a few KiB each).
pub const MAX_POLICY_LEN: usize = 4 * 1024 * 1024;
/// Largest `hardware.json` read (a few KiB per active hardware key).
pub const MAX_HARDWARE_LEN: usize = 16 * 1024 * 1024;
/// Largest roots file read by `policy set --roots`.
pub const MAX_ROOTS_FILE_LEN: usize = 1024 * 1024;
/// The most command kinds with a rule.
pub const MAX_RULES: usize = 64;
const VERSION: u32 = 1;

/// What a rule requires besides the command's ordinary checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    /// A key whose evidence verifies against the rule's roots.
    Hardware,
    /// That, and an attested touch policy of `always` or `cached`.
    Touch,
}

impl Requirement {
    /// As `--require` and `policy.json` name it.
    pub fn name(self) -> &'static str {
        match self {
            Requirement::Hardware => "hardware",
            Requirement::Touch => "touch",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hardware" => Some(Requirement::Hardware),
            "touch" => Some(Requirement::Touch),
            _ => None,
        }
    }
}

/// One command kind's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The attested touch policy must be `always` or `cached`.
    pub touch: bool,
    /// The id of the roots set the evidence must chain to.
    pub roots: String,
}

impl Rule {
    /// What the rule requires, by name: `hardware`, then `touch` if set.
    pub fn requirements(&self) -> Vec<Requirement> {
        let mut r = vec![Requirement::Hardware];
        if self.touch {
            r.push(Requirement::Touch);
        }
        r
    }
}

/// An account's hardware policy: rules by command kind, and the roots
/// sets they name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Rules by command kind (`run-script`, `x-…`).
    pub rules: BTreeMap<String, Rule>,
    /// Roots sets by id: DER certificates.
    pub roots: BTreeMap<String, Vec<Vec<u8>>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    rules: BTreeMap<String, RuleFile>,
    roots: BTreeMap<String, Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    require: Vec<String>,
    roots: String,
}

/// Refuses a command kind that cannot be one: 1 to 64 characters of
/// `A-Z a-z 0-9 . _ -`.
pub fn check_command_name(cmd: &str) -> Result<(), String> {
    if (1..=64).contains(&cmd.len())
        && cmd
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "--command {cmd:?} is not a command kind (1 to 64 letters, digits, '.', '_', '-', e.g. run-script)"
        ))
    }
}

/// The id of a roots set: SHA-256 over its certificates, sorted and
/// deduplicated, each prefixed with its length.
pub fn roots_id(certs: &[Vec<u8>]) -> String {
    let mut sorted: Vec<&Vec<u8>> = certs.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut h = Sha256::new();
    h.update(b"keybridge-device/roots/v1\0");
    for c in sorted {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c);
    }
    hex(&h.finalize())
}

/// The certificates of roots files (PEM), checked: each a well-formed
/// certificate, at most [`MAX_ROOTS`] in all, at least one of them a root
/// (self-signed). Sorted and deduplicated.
pub fn roots_from_pem(files: &[(String, String)]) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = Vec::new();
    for (name, text) in files {
        let found = keybridge_evidence::x509::certificates_from_pem(text)
            .map_err(|e| format!("{name}: {e}"))?;
        if found.is_empty() {
            return Err(format!(
                "{name}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
            ));
        }
        for (i, der) in found.iter().enumerate() {
            Parsed::new(der, &format!("certificate {} of {name}", i + 1))
                .map_err(|e| e.to_string())?;
        }
        certs.extend(found);
    }
    certs.sort();
    certs.dedup();
    Roots::new(&certs).map_err(|e| e.to_string())?;
    Ok(certs)
}

/// Subject and SHA-256 fingerprint of each certificate, for people.
pub fn describe_roots(certs: &[Vec<u8>]) -> Vec<(String, String)> {
    certs
        .iter()
        .map(|der| {
            let subject = Parsed::new(der, "a root")
                .map(|p| p.subject_name())
                .unwrap_or_else(|e| format!("(unreadable: {e})"));
            (subject, hex(&Sha256::digest(der)))
        })
        .collect()
}

impl Policy {
    /// `policy.json`'s bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let file = PolicyFile {
            version: VERSION,
            rules: self
                .rules
                .iter()
                .map(|(cmd, r)| {
                    let rule = RuleFile {
                        require: r
                            .requirements()
                            .iter()
                            .map(|q| q.name().to_owned())
                            .collect(),
                        roots: r.roots.clone(),
                    };
                    (cmd.clone(), rule)
                })
                .collect(),
            roots: self
                .roots
                .iter()
                .map(|(id, certs)| (id.clone(), certs.iter().map(|c| hex(c)).collect()))
                .collect(),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("JSON");
        out.push(b'\n');
        out
    }

    /// Reads `policy.json`, checking everything it says: known
    /// requirements, roots sets that exist and hash to their ids,
    /// certificates within limits. A damaged file is an error, never a
    /// weaker policy.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let file: PolicyFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.version != VERSION {
            return Err(format!("unknown version {}", file.version));
        }
        if file.rules.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let mut roots = BTreeMap::new();
        for (id, certs) in file.roots {
            if certs.is_empty() || certs.len() > MAX_ROOTS {
                return Err(format!("roots set {id}: 1 to {MAX_ROOTS} certificates"));
            }
            let certs = certs
                .iter()
                .map(|c| {
                    unhex(c)
                        .filter(|d| !d.is_empty() && d.len() <= MAX_CERTIFICATE_LEN)
                        .ok_or_else(|| format!("roots set {id}: a certificate is not hex DER"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if roots_id(&certs) != id {
                return Err(format!(
                    "roots set {id}: its certificates do not hash to its id"
                ));
            }
            roots.insert(id, certs);
        }
        let mut rules = BTreeMap::new();
        for (cmd, r) in file.rules {
            check_command_name(&cmd)?;
            let required = r
                .require
                .iter()
                .map(|q| Requirement::parse(q).ok_or_else(|| format!("{cmd}: requirement {q:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            if !required.contains(&Requirement::Hardware) {
                return Err(format!("{cmd}: a rule requires hardware"));
            }
            if !roots.contains_key(&r.roots) {
                return Err(format!("{cmd}: roots set {} is missing", r.roots));
            }
            rules.insert(
                cmd,
                Rule {
                    touch: required.contains(&Requirement::Touch),
                    roots: r.roots,
                },
            );
        }
        if roots
            .keys()
            .any(|id| !rules.values().any(|r| &r.roots == id))
        {
            return Err("a roots set no rule uses".into());
        }
        Ok(Policy { rules, roots })
    }

    /// Sets `cmd`'s rule; `roots` (checked certificates) replace its roots
    /// set, or, when `None`, it keeps the one it has. Roots sets no rule
    /// names any more are dropped.
    pub fn set(
        &mut self,
        cmd: &str,
        touch: bool,
        roots: Option<Vec<Vec<u8>>>,
    ) -> Result<(), String> {
        let id = match roots {
            Some(certs) => {
                let id = roots_id(&certs);
                self.roots.insert(id.clone(), certs);
                id
            }
            None => match self.rules.get(cmd) {
                Some(r) => r.roots.clone(),
                None => {
                    return Err(format!(
                        "{cmd} has no rule yet: give the roots its keys' evidence must chain to, --roots FILE (PEM, e.g. Yubico's PIV roots)"
                    ));
                }
            },
        };
        if !self.rules.contains_key(cmd) && self.rules.len() >= MAX_RULES {
            return Err(format!("at most {MAX_RULES} command kinds have a rule"));
        }
        self.rules.insert(cmd.to_owned(), Rule { touch, roots: id });
        self.drop_unused_roots();
        Ok(())
    }

    /// Removes `cmd`'s rule; whether it had one.
    pub fn unset(&mut self, cmd: &str) -> bool {
        let had = self.rules.remove(cmd).is_some();
        self.drop_unused_roots();
        had
    }

    fn drop_unused_roots(&mut self) {
        let used: Vec<String> = self.rules.values().map(|r| r.roots.clone()).collect();
        self.roots.retain(|id, _| used.contains(id));
    }
}

/// What verified evidence says: of a YubiKey's card and slot, or of a
/// TPM's attestation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attested {
    /// The card's serial number.
    pub serial: Option<u32>,
    /// Firmware, `5.4.3`.
    pub firmware: Option<String>,
    /// The slot's PIN policy.
    pub pin_policy: Option<String>,
    /// The slot's touch policy: `never`, `always`, `cached`.
    pub touch_policy: Option<String>,
    /// The card's form factor.
    pub form_factor: Option<String>,
    /// The root the chain ends at.
    pub root: String,
    /// For a TPM key: its AK and the AK's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmAttested>,
}

/// What a verified TPM2_Certify statement says, with its AK certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmAttested {
    /// The AK's name (hex): the same for every key of one TPM.
    pub ak_name: String,
    /// The AK certificate's subject.
    pub ak_certificate: String,
    /// The certified key's attributes (`fixedTPM`, …).
    pub key_attributes: Vec<String>,
}

/// A key's evidence judged against one roots set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Verdict {
    /// It verifies: what it attests.
    Verified(Attested),
    /// It does not: why.
    Refused(String),
}

/// An active key's residency evidence and its verdicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// Whose key it is.
    pub agent: String,
    /// The evidence kind, as the key's request names it.
    pub kind: String,
    /// The evidence (DER certificates or statements, leaf first), hex.
    pub chain: Vec<String>,
    /// Verdicts by roots set id (only for kinds this device checks).
    pub verdicts: BTreeMap<String, Verdict>,
}

/// `hardware.json`: the evidence of every active key that has some, for
/// the trust state of length `len` and head `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    version: u32,
    /// Events in the log this was made for.
    pub len: u64,
    /// Its head, hex.
    pub head: String,
    /// By kid, hex.
    pub keys: BTreeMap<String, Facts>,
}

impl Hardware {
    /// `hardware.json`'s bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("JSON");
        out.push(b'\n');
        out
    }

    /// Reads `hardware.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let h: Hardware = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if h.version != VERSION {
            return Err(format!("unknown version {}", h.version));
        }
        Ok(h)
    }

    /// Whether this was made for `trust`.
    pub fn is_for(&self, trust: &Trust) -> bool {
        self.len == trust.len() && self.head == hex(&trust.head())
    }

    /// The facts of `kid`, if it carries evidence.
    pub fn facts(&self, kid: &Kid) -> Option<&Facts> {
        self.keys.get(&kid.to_hex())
    }

    /// The evidence of `trust`'s active keys: kept from `old` for the keys
    /// it knows, read from `requests` (the request bytes of `add` events,
    /// by the kid they add) for the others, each judged against every
    /// roots set of `policy`.
    pub fn build(
        trust: &Trust,
        old: Option<&Hardware>,
        requests: &BTreeMap<Kid, Vec<u8>>,
        policy: &Policy,
    ) -> Hardware {
        let mut keys = BTreeMap::new();
        for active in trust.active_keys() {
            let kid = active.key.kid();
            let facts = match old.and_then(|o| o.facts(&kid)) {
                Some(f) => Some(f.clone()),
                None => requests
                    .get(&kid)
                    .and_then(|req| KeyRequest::parse(req).ok())
                    .and_then(|req| req.evidence)
                    .map(|e| Facts {
                        agent: active.agent.clone(),
                        kind: e.kind,
                        chain: e.chain.iter().map(|c| hex(c)).collect(),
                        verdicts: BTreeMap::new(),
                    }),
            };
            if let Some(mut facts) = facts {
                facts.judge_all(&active.key, policy);
                keys.insert(kid.to_hex(), facts);
            }
        }
        Hardware {
            version: VERSION,
            len: trust.len(),
            head: hex(&trust.head()),
            keys,
        }
    }

    /// Judges every key again against `policy`'s roots sets (after
    /// `policy set`): verdicts for sets it no longer names are dropped.
    pub fn rejudge(&mut self, view: &Trust, policy: &Policy) {
        for active in view.active_keys() {
            if let Some(facts) = self.keys.get_mut(&active.key.kid().to_hex()) {
                facts.judge_all(&active.key, policy);
            }
        }
    }
}

/// The request bytes of every `add` among `events` (signed directly or
/// proposed), and of the adds `before` holds as pending proposals, by the
/// kid they add: where a key that becomes active in `events` got its
/// evidence.
pub fn requests_of(events: &[Event], before: Option<&Trust>) -> BTreeMap<Kid, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut take = |op: &Op| {
        if let Op::Add { key, req, .. } = op {
            out.insert(key.kid(), req.clone());
        }
    };
    if let Some(t) = before {
        for p in t.pending().values() {
            take(&p.change);
        }
    }
    for e in events {
        match &e.op {
            Op::Propose { change } => take(change.as_ref()),
            op => take(op),
        }
    }
    out
}

impl Facts {
    fn chain_der(&self) -> Option<Vec<Vec<u8>>> {
        self.chain.iter().map(|c| unhex(c)).collect()
    }

    /// Verdicts against every roots set of `policy`, computing the missing
    /// ones and dropping the others. Only kinds this device checks get
    /// verdicts.
    fn judge_all(&mut self, key: &PublicKey, policy: &Policy) {
        self.verdicts.retain(|id, _| policy.roots.contains_key(id));
        if !checkable(&self.kind) {
            self.verdicts.clear();
            return;
        }
        for (id, roots) in &policy.roots {
            if !self.verdicts.contains_key(id) {
                let v = self.judge(key, roots);
                self.verdicts.insert(id.clone(), v);
            }
        }
    }

    /// This evidence against `roots`, for `key` (a kind [`checkable`]).
    fn judge(&self, key: &PublicKey, roots: &[Vec<u8>]) -> Verdict {
        let Some(chain) = self.chain_der() else {
            return Verdict::Refused("the stored evidence is not hex".into());
        };
        if self.kind == TPM2_CERTIFY {
            return match tpm::verify(&chain, roots, key) {
                Ok(r) => match r.ak_certificate {
                    Some(ak) if r.ak_certified => Verdict::Verified(Attested {
                        serial: None,
                        firmware: Some(r.firmware),
                        pin_policy: None,
                        touch_policy: None,
                        form_factor: None,
                        root: ak.root,
                        tpm: Some(TpmAttested {
                            ak_name: r.ak_name,
                            ak_certificate: ak.subject,
                            key_attributes: r.key_attributes,
                        }),
                    }),
                    _ => Verdict::Refused(
                        format!(
                            "the TPM's attestation key (AK {}) has no certificate from these roots; {}",
                            r.ak_name,
                            if r.ek_certificate.is_some() {
                                "its EK certificate chains to them, but an EK certificate is public and does not bind the AK to that TPM: a software key could make the same statement"
                            } else {
                                "nothing binds the AK to a genuine TPM"
                            }
                        ) + " — have the AK certified (an IAK certificate, or an AK certificate from your CA) and request the key again with `keybridge keys request --ak-cert FILE`",
                    ),
                },
                Err(e) => Verdict::Refused(e.to_string()),
            };
        }
        match yubikey::verify(&chain, roots, key) {
            Ok(r) => Verdict::Verified(Attested {
                serial: r.serial,
                firmware: r.firmware,
                pin_policy: r.pin_policy,
                touch_policy: r.touch_policy,
                form_factor: r.form_factor.map(|f| f.name),
                root: r.root,
                tpm: None,
            }),
            Err(e) => Verdict::Refused(e.to_string()),
        }
    }
}

/// Whether this device checks evidence of `kind`.
fn checkable(kind: &str) -> bool {
    kind == YUBIKEY_PIV_ATTESTATION || kind == TPM2_CERTIFY
}

/// A command refused by a rule: which refusal, and why in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Which refusal (its exit code).
    pub kind: PolicyRefusal,
    /// The message.
    pub message: String,
}

/// Checks `rule` (the rule of command kind `cmd`) for a command signed by
/// the active key `key` of `agent`, whose evidence is `facts`, against the
/// rule's `roots`. What the evidence attests when it passes.
pub fn check(
    cmd: &str,
    rule: &Rule,
    roots: &[Vec<u8>],
    key: &PublicKey,
    agent: &str,
    facts: Option<&Facts>,
) -> Result<Attested, Refused> {
    let who = format!("key {} (agent {agent:?})", key.kid());
    let refuse = |kind, message| Err(Refused { kind, message });
    let Some(facts) = facts else {
        return refuse(
            PolicyRefusal::NoEvidence,
            format!(
                "hardware key required: this device's policy requires a hardware key for {cmd}, and {who} carries no residency evidence (a passphrase key, or a key added without its attestation)"
            ),
        );
    };
    if !checkable(&facts.kind) {
        return refuse(
            PolicyRefusal::Uncheckable,
            format!(
                "{cmd} requires a hardware key whose evidence this device checks: {who}: this device cannot check {:?} evidence",
                facts.kind
            ),
        );
    }
    let verdict = match facts.verdicts.get(&rule.roots) {
        Some(v) => v.clone(),
        // Not judged yet (an interrupted `policy set`): the same check now.
        None => facts.judge(key, roots),
    };
    let attested = match verdict {
        Verdict::Verified(a) => a,
        Verdict::Refused(why) => {
            return refuse(
                PolicyRefusal::EvidenceInvalid,
                format!(
                    "{cmd} requires a hardware key: {who}'s {} evidence does not verify against this device's roots: {why}",
                    facts.kind
                ),
            );
        }
    };
    if rule.touch && attested.tpm.is_some() {
        return refuse(
            PolicyRefusal::NoTouch,
            format!(
                "touch policy required: this device's policy requires touch for {cmd}, and {who} is a TPM key: a TPM has no touch (a YubiKey slot with touch policy always or cached is required)"
            ),
        );
    }
    if rule.touch && !matches!(attested.touch_policy.as_deref(), Some("always" | "cached")) {
        return refuse(
            PolicyRefusal::NoTouch,
            format!(
                "touch policy required: this device's policy requires touch for {cmd}, and {who} is on YubiKey {} whose slot's attested touch policy is {} (always or cached is required)",
                attested
                    .serial
                    .map_or_else(|| "(serial not stated)".into(), |s| s.to_string()),
                attested.touch_policy.as_deref().unwrap_or("not stated"),
            ),
        );
    }
    Ok(attested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_ids_ignore_order_and_duplicates() {
        let (a, b) = (vec![1u8, 2], vec![3u8]);
        assert_eq!(
            roots_id(&[a.clone(), b.clone()]),
            roots_id(&[b.clone(), a.clone(), b.clone()])
        );
        assert_ne!(roots_id(std::slice::from_ref(&a)), roots_id(&[a, b]));
    }

    #[test]
    fn a_damaged_policy_is_an_error_never_a_weaker_policy() {
        let mut p = Policy::default();
        let id = roots_id(&[vec![0x30, 0x00]]);
        p.roots.insert(id.clone(), vec![vec![0x30, 0x00]]);
        p.rules.insert(
            "run-script".into(),
            Rule {
                touch: true,
                roots: id.clone(),
            },
        );
        let json = String::from_utf8(p.to_json()).unwrap();
        assert_eq!(Policy::from_json(json.as_bytes()).unwrap(), p);
        for (from, to) in [
            ("\"touch\"", "\"tuoch\""),
            ("\"hardware\"", "\"software\""),
            (&id[..8], "00000000"),
            ("3000", "3001"),
            ("\"version\": 1", "\"version\": 2"),
            ("\"rules\"", "\"rulez\""),
        ] {
            let bad = json.replacen(from, to, 1);
            assert_ne!(bad, json, "{from}");
            assert!(Policy::from_json(bad.as_bytes()).is_err(), "{from} → {to}");
        }
    }
}
