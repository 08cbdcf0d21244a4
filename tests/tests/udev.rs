//! The udev rules in `udev/`: the security-key rules (`TAG+="uaccess"` for
//! YubiKeys and the other PIV/FIDO keys) and the TPM rules (the tpm-udev
//! convention).
//!
//! 1. Every `udev/*.rules` file goes through a parser of the udev rules
//!    grammar (udev(7); systemd's src/udev/udev-rules.c for what the page
//!    leaves out), strict where udev only warns and rewrites; the parser is
//!    shown to refuse bad rules and to accept systemd's own rules files.
//! 2. A small evaluator runs the parsed rules on modelled devices: every
//!    listed key gets `uaccess` on its hidraw and its USB device node, other
//!    devices and remove events get nothing, the TPM nodes get tss/0660
//!    exactly as Debian's tpm-udev gives them.
//! 3. `udevadm verify` checks the files where the installed udev has that
//!    verb (systemd ≥ 254; Debian 12 has 252).
//! 4. `udevadm test` runs the real udev rule engine on synthetic devices: a
//!    fake sysfs tree, a private /dev and /run, in a mount namespace of the
//!    test's own, so nothing on the machine is touched and no hardware is
//!    needed.

use keybridge_tests::in_ci;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

mod grammar {
    //! The udev rules grammar: logical lines (comments, backslash
    //! continuations), comma-separated `KEY[{attr}] OP "value"` pairs, the
    //! known keys and the operators each takes.

    /// An operator.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Op {
        /// `==`
        Match,
        /// `!=`
        NoMatch,
        /// `=`
        Assign,
        /// `+=`
        Add,
        /// `-=`
        Remove,
        /// `:=`
        AssignFinal,
    }

    impl Op {
        /// Longest first, so that `==` is not read as `=`.
        const ALL: [(&'static str, Op); 6] = [
            ("==", Op::Match),
            ("!=", Op::NoMatch),
            ("+=", Op::Add),
            ("-=", Op::Remove),
            (":=", Op::AssignFinal),
            ("=", Op::Assign),
        ];

        pub fn is_match(self) -> bool {
            matches!(self, Op::Match | Op::NoMatch)
        }

        pub fn as_str(self) -> &'static str {
            Self::ALL.iter().find(|(_, op)| *op == self).unwrap().0
        }
    }

    /// One `KEY{attr} OP "value"` pair.
    #[derive(Clone, Debug)]
    pub struct Token {
        pub key: String,
        pub attr: Option<String>,
        pub op: Op,
        pub value: String,
        /// The `i"…"` prefix (systemd ≥ 258): a case-insensitive match.
        pub case_insensitive: bool,
    }

    impl Token {
        /// This key with this attribute (`None`: without one).
        pub fn is(&self, key: &str, attr: Option<&str>) -> bool {
            self.key == key && self.attr.as_deref() == attr
        }
    }

    /// One rule: a logical line.
    #[derive(Clone, Debug)]
    pub struct Rule {
        /// The line it starts on.
        pub line: usize,
        pub tokens: Vec<Token>,
    }

    impl Rule {
        fn value_of(&self, key: &str) -> Option<&str> {
            self.tokens
                .iter()
                .find(|t| t.key == key)
                .map(|t| t.value.as_str())
        }

        pub fn label(&self) -> Option<&str> {
            self.value_of("LABEL")
        }

        pub fn goto(&self) -> Option<&str> {
            self.value_of("GOTO")
        }

        /// The first token with this key and attribute.
        pub fn find(&self, key: &str, attr: Option<&str>) -> Option<&Token> {
            self.tokens.iter().find(|t| t.is(key, attr))
        }
    }

    /// A parsed rules file.
    #[derive(Clone, Debug)]
    pub struct RulesFile {
        pub name: String,
        pub rules: Vec<Rule>,
    }

    /// udev's limit on a logical line (UDEV_LINE_SIZE).
    const LINE_MAX: usize = 16 * 1024;
    const WHITESPACE: [char; 4] = [' ', '\t', '\r', '\n'];

    /// Parses a rules file strictly: what udev reads without a complaint,
    /// with the separators `udevadm verify` asks for. The error names the
    /// file and line.
    pub fn parse(name: &str, text: &str) -> Result<RulesFile, String> {
        parse_with(name, text, true)
    }

    /// Parses a rules file as udev does, without the style checks of
    /// `udevadm verify` (commas and whitespace between pairs).
    pub fn parse_udev(name: &str, text: &str) -> Result<RulesFile, String> {
        parse_with(name, text, false)
    }

    fn parse_with(name: &str, text: &str, style: bool) -> Result<RulesFile, String> {
        let at = |line: usize, msg: String| format!("{name}:{line}: {msg}");
        let mut rules = Vec::new();
        for (line, logical) in logical_lines(text).map_err(|(l, m)| at(l, m))? {
            let tokens = parse_line(&logical, style).map_err(|m| at(line, m))?;
            check_rule(&tokens).map_err(|m| at(line, m))?;
            rules.push(Rule { line, tokens });
        }
        check_labels(&rules).map_err(|(l, m)| at(l, m))?;
        Ok(RulesFile {
            name: name.to_owned(),
            rules,
        })
    }

    /// The logical lines, each with the number of the line it starts on.
    /// As udev reads them: leading whitespace goes; a line whose first
    /// other character is `#` is a comment, also in the middle of a
    /// continuation; a line ending in a backslash goes on with the next
    /// (the backslash dropped, nothing put in its place).
    fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, (usize, String)> {
        let mut lines = Vec::new();
        let mut pending: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            if raw.contains('\0') {
                return Err((n, "NUL byte".into()));
            }
            let line = raw.trim_start_matches(WHITESPACE);
            if line.starts_with('#') {
                continue;
            }
            let (start, mut joined) = pending.take().unwrap_or((n, String::new()));
            joined.push_str(line);
            if joined.len() >= LINE_MAX {
                return Err((start, format!("longer than udev's {LINE_MAX} bytes")));
            }
            if let Some(head) = joined.strip_suffix('\\') {
                pending = Some((start, head.to_owned()));
            } else if !joined.is_empty() {
                lines.push((start, joined));
            }
        }
        if let Some((start, _)) = pending {
            return Err((
                start,
                "backslash continuation runs into the end of the file".into(),
            ));
        }
        Ok(lines)
    }

    fn is_ws(b: u8) -> bool {
        WHITESPACE.contains(&char::from(b))
    }

    /// What follows position `i`, for messages.
    fn rest(line: &str, i: usize) -> String {
        line[i..].chars().take(24).collect()
    }

    /// The pairs of one logical line. With `style`, the separators
    /// `udevadm verify` wants: one comma and whitespace after it between
    /// pairs, nothing before the first or after the last; without, any run
    /// of commas and whitespace, as udev reads them.
    fn parse_line(line: &str, style: bool) -> Result<Vec<Token>, String> {
        let b = line.as_bytes();
        let mut i = 0;
        let mut tokens = Vec::new();
        loop {
            let (mut commas, mut ws_before, mut ws_after) = (0, false, false);
            while i < b.len() && (b[i] == b',' || is_ws(b[i])) {
                if b[i] == b',' {
                    commas += 1;
                } else if commas > 0 {
                    ws_after = true;
                } else {
                    ws_before = true;
                }
                i += 1;
            }
            if i == b.len() {
                if style && commas > 0 {
                    return Err("stray comma at the end of the rule".into());
                }
                break;
            }
            if b[i] == b'#' {
                return Err("a comment must be on a line of its own".into());
            }
            if style && tokens.is_empty() && commas > 0 {
                return Err("stray comma before the first key".into());
            }
            if style && !tokens.is_empty() {
                match commas {
                    0 => return Err(format!("expected ',' before {:?}", rest(line, i))),
                    1 => {}
                    _ => return Err("more than one comma between two pairs".into()),
                }
                if ws_before {
                    return Err("whitespace before a comma".into());
                }
                if !ws_after {
                    return Err(format!(
                        "expected whitespace after ',' at {:?}",
                        rest(line, i)
                    ));
                }
            }

            let key_start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let key = &line[key_start..i];
            if key.is_empty() {
                return Err(format!("expected a key at {:?}", rest(line, key_start)));
            }
            let attr = if b.get(i) == Some(&b'{') {
                let close = line[i + 1..]
                    .find('}')
                    .ok_or_else(|| format!("unterminated '{{' after {key}"))?;
                let attr = &line[i + 1..i + 1 + close];
                i += close + 2;
                Some(attr.to_owned())
            } else {
                None
            };
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            let (op_str, op) = Op::ALL
                .iter()
                .find(|(s, _)| line[i..].starts_with(s))
                .copied()
                .ok_or_else(|| {
                    format!(
                        "expected an operator (==, !=, =, +=, -=, :=) after {key}, found {:?}",
                        rest(line, i)
                    )
                })?;
            i += op_str.len();
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            let (value, case_insensitive, end) = parse_value(line, i, key)?;
            i = end;
            tokens.push(Token {
                key: key.to_owned(),
                attr,
                op,
                value,
                case_insensitive,
            });
        }
        Ok(tokens)
    }

    /// A double-quoted value at `i`, with udev's optional prefixes `e`
    /// (C escapes) and `i` (case-insensitive match). In a plain value only
    /// `\"` is an escape. Returns the value, the `i` flag and the position
    /// after the closing quote.
    fn parse_value(line: &str, mut i: usize, key: &str) -> Result<(String, bool, usize), String> {
        let b = line.as_bytes();
        let (mut escaped, mut insensitive) = (false, false);
        while i < b.len() && b[i] != b'"' {
            match b[i] {
                b'e' if !escaped => escaped = true,
                b'i' if !insensitive => insensitive = true,
                _ => {
                    return Err(format!(
                        "the value of {key} must be in double quotes, found {:?}",
                        rest(line, i)
                    ));
                }
            }
            i += 1;
        }
        if i == b.len() {
            return Err(format!("the value of {key} must be in double quotes"));
        }
        let start = i + 1;
        let unterminated = || format!("unterminated quote in the value of {key}");
        let mut value = String::new();
        let mut chars = line[start..].char_indices().peekable();
        while let Some((off, c)) = chars.next() {
            match c {
                '"' => return Ok((value, insensitive, start + off + 1)),
                '\\' if escaped => {
                    let (_, e) = chars.next().ok_or_else(unterminated)?;
                    value.push(match e {
                        'a' => '\x07',
                        'b' => '\x08',
                        'f' => '\x0c',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'v' => '\x0b',
                        '\\' | '"' | '\'' => e,
                        'x' => {
                            let hex: String =
                                (0..2).filter_map(|_| chars.next()).map(|p| p.1).collect();
                            match u8::from_str_radix(&hex, 16) {
                                Ok(v) if hex.len() == 2 && v != 0 => char::from(v),
                                _ => return Err(format!("bad \\x escape in the value of {key}")),
                            }
                        }
                        other => {
                            return Err(format!("unknown escape \\{other} in the value of {key}"));
                        }
                    });
                }
                '\\' if matches!(chars.peek(), Some((_, '"'))) => {
                    chars.next();
                    value.push('"');
                }
                c => value.push(c),
            }
        }
        Err(unterminated())
    }

    /// Which attribute a key takes.
    #[derive(Clone, Copy)]
    enum Attr {
        No,
        Required,
        Optional,
        OneOf(&'static [&'static str]),
        OptionalOneOf(&'static [&'static str]),
    }

    /// The keys of udev(7), the attribute each takes and the operators it
    /// accepts. Where udev accepts an operator only with a warning and
    /// rewrites it (`OWNER+=` as `OWNER=`, `ENV:=` as `ENV=`, …), it is
    /// refused here.
    fn key_spec(key: &str) -> Option<(Attr, &'static [Op])> {
        use Op::*;
        const MATCH: &[Op] = &[Match, NoMatch];
        const IMPORT_TYPES: &[&str] = &["program", "builtin", "file", "db", "cmdline", "parent"];
        Some(match key {
            "ACTION" | "DEVPATH" | "KERNEL" | "KERNELS" | "SUBSYSTEM" | "SUBSYSTEMS" | "DRIVER"
            | "DRIVERS" | "TAGS" | "RESULT" => (Attr::No, MATCH),
            "ATTRS" => (Attr::Required, MATCH),
            "CONST" => (Attr::OneOf(&["arch", "virt"]), MATCH),
            "TEST" => (Attr::Optional, MATCH),
            "SYMLINK" => (
                Attr::No,
                &[Match, NoMatch, Assign, Add, Remove, AssignFinal],
            ),
            "NAME" => (Attr::No, &[Match, NoMatch, Assign, AssignFinal]),
            "ENV" => (Attr::Required, &[Match, NoMatch, Assign, Add]),
            "TAG" => (Attr::No, &[Match, NoMatch, Assign, Add, Remove]),
            "ATTR" | "SYSCTL" => (Attr::Required, &[Match, NoMatch, Assign]),
            // udev(7): "=", ":=" and "+=" have the same effect as "==".
            "PROGRAM" => (Attr::No, &[Match, NoMatch, Assign, Add, AssignFinal]),
            "IMPORT" => (
                Attr::OneOf(IMPORT_TYPES),
                &[Match, NoMatch, Assign, Add, AssignFinal],
            ),
            "OPTIONS" => (Attr::No, &[Assign, Add, AssignFinal]),
            "OWNER" | "GROUP" | "MODE" => (Attr::No, &[Assign, AssignFinal]),
            "SECLABEL" => (Attr::Required, &[Assign, Add]),
            "RUN" => (
                Attr::OptionalOneOf(&["program", "builtin"]),
                &[Assign, Add, AssignFinal],
            ),
            "LABEL" | "GOTO" => (Attr::No, &[Assign]),
            _ => return None,
        })
    }

    /// Properties udev sets itself, which `ENV{…}=` may not.
    const READ_ONLY_PROPERTIES: &[&str] = &[
        "ACTION",
        "CURRENT_TAGS",
        "DEVLINKS",
        "DEVNAME",
        "DEVPATH",
        "DEVTYPE",
        "DRIVER",
        "IFINDEX",
        "MAJOR",
        "MINOR",
        "SEQNUM",
        "SUBSYSTEM",
        "TAGS",
        "USEC_INITIALIZED",
    ];

    fn is_octal_mode(s: &str) -> bool {
        (3..=4).contains(&s.len()) && s.bytes().all(|c| (b'0'..=b'7').contains(&c))
    }

    /// A user or group: a name as useradd takes it, or a number.
    fn is_account(s: &str) -> bool {
        let name = s.strip_suffix('$').unwrap_or(s);
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            || name
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
                && name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    }

    /// A USB vendor or product id as sysfs shows it (4 lowercase hex
    /// digits), or a glob over such ids; `|` separates alternatives.
    fn is_usb_id_pattern(value: &str) -> bool {
        value.split('|').all(|alt| {
            let glob = alt.contains(['*', '?', '[']);
            (alt.len() == 4 || glob)
                && !alt.is_empty()
                && alt.bytes().all(|c| {
                    c.is_ascii_digit()
                        || (b'a'..=b'f').contains(&c)
                        || (glob && b"*?[]!-".contains(&c))
                })
        })
    }

    const OPTIONS: &[&str] = &[
        "dump",
        "string_escape=none",
        "string_escape=replace",
        "db_persist",
        "watch",
        "nowatch",
    ];

    fn check_token(t: &Token) -> Result<(), String> {
        let key = t.key.as_str();
        let op = t.op.as_str();
        let (attr_rule, ops) = key_spec(key).ok_or_else(|| format!("unknown key {key}"))?;
        let attr = t.attr.as_deref();
        let attr_ok = match (attr_rule, attr) {
            (Attr::No, None) | (Attr::Optional | Attr::OptionalOneOf(_), None) => true,
            (Attr::Required | Attr::Optional, Some(a)) => !a.is_empty(),
            (Attr::OneOf(list) | Attr::OptionalOneOf(list), Some(a)) => list.contains(&a),
            _ => false,
        };
        if !attr_ok {
            return Err(match attr {
                Some(a) => format!("{key} does not take the attribute {{{a}}}"),
                None => format!("{key} needs an attribute: {key}{{…}}"),
            });
        }
        if !ops.contains(&t.op) {
            let allowed: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
            return Err(format!(
                "{key} does not take the operator {op} (it takes {})",
                allowed.join(" ")
            ));
        }
        if t.case_insensitive && (!t.op.is_match() || matches!(key, "PROGRAM" | "IMPORT" | "TEST"))
        {
            return Err(format!(
                "the i\"…\" prefix is only for matches, not {key}{op}"
            ));
        }
        let v = t.value.as_str();
        let nonempty = |what: &str| {
            if v.is_empty() {
                Err(format!("{key}{op}\"\": {what} must not be empty"))
            } else {
                Ok(())
            }
        };
        match key {
            "MODE" if !is_octal_mode(v) => {
                return Err(format!(
                    "MODE {v:?} is not an octal mode (3 or 4 octal digits)"
                ));
            }
            "OWNER" | "GROUP" if !is_account(v) => {
                return Err(format!("{key} {v:?} is not a user or group name"));
            }
            "TEST" if attr.is_some_and(|a| !is_octal_mode(a)) => {
                return Err(format!(
                    "TEST{{{}}}: not an octal mode",
                    attr.unwrap_or_default()
                ));
            }
            "GOTO" | "LABEL" => nonempty("the label")?,
            "TAG" if !t.op.is_match() => {
                nonempty("a tag")?;
                if v.contains([':', ' ']) {
                    return Err(format!("TAG {v:?}: a tag has no ':' or space"));
                }
            }
            "PROGRAM" | "IMPORT" | "RUN" | "TEST" | "SECLABEL" => nonempty("the value")?,
            "NAME" if !t.op.is_match() && (v.is_empty() || v == "%k") => {
                return Err(format!("NAME={v:?} has no effect"));
            }
            "ENV"
                if !t.op.is_match() && READ_ONLY_PROPERTIES.contains(&attr.unwrap_or_default()) =>
            {
                return Err(format!(
                    "ENV{{{}}} is set by udev, not by rules",
                    attr.unwrap_or_default()
                ));
            }
            "SUBSYSTEM" if matches!(v, "bus" | "class") => {
                return Err(format!("SUBSYSTEM==\"{v}\" must be written \"subsystem\""));
            }
            "ATTRS" if attr.is_some_and(|a| a.starts_with("device/") || a.contains("../")) => {
                return Err(format!(
                    "ATTRS{{{}}}: no parent paths",
                    attr.unwrap_or_default()
                ));
            }
            "OPTIONS"
                if !OPTIONS.contains(&v)
                    && !["static_node=", "link_priority=", "log_level="]
                        .iter()
                        .any(|p| v.starts_with(p)) =>
            {
                return Err(format!("OPTIONS {v:?} is not an option udev knows"));
            }
            _ => {}
        }
        if matches!(key, "ATTR" | "ATTRS")
            && matches!(attr, Some("idVendor" | "idProduct"))
            && !is_usb_id_pattern(v)
        {
            return Err(format!(
                "{key}{{{}}} {v:?}: USB ids are 4 lowercase hex digits (or globs of them)",
                attr.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// A rule: valid tokens, at most one GOTO and one LABEL, and something
    /// to do (udev drops a rule of match keys only: "The line has no
    /// effect").
    fn check_rule(tokens: &[Token]) -> Result<(), String> {
        for t in tokens {
            check_token(t)?;
        }
        for key in ["GOTO", "LABEL"] {
            if tokens.iter().filter(|t| t.key == key).count() > 1 {
                return Err(format!("more than one {key} in a rule"));
            }
        }
        if tokens
            .iter()
            .all(|t| t.op.is_match() && !matches!(t.key.as_str(), "PROGRAM" | "IMPORT"))
        {
            return Err("the rule only matches: it has no effect".into());
        }
        Ok(())
    }

    /// Every GOTO has its LABEL later in the same file (udev only jumps
    /// forward, and only within a file); every LABEL is jumped to.
    fn check_labels(rules: &[Rule]) -> Result<(), (usize, String)> {
        for (i, rule) in rules.iter().enumerate() {
            if let Some(target) = rule.goto()
                && !rules[i + 1..].iter().any(|r| r.label() == Some(target))
            {
                return Err((
                    rule.line,
                    format!("GOTO=\"{target}\" has no LABEL=\"{target}\" after it in this file"),
                ));
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            if let Some(label) = rule.label()
                && !rules[..i].iter().any(|r| r.goto() == Some(label))
            {
                return Err((rule.line, format!("LABEL=\"{label}\" is never jumped to")));
            }
        }
        Ok(())
    }
}

mod sim {
    //! Runs parsed rules on a modelled device, the way udev evaluates them:
    //! files in order, a rule applies when all its match keys match (the
    //! parent keys — KERNELS, SUBSYSTEMS, DRIVERS, ATTRS, TAGS — all on one
    //! device of the chain up from the event device), GOTO skips forward to
    //! its LABEL. Only what these rules use is modelled; any other key
    //! fails loudly.

    use super::grammar::{Op, RulesFile, Token};
    use std::collections::{BTreeMap, BTreeSet};

    /// A device in sysfs.
    #[derive(Clone, Debug, Default)]
    pub struct SysDevice {
        pub subsystem: String,
        pub kernel: String,
        pub devtype: Option<String>,
        pub driver: Option<String>,
        pub attrs: BTreeMap<String, String>,
    }

    impl SysDevice {
        pub fn new(subsystem: &str, kernel: &str) -> Self {
            SysDevice {
                subsystem: subsystem.into(),
                kernel: kernel.into(),
                ..Default::default()
            }
        }

        pub fn devtype(mut self, t: &str) -> Self {
            self.devtype = Some(t.into());
            self
        }

        pub fn driver(mut self, d: &str) -> Self {
            self.driver = Some(d.into());
            self
        }

        pub fn attr(mut self, k: &str, v: &str) -> Self {
            self.attrs.insert(k.into(), v.into());
            self
        }
    }

    /// A uevent: the action and the chain from the event device up.
    #[derive(Clone, Debug)]
    pub struct Event {
        pub action: String,
        pub chain: Vec<SysDevice>,
        /// Major and minor when the device has a node.
        pub devnum: Option<(u32, u32)>,
    }

    /// What the rules did.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Outcome {
        pub tags: BTreeSet<String>,
        pub owner: Option<String>,
        pub group: Option<String>,
        pub mode: Option<String>,
        pub env: BTreeMap<String, String>,
    }

    /// A shell glob as udev matches values: `*`, `?`, `[…]` with ranges
    /// and `!`.
    pub fn glob(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
            Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
            Some(b'[') => {
                let negate = p.get(1) == Some(&b'!');
                let first = if negate { 2 } else { 1 };
                // A ']' right after '[' or '[!' is a member.
                let Some(close) = p[first + 1..].iter().position(|&c| c == b']') else {
                    return s.first() == Some(&b'[') && glob(&p[1..], &s[1..]);
                };
                let class = &p[first..first + 1 + close];
                let Some(&c) = s.first() else { return false };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= (class[i]..=class[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && glob(&p[first + 2 + close..], &s[1..])
            }
            Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
        }
    }

    /// `value` against a token's pattern (`|` between alternatives).
    fn compare(t: &Token, value: &str) -> bool {
        let value = if t.value.ends_with(char::is_whitespace) {
            value
        } else {
            value.trim_end()
        };
        let hit = t.value.split('|').any(|alt| {
            if t.case_insensitive {
                glob(
                    alt.to_lowercase().as_bytes(),
                    value.to_lowercase().as_bytes(),
                )
            } else {
                glob(alt.as_bytes(), value.as_bytes())
            }
        });
        hit == (t.op == Op::Match)
    }

    fn unmodelled(t: &Token) -> ! {
        panic!(
            "the rule simulator does not model {}{}: extend tests/tests/udev.rs",
            t.key,
            t.op.as_str()
        )
    }

    /// A parent key on one device of the chain.
    fn match_on(t: &Token, d: &SysDevice) -> bool {
        match (t.key.as_str(), t.attr.as_deref()) {
            ("KERNELS", _) => compare(t, &d.kernel),
            ("SUBSYSTEMS", _) => compare(t, &d.subsystem),
            ("DRIVERS", _) => compare(t, d.driver.as_deref().unwrap_or_default()),
            // A missing attribute never matches, whatever the operator.
            ("ATTRS", Some(a)) => d.attrs.get(a).is_some_and(|v| compare(t, v)),
            _ => unmodelled(t),
        }
    }

    fn match_self(t: &Token, ev: &Event, out: &Outcome) -> bool {
        let d = &ev.chain[0];
        match (t.key.as_str(), t.attr.as_deref()) {
            ("ACTION", _) => compare(t, &ev.action),
            ("KERNEL", _) => compare(t, &d.kernel),
            ("SUBSYSTEM", _) => compare(t, &d.subsystem),
            ("DRIVER", _) => compare(t, d.driver.as_deref().unwrap_or_default()),
            ("ATTR", Some(a)) => d.attrs.get(a).is_some_and(|v| compare(t, v)),
            ("ENV", Some(k)) => compare(t, out.env.get(k).map(String::as_str).unwrap_or_default()),
            ("TAG", _) => {
                let hit = out.tags.iter().any(|tag| {
                    t.value
                        .split('|')
                        .any(|alt| glob(alt.as_bytes(), tag.as_bytes()))
                });
                hit == (t.op == Op::Match)
            }
            _ => unmodelled(t),
        }
    }

    fn apply(t: &Token, out: &mut Outcome, finals: &mut BTreeSet<String>) {
        let v = t.value.clone();
        match (t.key.as_str(), t.op) {
            (_, op) if op.is_match() => {}
            ("GOTO" | "LABEL", _) => {}
            ("TAG", Op::Assign) => out.tags = BTreeSet::from([v]),
            ("TAG", Op::Add) => {
                out.tags.insert(v);
            }
            ("TAG", Op::Remove) => {
                out.tags.remove(&v);
            }
            (key @ ("OWNER" | "GROUP" | "MODE"), op) => {
                if finals.contains(key) {
                    return;
                }
                if op == Op::AssignFinal {
                    finals.insert(key.to_owned());
                }
                let slot = match key {
                    "OWNER" => &mut out.owner,
                    "GROUP" => &mut out.group,
                    _ => &mut out.mode,
                };
                *slot = Some(v);
            }
            ("ENV", Op::Assign) => {
                let k = t.attr.clone().unwrap_or_default();
                if v.is_empty() {
                    out.env.remove(&k);
                } else {
                    out.env.insert(k, v);
                }
            }
            _ => unmodelled(t),
        }
    }

    /// Runs `files` (in the given order) on `ev`.
    pub fn run(files: &[&RulesFile], ev: &Event) -> Outcome {
        let d = &ev.chain[0];
        let mut out = Outcome::default();
        out.env.insert("ACTION".into(), ev.action.clone());
        out.env.insert("SUBSYSTEM".into(), d.subsystem.clone());
        if let Some(t) = &d.devtype {
            out.env.insert("DEVTYPE".into(), t.clone());
        }
        if let Some((major, minor)) = ev.devnum {
            out.env.insert("MAJOR".into(), major.to_string());
            out.env.insert("MINOR".into(), minor.to_string());
        }
        let mut finals = BTreeSet::new();
        for file in files {
            let mut skip_to: Option<&str> = None;
            for rule in &file.rules {
                if let Some(label) = skip_to {
                    if rule.label() != Some(label) {
                        continue;
                    }
                    skip_to = None;
                }
                let (parents, own): (Vec<&Token>, Vec<&Token>) = rule
                    .tokens
                    .iter()
                    .filter(|t| t.op.is_match())
                    .partition(|t| {
                        matches!(
                            t.key.as_str(),
                            "KERNELS" | "SUBSYSTEMS" | "DRIVERS" | "ATTRS" | "TAGS"
                        )
                    });
                let matched = own.iter().all(|t| match_self(t, ev, &out))
                    && (parents.is_empty()
                        || ev
                            .chain
                            .iter()
                            .any(|dev| parents.iter().all(|t| match_on(t, dev))));
                if !matched {
                    continue;
                }
                for t in &rule.tokens {
                    apply(t, &mut out, &mut finals);
                }
                if let Some(target) = rule.goto() {
                    skip_to = Some(target);
                }
            }
        }
        out
    }
}

use grammar::{Op, RulesFile};
use sim::{Event, Outcome, SysDevice};

/// The repository's `udev/` folder.
fn udev_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../udev")
}

/// `udev/*.rules`, sorted by name as udev sorts them: `(name, text)`.
fn rules_sources() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(udev_dir())
        .expect("udev/ folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rules"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no udev/*.rules");
    files
}

/// Every `udev/*.rules`, parsed.
fn rules() -> Vec<RulesFile> {
    rules_sources()
        .iter()
        .map(|(name, text)| grammar::parse(name, text).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn rules_named(all: &[RulesFile], name: &str) -> RulesFile {
    all.iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("udev/{name} missing"))
        .clone()
}

const SECURITY_KEYS: &str = "70-keybridge-security-keys.rules";
const TPM: &str = "60-keybridge-tpm.rules";

/// Vendor ids that belong to one security-key maker: the rules may match
/// every product of theirs.
const KEY_MAKERS: &[(&str, &str)] = &[("1050", "Yubico"), ("096e", "Feitian"), ("349e", "Token2")];

/// Keys that must get `uaccess`: (vendor, product, what). Every vendor and
/// every product the rules name has a sample here (checked both ways).
const KEYS: &[(&str, &str, &str)] = &[
    ("1050", "0407", "YubiKey 5 OTP+FIDO+CCID"),
    ("1050", "0406", "YubiKey 5 FIDO+CCID"),
    ("1050", "0404", "YubiKey 5 CCID only"),
    ("1050", "0402", "YubiKey 5 FIDO only"),
    ("1050", "0120", "Security Key by Yubico"),
    ("1050", "0116", "YubiKey NEO OTP+FIDO+CCID"),
    ("096e", "0850", "Feitian ePass FIDO"),
    ("096e", "0858", "Google Titan, built by Feitian"),
    ("096e", "085b", "Google Titan, built by Feitian"),
    ("096e", "0866", "Feitian BioPass FIDO2 K33"),
    ("096e", "0880", "Hypersecu HyperFIDO (Feitian)"),
    ("349e", "0022", "Token2 PIN+ R1/R2/R3 FIDO+OTP"),
    ("349e", "0206", "Token2 PIN+ Bio3 OTP+PGP+FIDO"),
    ("18d1", "5026", "Google Titan U2F"),
    ("20a0", "4108", "Nitrokey Pro"),
    ("20a0", "4109", "Nitrokey Storage"),
    ("20a0", "4211", "Nitrokey Start"),
    ("20a0", "4230", "Nitrokey HSM"),
    ("20a0", "4287", "Nitrokey FIDO U2F"),
    ("20a0", "42b1", "Nitrokey FIDO2"),
    ("20a0", "42b2", "Nitrokey 3"),
    ("20a0", "42d4", "CanoKey"),
    ("20a0", "42dd", "Nitrokey 3 bootloader"),
    ("20a0", "42f3", "Nitrokey Passkey"),
    ("2581", "f1d0", "Nitrokey U2F"),
    ("0483", "a2ca", "SoloKeys Solo 1"),
    ("1209", "5070", "SoloKeys Solo Hacker"),
    ("1209", "50b0", "SoloKeys Solo bootloader"),
    ("1209", "beee", "SoloKeys Solo 2"),
    ("1d50", "60fc", "OnlyKey"),
];

/// Devices that must not: other products on the shared vendor ids, and
/// ordinary hardware.
const NOT_KEYS: &[(&str, &str, &str)] = &[
    ("046d", "c52b", "Logitech Unifying receiver"),
    ("18d1", "4ee7", "an Android phone (Google's vendor id)"),
    (
        "0483",
        "df11",
        "STM32 DFU bootloader (STMicroelectronics' vendor id)",
    ),
    ("1209", "2201", "a keyboard on the pid.codes vendor id"),
    ("1d50", "6089", "HackRF One (OpenMoko's vendor id)"),
    ("20a0", "41e5", "BlinkStick (Clay Logic's vendor id)"),
    ("2581", "1807", "another product on Plug-up's vendor id"),
    ("1d6b", "0002", "a Linux root hub"),
];

/// The chain above a USB device `1-1`: root hub, then the host controller.
fn usb_parents() -> Vec<SysDevice> {
    vec![
        SysDevice::new("usb", "usb1")
            .devtype("usb_device")
            .driver("usb")
            .attr("idVendor", "1d6b")
            .attr("idProduct", "0002"),
        SysDevice::new("pci", "0000:00:14.0")
            .driver("xhci_hcd")
            .attr("vendor", "0x8086"),
    ]
}

/// The USB device node of a key (`/dev/bus/usb/001/002`).
fn usb_device(vid: &str, pid: &str) -> Vec<SysDevice> {
    let mut chain = vec![
        SysDevice::new("usb", "1-1")
            .devtype("usb_device")
            .driver("usb")
            .attr("idVendor", vid)
            .attr("idProduct", pid),
    ];
    chain.extend(usb_parents());
    chain
}

/// A key's HID interface (no device node).
fn usb_interface(vid: &str, pid: &str) -> Vec<SysDevice> {
    let mut chain = vec![
        SysDevice::new("usb", "1-1:1.0")
            .devtype("usb_interface")
            .driver("usbhid")
            .attr("bInterfaceClass", "03"),
    ];
    chain.extend(usb_device(vid, pid));
    chain
}

/// A key's hidraw node, up through the HID device and the USB interface.
fn hidraw(vid: &str, pid: &str) -> Vec<SysDevice> {
    let hid = format!("0003:{}:{}.0001", vid.to_uppercase(), pid.to_uppercase());
    let mut chain = vec![
        SysDevice::new("hidraw", "hidraw0"),
        SysDevice::new("hid", &hid).driver("hid-generic"),
    ];
    chain.extend(usb_interface(vid, pid));
    chain
}

fn event(action: &str, chain: Vec<SysDevice>, devnum: Option<(u32, u32)>) -> Event {
    Event {
        action: action.into(),
        chain,
        devnum,
    }
}

/// A TPM character device (`tpm0` in class tpm, `tpmrm0` in class tpmrm).
fn tpm(kernel: &str) -> Event {
    let subsystem = kernel.trim_end_matches(|c: char| c.is_ascii_digit());
    let chain = vec![
        SysDevice::new(subsystem, kernel),
        SysDevice::new("pnp", "00:05").driver("tpm_tis"),
    ];
    event("add", chain, Some((253, 65536)))
}

/// All rules files on `ev`.
fn outcome(all: &[RulesFile], ev: &Event) -> Outcome {
    let files: Vec<&RulesFile> = all.iter().collect();
    sim::run(&files, ev)
}

#[test]
fn every_rules_file_follows_the_udev_grammar() {
    let all = rules();
    let names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [TPM, SECURITY_KEYS]);
    for f in &all {
        let (prefix, rest) = f.name.split_at(3);
        assert!(
            prefix.as_bytes()[..2].iter().all(u8::is_ascii_digit)
                && prefix.ends_with('-')
                && rest.starts_with("keybridge-"),
            "{}: rules files are named NN-keybridge-….rules",
            f.name
        );
    }
    // udev ignores files that do not end in .rules: nothing else but the
    // README belongs in the folder.
    for entry in std::fs::read_dir(udev_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name.ends_with(".rules") || name == "README.md",
            "udev/{name}: udev reads only *.rules"
        );
    }
}

#[test]
fn uaccess_rules_sort_before_the_seat_rules() {
    // 73-seat-late.rules runs the uaccess builtin on devices tagged
    // "uaccess"; 71-seat.rules tags them "seat" for logind's multi-seat.
    // A tag set in a file that sorts after them is never acted on.
    for f in rules() {
        let sets_uaccess = f.rules.iter().any(|r| {
            r.tokens
                .iter()
                .any(|t| t.is("TAG", None) && !t.op.is_match() && t.value == "uaccess")
        });
        if sets_uaccess {
            assert!(
                f.name.as_str() < "71-seat.rules" && f.name.as_str() < "73-seat-late.rules",
                "{} sets uaccess but sorts after 71-seat.rules / 73-seat-late.rules",
                f.name
            );
        }
    }
}

#[test]
fn every_listed_security_key_gets_uaccess_on_hidraw_and_usb() {
    let all = rules();
    for &(vid, pid, what) in KEYS {
        for (node, chain, devnum) in [
            ("hidraw", hidraw(vid, pid), (243, 0)),
            ("usb", usb_device(vid, pid), (189, 1)),
        ] {
            for action in ["add", "change", "bind"] {
                let out = outcome(&all, &event(action, chain.clone(), Some(devnum)));
                assert!(
                    out.tags.contains("uaccess"),
                    "{what} ({vid}:{pid}) {node} on {action}: no uaccess tag ({out:?})"
                );
                // An ACL for the session's user, nothing else: the node
                // stays root's, mode 0600.
                assert_eq!(
                    (out.owner, out.group, out.mode),
                    (None, None, None),
                    "{what} {node}: the rules must not change owner, group or mode"
                );
            }
        }
    }
}

#[test]
fn other_devices_and_events_get_nothing() {
    let all = rules();
    let none = Outcome::default();
    let strip = |mut o: Outcome| {
        o.env.clear();
        o
    };
    for &(vid, pid, what) in NOT_KEYS {
        for chain in [hidraw(vid, pid), usb_device(vid, pid)] {
            let out = strip(outcome(&all, &event("add", chain, Some((243, 1)))));
            assert_eq!(out, none, "{what} ({vid}:{pid}) was given something");
        }
    }
    // A YubiKey's remove event, and its USB interface (no node).
    let out = strip(outcome(
        &all,
        &event("remove", hidraw("1050", "0407"), Some((243, 0))),
    ));
    assert_eq!(out, none, "remove event");
    let out = strip(outcome(
        &all,
        &event("add", usb_interface("1050", "0407"), None),
    ));
    assert_eq!(out, none, "usb_interface");
    // A hidraw node that is not a USB device's (Bluetooth, I2C): nothing
    // to match on.
    let i2c = vec![
        SysDevice::new("hidraw", "hidraw3"),
        SysDevice::new("hid", "0018:04F3:2A3B.0003").driver("hid-multitouch"),
        SysDevice::new("i2c", "i2c-ELAN2A3B:00"),
    ];
    let out = strip(outcome(&all, &event("add", i2c, Some((243, 3)))));
    assert_eq!(out, none, "an I2C touchpad's hidraw");
    // The TPM nodes are not the security-key file's.
    let keys = rules_named(&all, SECURITY_KEYS);
    for kernel in ["tpm0", "tpmrm0"] {
        let out = strip(sim::run(&[&keys], &tpm(kernel)));
        assert_eq!(out, none, "{kernel} in {SECURITY_KEYS}");
    }
}

#[test]
fn vendor_wide_matches_are_for_security_key_makers_only() {
    let keys = rules_named(&rules(), SECURITY_KEYS);
    let mut named: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    for rule in &keys.rules {
        let Some(vendor) = rule.find("ATTRS", Some("idVendor")) else {
            continue;
        };
        assert_eq!(vendor.op, Op::Match, "line {}", rule.line);
        match rule.find("ATTRS", Some("idProduct")) {
            None => {
                assert!(
                    KEY_MAKERS.iter().any(|(v, _)| *v == vendor.value),
                    "line {}: vendor {} is shared with other hardware: list its products",
                    rule.line,
                    vendor.value
                );
                named.insert((vendor.value.clone(), None));
            }
            Some(products) => {
                for p in products.value.split('|') {
                    named.insert((vendor.value.clone(), Some(p.to_owned())));
                }
            }
        }
    }
    // Both ways: every vendor/product named has a sample in KEYS, every
    // sample is named.
    for (vendor, product) in &named {
        assert!(
            KEYS.iter()
                .any(|(v, p, _)| v == vendor && product.as_deref().is_none_or(|x| x == *p)),
            "{SECURITY_KEYS} names {vendor}:{} that KEYS has no sample of",
            product.as_deref().unwrap_or("*")
        );
    }
    for (v, p, what) in KEYS {
        assert!(
            named
                .iter()
                .any(|(nv, np)| nv == v && np.as_deref().is_none_or(|x| x == *p)),
            "KEYS has {what} ({v}:{p}) that {SECURITY_KEYS} does not name"
        );
    }
}

#[test]
fn tpm_nodes_follow_tpm_udev() {
    let all = rules();
    let tpm_rules = rules_named(&all, TPM);
    let ours = |kernel: &str| one_file(&tpm_rules, &tpm(kernel));
    for n in ["0", "1"] {
        let rm = ours(&format!("tpmrm{n}"));
        assert_eq!(rm.owner.as_deref(), Some("tss"), "tpmrm{n}");
        assert_eq!(rm.group.as_deref(), Some("tss"), "tpmrm{n}");
        assert_eq!(rm.mode.as_deref(), Some("0660"), "tpmrm{n}");
        assert_eq!(rm.tags, BTreeSet::from(["systemd".to_owned()]), "tpmrm{n}");
        // The raw TPM: the tss user's alone (group stays root).
        let raw = ours(&format!("tpm{n}"));
        assert_eq!(raw.owner.as_deref(), Some("tss"), "tpm{n}");
        assert_eq!(raw.group, None, "tpm{n}: no group access to the raw TPM");
        assert_eq!(raw.mode.as_deref(), Some("0660"), "tpm{n}");
    }
    // Not every node whose name starts with tpm.
    let mut other = tpm("tpm0");
    other.chain[0].subsystem = "misc".into();
    assert_eq!(one_file(&tpm_rules, &other), Outcome::default());

    // The same as Debian's tpm-udev, when installed.
    let installed = Path::new("/usr/lib/udev/rules.d/60-tpm-udev.rules");
    if !installed.exists() {
        assert!(
            !in_ci(),
            "{} missing under CI (Debian package tpm-udev)",
            installed.display()
        );
        eprintln!(
            "SKIP: {} missing (Debian package tpm-udev): no comparison",
            installed.display()
        );
        return;
    }
    let debian = grammar::parse_udev(
        "60-tpm-udev.rules",
        &std::fs::read_to_string(installed).unwrap(),
    )
    .unwrap();
    for kernel in ["tpm0", "tpmrm0"] {
        let theirs = one_file(&debian, &tpm(kernel));
        assert_eq!(ours(kernel), theirs, "{kernel}: not what tpm-udev does");
    }
}

/// One file on `ev`, without the event's own properties.
fn one_file(file: &RulesFile, ev: &Event) -> Outcome {
    let mut o = sim::run(&[file], ev);
    o.env.clear();
    o
}

/// Bad rules, one a line: the rule, ` ⇒ `, and what the error must say.
const BAD_RULES: &str = r#"
KERNEL=="hidraw*", OWNERS="tss"                  ⇒ unknown key OWNERS
kernel=="hidraw*", TAG+="uaccess"                ⇒ unknown key kernel
ATTRS{idVendor}=="1050", UACCESS="1"             ⇒ unknown key UACCESS
SUBSYSTEM="hidraw", TAG+="uaccess"               ⇒ SUBSYSTEM does not take the operator =
ATTRS{idVendor}="1050", TAG+="uaccess"           ⇒ ATTRS does not take the operator =
KERNEL!="tpm0", ACTION:="add"                    ⇒ ACTION does not take the operator :=
KERNEL=="tpm0", MODE=="0660"                     ⇒ MODE does not take the operator ==
KERNEL=="tpm0", GROUP!="tss"                     ⇒ GROUP does not take the operator !=
KERNEL=="tpm0", OWNER+="tss"                     ⇒ OWNER does not take the operator +=
KERNEL=="tpm0", ENV{X}:="1"                      ⇒ ENV does not take the operator :=
KERNEL=="tpm0", TAG-="x", GOTO+="end"            ⇒ GOTO does not take the operator +=
KERNEL{name}=="tpm0", MODE="0660"                ⇒ KERNEL does not take the attribute {name}
ATTRS=="1050", TAG+="uaccess"                    ⇒ ATTRS needs an attribute
ATTRS{}=="1050", TAG+="uaccess"                  ⇒ ATTRS does not take the attribute {}
KERNEL=="x", IMPORT{shell}="id"                  ⇒ IMPORT does not take the attribute {shell}
KERNEL=="x", RUN{script}+="id"                   ⇒ RUN does not take the attribute {script}
KERNEL=="tpm0, MODE="0660"                       ⇒ expected ',' before
KERNEL=="tpm0", MODE="0660                       ⇒ unterminated quote in the value of MODE
KERNEL=="tpm0", MODE="06\"60                     ⇒ unterminated quote in the value of MODE
KERNEL==tpm0, MODE="0660"                        ⇒ the value of KERNEL must be in double quotes
KERNEL=='tpm0', MODE="0660"                      ⇒ the value of KERNEL must be in double quotes
KERNEL=="tpm0", MODE=e"\q"                       ⇒ unknown escape \q
KERNEL=="tpm0", TAG+=i"x"                        ⇒ the i"…" prefix is only for matches
KERNEL=="tpm0", MODE="660a"                      ⇒ is not an octal mode
KERNEL=="tpm0", MODE="0680"                      ⇒ is not an octal mode
KERNEL=="tpm0", MODE="rw-rw----"                 ⇒ is not an octal mode
KERNEL=="tpm0", MODE="06600"                     ⇒ is not an octal mode
KERNEL=="tpm0", MODE=""                          ⇒ is not an octal mode
KERNEL=="tpm0", GROUP="Tss Group"                ⇒ is not a user or group name
ATTRS{idVendor}=="1050", ATTRS{idProduct}=="0X407", TAG+="x" ⇒ USB ids
ATTRS{idVendor}=="0x1050", TAG+="uaccess"        ⇒ USB ids
ATTRS{idVendor}=="20A0", TAG+="uaccess"          ⇒ USB ids
ATTRS{idVendor}=="1050|96e", TAG+="uaccess"      ⇒ USB ids
ATTR{idProduct}=="04071", TAG+="uaccess"         ⇒ USB ids
KERNEL=="tpm0" MODE="0660"                       ⇒ expected ','
KERNEL=="tpm0",MODE="0660"                       ⇒ expected whitespace after ','
KERNEL=="tpm0" , MODE="0660"                     ⇒ whitespace before a comma
KERNEL=="tpm0",, MODE="0660"                     ⇒ more than one comma
KERNEL=="tpm0", MODE="0660",                     ⇒ stray comma at the end
, KERNEL=="tpm0", MODE="0660"                    ⇒ stray comma before the first key
KERNEL=="tpm0", MODE="0660" # the raw TPM        ⇒ a comment must be on a line of its own
KERNEL=="tpm0", =="x"                            ⇒ expected a key
KERNEL=="tpm0", MODE~"0660"                      ⇒ expected an operator
ATTRS{idVendor=="1050", TAG+="uaccess"           ⇒ unterminated '{'
KERNEL=="tpm0", SUBSYSTEM=="tpm"                 ⇒ no effect
ACTION=="remove", GOTO="end"                     ⇒ has no LABEL="end" after it
LABEL="lonely"                                   ⇒ LABEL="lonely" is never jumped to
KERNEL=="tpm0", \                                ⇒ continuation runs into the end of the file
KERNEL=="tpm0", TAG+=""                          ⇒ must not be empty
KERNEL=="tpm0", TAG+="a:b"                       ⇒ a tag has no ':'
KERNEL=="tpm0", ENV{DEVNAME}="x"                 ⇒ is set by udev
SUBSYSTEM=="bus", TAG+="x"                       ⇒ must be written "subsystem"
ATTRS{../idVendor}=="1050", TAG+="x"             ⇒ no parent paths
KERNEL=="tpm0", OPTIONS+="fast"                  ⇒ not an option udev knows
KERNEL=="tpm0", TEST{rw}=="/dev/x", TAG+="x"     ⇒ not an octal mode
KERNEL=="eth0", NAME="%k"                        ⇒ has no effect
"#;

#[test]
fn the_parser_refuses_bad_rules() {
    let mut cases: Vec<(String, &str)> = BAD_RULES
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (rule, expected) = l.split_once(" ⇒ ").unwrap();
            // The continuation case keeps its backslash last.
            (rule.trim_end().to_owned(), expected)
        })
        .collect();
    // Cases of more than one line.
    cases.extend([
        (
            "LABEL=\"end\"\nACTION==\"remove\", GOTO=\"end\"".to_owned(),
            "has no LABEL=\"end\" after it",
        ),
        (
            "ACTION==\"remove\", GOTO=\"a\", GOTO=\"b\"\nLABEL=\"a\"\nLABEL=\"b\"".to_owned(),
            "more than one GOTO",
        ),
    ]);
    for (text, expected) in &cases {
        match grammar::parse("bad.rules", text) {
            Ok(parsed) => panic!("accepted {text:?}: {parsed:?}"),
            Err(e) => assert!(
                e.contains(expected),
                "{text:?}: error {e:?} does not say {expected:?}"
            ),
        }
    }
    // What only `udevadm verify` minds, udev itself reads.
    for text in [
        r#"KERNEL=="tpm0",MODE="0660""#,
        r#"KERNEL=="tpm0" MODE="0660""#,
        r#", KERNEL=="tpm0",, MODE="0660","#,
    ] {
        let f = grammar::parse_udev("style.rules", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.rules[0].tokens.len(), 2, "{text}");
    }
}

#[test]
fn the_parser_reads_the_whole_grammar() {
    let text = r#"# a comment
   # an indented comment

ACTION!="add|change", \
    # a comment inside a continuation, as udev skips it
    GOTO="end"
SUBSYSTEM=="hidraw", KERNEL=="hidraw[0-9]*", ATTRS{idVendor}=="10[0-9]?|*", \
  ATTRS{serial}=="a \"quoted\" word", TAG+="uaccess", TAG-="old", ENV{ID_X}+="1", \
  MODE:="0660", OWNER="tss", GROUP="109", SYMLINK+="key%n", OPTIONS+="static_node=tpmrm0", \
  RUN{builtin}+="uaccess", RUN+="/bin/true", IMPORT{builtin}="path_id", PROGRAM="/bin/true", \
  RESULT=="ok", TEST{0644}=="/dev/null", CONST{virt}=="none", SYSCTL{kernel.x}=="1", \
  DRIVERS=="usbhid", KERNELS=="1-*", SUBSYSTEMS=="usb", TAGS=="seat", DEVPATH=="/devices/*", \
  DRIVER=="", SECLABEL{selinux}="x", ATTR{power/control}="auto", NAME=="eth0", \
  ENV{ID_Y}=e"tab\there", ATTRS{manufacturer}==i"yubico", RUN+=e"\x41"
LABEL="end"
"#;
    let f = grammar::parse("good.rules", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.rules.len(), 3);
    assert_eq!(f.rules[0].line, 4);
    assert_eq!(f.rules[0].goto(), Some("end"));
    assert_eq!(f.rules[1].line, 7);
    let r = &f.rules[1];
    assert_eq!(r.tokens.len(), 32);
    let serial = r.find("ATTRS", Some("serial")).unwrap();
    assert_eq!(serial.value, r#"a "quoted" word"#);
    let mode = r.find("MODE", None).unwrap();
    assert_eq!((mode.op, mode.value.as_str()), (Op::AssignFinal, "0660"));
    assert_eq!(r.find("ENV", Some("ID_Y")).unwrap().value, "tab\there");
    assert!(
        r.find("ATTRS", Some("manufacturer"))
            .unwrap()
            .case_insensitive
    );
    assert_eq!(r.tokens.last().unwrap().value, "A");
    assert_eq!(r.find("TAG", None).unwrap().op, Op::Add);
    assert_eq!(f.rules[2].label(), Some("end"));

    // The glob of the evaluator, as udev's.
    for (pattern, value, hit) in [
        ("hidraw*", "hidraw12", true),
        ("tpm[0-9]*", "tpmrm0", false),
        ("tpm[0-9]*", "tpm0", true),
        ("tpm[!r]*", "tpm0", true),
        ("10?0", "1050", true),
        ("[]a]", "]", true),
        ("*", "", true),
        ("?*", "", false),
    ] {
        assert_eq!(
            sim::glob(pattern.as_bytes(), value.as_bytes()),
            hit,
            "{pattern} ~ {value}"
        );
    }
}

/// systemd's and Debian's rules files that the parser must read as udev
/// does (when installed).
const SYSTEM_RULES: &[&str] = &[
    "50-udev-default.rules",
    "60-persistent-storage.rules",
    "60-fido-id.rules",
    "60-tpm-udev.rules",
    "70-uaccess.rules",
    "71-seat.rules",
    "73-seat-late.rules",
    "99-systemd.rules",
];

#[test]
fn the_parser_accepts_systemds_own_rules() {
    let dir = Path::new("/usr/lib/udev/rules.d");
    let mut read = 0;
    for name in SYSTEM_RULES {
        let path = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        grammar::parse_udev(name, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        read += 1;
    }
    if read == 0 {
        assert!(
            !in_ci(),
            "no udev rules under {} in CI (Debian package udev)",
            dir.display()
        );
        eprintln!("SKIP: no udev rules under {}", dir.display());
    }
}

#[test]
fn readme_explains_every_rules_file() {
    let readme = std::fs::read_to_string(udev_dir().join("README.md")).expect("udev/README.md");
    for (name, _) in rules_sources() {
        assert!(
            readme.contains(&name),
            "udev/README.md does not mention {name}"
        );
    }
    for needle in [
        "sudo install -m 0644 udev/*.rules /etc/udev/rules.d/",
        "udevadm control --reload",
        "udevadm trigger",
        "getfacl",
        "udevadm info",
        "udevadm verify",
        "udevadm test",
        "org.debian.pcsc-lite.access_pcsc",
        "org.debian.pcsc-lite.access_card",
        "pcscd.socket",
    ] {
        assert!(
            readme.contains(needle),
            "udev/README.md does not say {needle:?}"
        );
    }
    // The rules it suggests (```udev blocks) are good rules too.
    let blocks: Vec<&str> = readme
        .split("```udev\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(!blocks.is_empty(), "udev/README.md has no ```udev block");
    for block in blocks {
        grammar::parse("README.md", block).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The udevadm to run: `$UDEVADM` if set (e.g. one of a newer systemd,
/// to run `udevadm verify`), else the installed one, if any.
fn udevadm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("UDEVADM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/udevadm",
        "/bin/udevadm",
        "/sbin/udevadm",
        "/usr/sbin/udevadm",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The udevadm the system tests need: `None` with a SKIP line outside CI;
/// under CI a missing udevadm fails (`cargo xtask deps` installs it).
fn udevadm_or_skip(test: &str) -> Option<PathBuf> {
    let found = udevadm();
    if found.is_none() {
        assert!(!in_ci(), "udevadm missing under CI (Debian package udev)");
        eprintln!("SKIP {test}: udevadm missing (Debian package udev); run `cargo xtask deps`");
    }
    found
}

#[test]
fn udevadm_verify_accepts_the_rules() {
    let Some(udevadm) = udevadm_or_skip("udevadm_verify_accepts_the_rules") else {
        return;
    };
    // `udevadm verify` came with systemd 254; Debian 12 has 252. A missing
    // verb is the installed udev's feature, not a broken setup: this skip
    // is fine under CI too (the grammar test above covers the files).
    let help = Command::new(&udevadm)
        .args(["verify", "--help"])
        .output()
        .unwrap();
    if !help.status.success() {
        let version = Command::new(&udevadm).arg("--version").output().unwrap();
        eprintln!(
            "SKIP: udevadm {} has no `verify` verb (systemd >= 254 has it)",
            String::from_utf8_lossy(&version.stdout).trim()
        );
        return;
    }
    let files: Vec<PathBuf> = rules_sources()
        .iter()
        .map(|(name, _)| udev_dir().join(name))
        .collect();
    // Names are not resolved: the tss account is checked by the
    // `udevadm test` run below, where it matters.
    let out = Command::new(&udevadm)
        .args(["verify", "--resolve-names=never"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "udevadm verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tests below need root: CI runs as root, so there they never skip.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A synthetic sysfs: directories under `sys/devices` with `uevent`, the
/// `subsystem` link and attribute files, as the kernel lays them out.
struct FakeSysfs {
    root: PathBuf,
    /// `name action /sys/devices/…` lines for the script.
    cases: Vec<String>,
    /// `name major minor` lines: character nodes made in the private /dev.
    nodes: Vec<String>,
}

impl FakeSysfs {
    fn new(root: &Path) -> Self {
        FakeSysfs {
            root: root.to_owned(),
            cases: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// A device directory `devices/<path>` in `subsystem_dir` (`bus/usb`,
    /// `class/hidraw`); returns its /sys path.
    fn device(
        &self,
        path: &str,
        subsystem_dir: &str,
        uevent: &str,
        attrs: &[(&str, &str)],
    ) -> String {
        let rel = format!("devices/{path}");
        let dir = self.root.join("sys").join(&rel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(self.root.join("sys").join(subsystem_dir)).unwrap();
        let up = "../".repeat(rel.split('/').count());
        std::os::unix::fs::symlink(format!("{up}{subsystem_dir}"), dir.join("subsystem")).unwrap();
        std::fs::write(dir.join("uevent"), uevent).unwrap();
        for (k, v) in attrs {
            std::fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
        format!("/sys/{rel}")
    }

    fn case(&mut self, name: &str, action: &str, syspath: &str) {
        self.cases.push(format!("{name} {action} {syspath}"));
    }

    /// A USB key on port `1-n`: its USB device and its hidraw node.
    /// Returns (usb_device, hidraw) syspaths.
    fn usb_key(&mut self, n: usize, vid: &str, pid: &str) -> (String, String) {
        let usb = format!("pci0000:00/0000:00:14.0/usb1/1-{n}");
        let usb_path = self.device(
            &usb,
            "bus/usb",
            &format!(
                "MAJOR=189\nMINOR={n}\nDEVNAME=bus/usb/001/{:03}\nDEVTYPE=usb_device\nDRIVER=usb\n\
                 PRODUCT={}/{}/100\nTYPE=0/0/0\nBUSNUM=001\nDEVNUM={:03}\n",
                n + 1,
                vid.trim_start_matches('0'),
                pid.trim_start_matches('0'),
                n + 1
            ),
            &[("idVendor", vid), ("idProduct", pid)],
        );
        let intf = format!("{usb}/1-{n}:1.0");
        self.device(
            &intf,
            "bus/usb",
            "DEVTYPE=usb_interface\nDRIVER=usbhid\nINTERFACE=3/0/0\n",
            &[("bInterfaceClass", "03")],
        );
        let hid = format!(
            "{intf}/0003:{}:{}.{n:04X}",
            vid.to_uppercase(),
            pid.to_uppercase()
        );
        self.device(
            &hid,
            "bus/hid",
            &format!(
                "DRIVER=hid-generic\nHID_ID=0003:0000{}:0000{}\n",
                vid.to_uppercase(),
                pid.to_uppercase()
            ),
            &[],
        );
        let hidraw = self.device(
            &format!("{hid}/hidraw/hidraw{n}"),
            "class/hidraw",
            &format!("MAJOR=243\nMINOR={n}\nDEVNAME=hidraw{n}\n"),
            &[],
        );
        (usb_path, hidraw)
    }

    /// tpm0 and tpmrm0 of a TPM on the LPC bus, with their nodes.
    fn tpm(&mut self) -> (String, String) {
        let tpm0 = self.device(
            "pnp0/00:05/tpm/tpm0",
            "class/tpm",
            "MAJOR=10\nMINOR=224\nDEVNAME=tpm0\n",
            &[],
        );
        let tpmrm0 = self.device(
            "pnp0/00:05/tpmrm/tpmrm0",
            "class/tpmrm",
            "MAJOR=253\nMINOR=65536\nDEVNAME=tpmrm0\n",
            &[],
        );
        self.nodes.push("tpm0 10 224".into());
        self.nodes.push("tpmrm0 253 65536".into());
        (tpm0, tpmrm0)
    }
}

/// Runs in a mount namespace of its own (`unshare --mount`): a private
/// /dev (null and the synthetic nodes), /run (udev's database, and
/// /run/udev/rules.d with the rules under test) and the synthetic /sys;
/// /etc/udev/rules.d hidden, and with `isolated` the system's rules too.
/// Then `udevadm test` on each case, and the nodes' owner, group and mode.
/// SYSTEMD_DEVICE_VERIFY_SYSFS=0 lets sd-device (systemd ≥ 250) read a
/// /sys that is not sysfs.
const NAMESPACE_SCRIPT: &str = r#"
set -eu
root=$1
isolated=$2
mount -t tmpfs -o mode=0755 keybridge-udev-dev "$root/dev"
: > "$root/dev/null"
mount --bind /dev/null "$root/dev/null"
while read -r name major minor; do
    [ -n "$name" ] || continue
    mknod -m 0600 "$root/dev/$name" c "$major" "$minor"
done < "$root/nodes"
mount -t tmpfs -o mode=0755 keybridge-udev-run "$root/run"
mkdir -p "$root/run/udev/rules.d"
cp -R "$root/rules/." "$root/run/udev/rules.d/"
mount --bind "$root/sys" /sys
mount --rbind "$root/dev" /dev
mount --bind "$root/run" /run
if [ -d /etc/udev/rules.d ]; then mount --bind "$root/empty" /etc/udev/rules.d; fi
if [ "$isolated" = yes ]; then
    for d in /usr/local/lib/udev/rules.d /usr/lib/udev/rules.d /lib/udev/rules.d; do
        if [ -d "$d" ]; then mount --bind "$root/empty" "$d"; fi
    done
fi
while read -r name action syspath; do
    [ -n "$name" ] || continue
    rc=0
    SYSTEMD_DEVICE_VERIFY_SYSFS=0 "$UDEVADM" test --action="$action" "$syspath" \
        > "$root/out/$name.out" 2> "$root/out/$name.log" || rc=$?
    echo "$rc" > "$root/out/$name.rc"
done < "$root/cases"
while read -r name major minor; do
    [ -n "$name" ] || continue
    stat -c '%U %G %a' "/dev/$name" > "$root/out/$name.stat"
done < "$root/nodes"
"#;

/// What `udevadm test` said about one device.
#[derive(Debug)]
struct TestRun {
    tags: BTreeSet<String>,
    run: Vec<String>,
    stdout: String,
    log: String,
}

/// The tags and the RUN list from `udevadm test` output: systemd 252
/// prints `TAGS=:a:b:` and `run: 'x'`; later versions also list them in
/// indented sections (`Tags:`, `Run programs:`).
fn parse_test_output(stdout: &str, log: String) -> TestRun {
    let mut tags = BTreeSet::new();
    let mut run = Vec::new();
    let mut section = "";
    for line in stdout.lines() {
        let trimmed = line.trim();
        if !line.starts_with(char::is_whitespace) {
            section = "";
        }
        if let Some(v) = trimmed
            .strip_prefix("TAGS=")
            .or_else(|| trimmed.strip_prefix("CURRENT_TAGS="))
        {
            tags.extend(v.split(':').filter(|t| !t.is_empty()).map(str::to_owned));
        } else if let Some(v) = trimmed.strip_prefix("run: ") {
            run.push(v.trim_matches('\'').to_owned());
        } else if trimmed.ends_with(':') && !line.starts_with(char::is_whitespace) {
            section = if trimmed.starts_with("Tags") {
                "tags"
            } else if trimmed.starts_with("Run") {
                "run"
            } else {
                ""
            };
        } else if line.starts_with(char::is_whitespace) && !trimmed.is_empty() {
            match section {
                "tags" => {
                    tags.insert(trimmed.to_owned());
                }
                "run" => run.push(trimmed.trim_matches('\'').to_owned()),
                _ => {}
            }
        }
    }
    TestRun {
        tags,
        run,
        stdout: stdout.to_owned(),
        log,
    }
}

/// What one namespace run gave.
struct Results {
    /// `udevadm test` of each case.
    runs: BTreeMap<String, TestRun>,
    /// `owner group mode` of each node.
    stats: BTreeMap<String, String>,
}

/// Builds `sysfs` into a temp folder and runs the namespace script on it
/// with `rules` in /run/udev/rules.d. `Err` when the namespace cannot be
/// made (not root, no CAP_SYS_ADMIN).
fn run_udevadm_test(
    udevadm: &Path,
    root: &Path,
    sysfs: &FakeSysfs,
    rules: &[PathBuf],
    isolated: bool,
) -> Result<Results, String> {
    for d in ["dev", "run", "empty", "out", "rules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for r in rules {
        std::fs::copy(r, root.join("rules").join(r.file_name().unwrap())).unwrap();
    }
    std::fs::write(root.join("cases"), sysfs.cases.join("\n") + "\n").unwrap();
    std::fs::write(root.join("nodes"), sysfs.nodes.join("\n") + "\n").unwrap();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            NAMESPACE_SCRIPT,
            "sh",
        ])
        .arg(root)
        .arg(if isolated { "yes" } else { "no" })
        .env("UDEVADM", udevadm)
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the mount namespace script failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut runs = BTreeMap::new();
    for case in &sysfs.cases {
        let name = case.split(' ').next().unwrap();
        let read = |ext: &str| {
            std::fs::read_to_string(root.join("out").join(format!("{name}.{ext}"))).unwrap()
        };
        let rc = read("rc");
        let (stdout, log) = (read("out"), read("log"));
        assert_eq!(
            rc.trim(),
            "0",
            "udevadm test {case}: exit {rc}\n{stdout}\n{log}"
        );
        runs.insert(name.to_owned(), parse_test_output(&stdout, log));
    }
    let mut stats = BTreeMap::new();
    for node in &sysfs.nodes {
        let name = node.split(' ').next().unwrap();
        let stat = std::fs::read_to_string(root.join("out").join(format!("{name}.stat"))).unwrap();
        stats.insert(name.to_owned(), stat.trim().to_owned());
    }
    Ok(Results { runs, stats })
}

/// Log lines where udev complains about a rules file under test.
fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("/run/udev/rules.d/"))
        .filter(|l| {
            let l = l.to_lowercase();
            [
                "invalid", "unknown", "ignoring", "failed", "error", "warning", "assuming",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect()
}

#[test]
fn udevadm_test_applies_the_rules_to_synthetic_devices() {
    const TEST: &str = "udevadm_test_applies_the_rules_to_synthetic_devices";
    let Some(udevadm) = udevadm_or_skip(TEST) else {
        return;
    };
    if !is_root() {
        assert!(
            !in_ci(),
            "CI runs as root; {TEST} needs root for its mount namespace"
        );
        eprintln!("SKIP {TEST}: needs root (a mount namespace with a synthetic /sys)");
        return;
    }
    let ours: Vec<PathBuf> = rules_sources()
        .iter()
        .map(|(name, _)| udev_dir().join(name))
        .collect();

    // 1. Our rules alone, on every listed key, the other devices, a remove
    //    event and the TPM nodes.
    let dir = tempfile::Builder::new()
        .prefix("keybridge-udev-")
        .tempdir()
        .unwrap();
    let mut sysfs = FakeSysfs::new(dir.path());
    let mut n = 0;
    let mut expect: Vec<(String, bool, String)> = Vec::new();
    for (list, wanted) in [(KEYS, true), (NOT_KEYS, false)] {
        for &(vid, pid, what) in list {
            n += 1;
            let (usb, hidraw) = sysfs.usb_key(n, vid, pid);
            for (kind, path) in [("usb", usb), ("hidraw", hidraw)] {
                let name = format!("{kind}-{vid}-{pid}");
                sysfs.case(&name, "add", &path);
                expect.push((name, wanted, format!("{what} ({vid}:{pid}) {kind}")));
            }
        }
    }
    n += 1;
    let (_, hidraw) = sysfs.usb_key(n, "1050", "0407");
    sysfs.case("remove-yubikey", "remove", &hidraw);
    expect.push((
        "remove-yubikey".into(),
        false,
        "a YubiKey's remove event".into(),
    ));
    let (tpm0, tpmrm0) = sysfs.tpm();
    sysfs.case("tpm0", "add", &tpm0);
    sysfs.case("tpmrm0", "add", &tpmrm0);

    let Results { runs, stats } = match run_udevadm_test(&udevadm, dir.path(), &sysfs, &ours, true)
    {
        Ok(r) => r,
        Err(e) => {
            assert!(!in_ci(), "{TEST}: {e}");
            eprintln!("SKIP {TEST}: {e}");
            return;
        }
    };
    for (name, wanted, what) in &expect {
        let run = &runs[name];
        assert_eq!(
            run.tags.contains("uaccess"),
            *wanted,
            "{what}: uaccess {}expected; udevadm test said:\n{}\n{}",
            if *wanted { "" } else { "not " },
            run.stdout,
            run.log
        );
    }
    for name in ["tpm0", "tpmrm0"] {
        assert!(
            runs[name].tags.contains("systemd"),
            "{name}: {:?}",
            runs[name]
        );
        assert!(
            !runs[name].tags.contains("uaccess"),
            "{name}: {:?}",
            runs[name]
        );
    }
    for run in runs.values() {
        let bad = complaints(&run.log);
        assert!(bad.is_empty(), "udev complained about the rules: {bad:#?}");
    }
    // Owner and group are resolved by udev when it loads the rules: the
    // tss account must exist (Debian's tpm-udev makes it).
    let tss = Command::new("getent")
        .args(["group", "tss"])
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("getent")
            .args(["passwd", "tss"])
            .output()
            .is_ok_and(|o| o.status.success());
    if tss {
        assert_eq!(stats["tpmrm0"], "tss tss 660", "/dev/tpmrm0");
        assert_eq!(stats["tpm0"], "tss root 660", "/dev/tpm0");
    } else {
        assert!(
            !in_ci(),
            "no tss user or group under CI (Debian package tpm-udev)"
        );
        eprintln!("SKIP: no tss user/group (Debian package tpm-udev): TPM node owners not checked");
    }

    // 2. With the system's rules (the seat rules of systemd): our tag makes
    //    73-seat-late.rules run the uaccess builtin, which puts the ACL on
    //    the node; without our rules the same synthetic key gets nothing.
    let seat_late = [
        "/usr/lib/udev/rules.d/73-seat-late.rules",
        "/lib/udev/rules.d/73-seat-late.rules",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if !seat_late {
        assert!(
            !in_ci(),
            "73-seat-late.rules missing under CI (Debian package systemd)"
        );
        eprintln!("SKIP: no 73-seat-late.rules (Debian package systemd): seat rules not checked");
        return;
    }
    for with_ours in [true, false] {
        let dir = tempfile::Builder::new()
            .prefix("keybridge-udev-")
            .tempdir()
            .unwrap();
        let mut sysfs = FakeSysfs::new(dir.path());
        let (usb, hidraw) = sysfs.usb_key(1, "1050", "0407");
        sysfs.case("hidraw", "add", &hidraw);
        sysfs.case("usb", "add", &usb);
        let (_, other) = sysfs.usb_key(2, "046d", "c52b");
        sysfs.case("other", "add", &other);
        let rules: &[PathBuf] = if with_ours { &ours } else { &[] };
        let Results { runs, .. } = run_udevadm_test(&udevadm, dir.path(), &sysfs, rules, false)
            .unwrap_or_else(|e| panic!("{TEST}: {e}"));
        for name in ["hidraw", "usb"] {
            let run = &runs[name];
            let acl = run.tags.contains("uaccess") && run.run.iter().any(|r| r == "uaccess");
            assert_eq!(
                acl,
                with_ours,
                "YubiKey {name} {} our rules: uaccess builtin {}expected\n{}\n{}",
                if with_ours { "with" } else { "without" },
                if with_ours { "" } else { "not " },
                run.stdout,
                run.log
            );
            if with_ours {
                assert!(
                    run.tags.contains("seat"),
                    "71-seat.rules did not see the tag: {run:?}"
                );
            }
        }
        assert!(
            !runs["other"].tags.contains("uaccess"),
            "{:?}",
            runs["other"]
        );
    }
}
