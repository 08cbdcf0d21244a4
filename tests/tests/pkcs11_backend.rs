//! The PKCS#11 backend (keybridge-backends) against real SoftHSM2 tokens,
//! cross-checked with `pkcs11-tool` and `openssl` (DESIGN.md §8). Each test
//! runs in its own process with its own token store
//! ([`keybridge_tests::softhsm_test!`]): SoftHSM2 reads its configuration
//! once per process.

use keybridge_backends::pkcs11::{self, Pkcs11Params};
use keybridge_backends::{
    BackendError, BackendKind, CreateSpec, ExposeSecret as _, KeyRecord, KeyUri, Pkcs11Uri,
    SecretString, Signer, TokenListing, Worker,
};
use keybridge_protocol::{Algorithm, Claims, KeyLog, PublicKey, UnsignedCommand, Verifier};
use keybridge_tests::{SOFTHSM_MODULE as MODULE, SoftHsm, TOKEN_PIN as PIN, softhsm_test};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const NOW: i64 = 1_800_000_000;

fn pin() -> SecretString {
    SecretString::from(PIN)
}

fn wrong_pin() -> SecretString {
    SecretString::from("654321")
}

fn params(record: &KeyRecord) -> Pkcs11Params {
    serde_json::from_value(record.params.clone()).expect("pkcs11 params")
}

/// A key URI on `token` with `attrs` (`object=…;id=…`) and the module, parsed.
fn uri(hsm: &SoftHsm, token: &str, attrs: &str) -> Pkcs11Uri {
    hsm.token_uri(token, attrs).parse().expect("a pkcs11 URI")
}

fn parsed(text: &str) -> Pkcs11Uri {
    text.parse().expect("a pkcs11 URI")
}

/// What the module shows, through the backend-neutral entry point.
fn tokens() -> Vec<TokenListing> {
    keybridge_backends::list(BackendKind::Pkcs11, Some(MODULE)).expect("list the tokens")
}

/// A one-key account log whose genesis the key signs itself, and a command
/// signed by `signer`, checked by the device verifier.
fn command_verifies_on_a_device(signer: &mut dyn Signer, agent: &str) {
    let public = signer.public_key().clone();
    let recovery = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let recovery = PublicKey::ed25519(recovery.verifying_key().as_bytes()).unwrap();
    let genesis = KeyLog::genesis("ACME", NOW - 100, &public, agent, &recovery);
    let signature = signer.sign(genesis.to_be_signed()).expect("sign genesis");
    let log = KeyLog::from_bytes(&genesis.into_bytes(&signature).unwrap()).unwrap();

    let claims = Claims {
        iss: "ACME".into(),
        sub: agent.into(),
        aud: Some("dev-1".into()),
        exp: NOW + 300,
        nbf: NOW,
        iat: NOW,
        cti: [7; 16],
        cmd: "run-script".into(),
        args: BTreeMap::new(),
        body: None,
        devs: None,
    };
    let unsigned = UnsignedCommand::new(&claims, &public).unwrap();
    let signature = signer.sign(unsigned.to_be_signed()).expect("sign command");
    let envelope = unsigned.into_envelope(&signature).unwrap();
    let verified = Verifier::new(&log, "dev-1")
        .check(&envelope, None, NOW)
        .expect("the device accepts the command");
    assert_eq!(verified.kid, public.kid());
    assert_eq!(verified.claims, claims);
}

/// `pkcs11-tool --read-object --type pubkey` as PEM (DER converted by openssl).
fn public_key_as_pkcs11_tool_exports_it(hsm: &SoftHsm, token: &str, id_hex: &str) -> String {
    let der = hsm.file(&format!("{id_hex}.der"));
    hsm.pkcs11_tool(&[
        "--token-label",
        token,
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        id_hex,
        "-o",
        der.to_str().unwrap(),
    ]);
    // OpenSC 0.23 writes P-256 keys as DER SPKI but Ed25519 keys as PEM.
    let written = std::fs::read(&der).unwrap();
    if written.starts_with(b"-----BEGIN PUBLIC KEY-----") {
        return String::from_utf8(written).unwrap();
    }
    hsm.tool_text(
        "openssl",
        &[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
            "-outform",
            "PEM",
        ],
    )
}

/// The `pkcs11-tool --list-objects` paragraph of the `kind` object (e.g.
/// "Private Key Object") labelled `label`.
fn object_listing(listing: &str, kind: &str, label: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    for line in listing.lines() {
        match paragraphs.last_mut() {
            Some(last) if line.starts_with(' ') => {
                last.push_str(line);
                last.push('\n');
            }
            _ => paragraphs.push(format!("{line}\n")),
        }
    }
    paragraphs
        .into_iter()
        .find(|p| p.starts_with(kind) && p.contains(&format!("label:      {label}\n")))
        .unwrap_or_else(|| panic!("no {kind} labelled {label} in:\n{listing}"))
}

/// openssl checks an ES256 (DER) or Ed25519 (raw) signature over `data`.
fn openssl_verifies(hsm: &SoftHsm, public: &PublicKey, data: &[u8], signature: &[u8]) {
    let pem = hsm.file("check.pem");
    let data_file = hsm.file("check.data");
    let sig_file = hsm.file("check.sig");
    std::fs::write(&pem, public.to_spki_pem()).unwrap();
    std::fs::write(&data_file, data).unwrap();
    let (pem, data_file, sig_path) = (
        pem.to_str().unwrap(),
        data_file.to_str().unwrap(),
        sig_file.to_str().unwrap(),
    );
    let out = match public.algorithm() {
        Algorithm::Es256 => {
            let sig = p256::ecdsa::Signature::from_slice(signature).unwrap();
            std::fs::write(&sig_file, sig.to_der().as_bytes()).unwrap();
            hsm.tool_text(
                "openssl",
                &[
                    "dgst",
                    "-sha256",
                    "-verify",
                    pem,
                    "-signature",
                    sig_path,
                    data_file,
                ],
            )
        }
        Algorithm::Ed25519 => {
            std::fs::write(&sig_file, signature).unwrap();
            hsm.tool_text(
                "openssl",
                &[
                    "pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin", "-in", data_file,
                    "-sigfile", sig_path,
                ],
            )
        }
    };
    assert!(
        out.contains("Verified OK") || out.contains("Signature Verified Successfully"),
        "openssl: {out}"
    );
}

fn is_low_s(signature: &[u8]) -> bool {
    let sig = p256::ecdsa::Signature::from_slice(signature).unwrap();
    sig.normalize_s() == sig
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

softhsm_test! {
    fn p256_key_made_on_the_token_signs_commands_a_device_accepts(hsm) {
        hsm.init_token("p256");
        let (mut signer, record) = pkcs11::create(
            &uri(hsm, "p256", "object=alice-laptop"),
            "ACME",
            "alice",
            Algorithm::Es256,
            &pin(),
            Some("laptop".into()),
            NOW,
        )
        .expect("create a P-256 key");

        // The record: canonical URI, public facts only.
        assert_eq!(record.backend, BackendKind::Pkcs11);
        assert_eq!(record.alg, Algorithm::Es256);
        assert_eq!(record.label.as_deref(), Some("laptop"));
        assert_eq!(record.created, NOW);
        let uri = parsed(&record.uri);
        assert_eq!(uri.token.as_deref(), Some("p256"));
        assert_eq!(uri.serial.as_ref().map(String::len), Some(16));
        assert_eq!(uri.object.as_deref(), Some("alice-laptop"));
        assert_eq!(uri.id.as_ref().map(Vec::len), Some(16));
        assert_eq!(uri.module_path.as_deref(), Some(std::path::Path::new(MODULE)));
        let p = params(&record);
        assert_eq!(p.mechanism, "CKM_ECDSA");
        assert_eq!(p.id, hex::encode(uri.id.as_ref().unwrap()));
        assert_eq!(p.object, "alice-laptop");
        assert_eq!(p.token, "p256");
        assert!(p.generated);
        assert_eq!(
            (p.local, p.always_sensitive, p.never_extractable),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!((p.account.as_deref(), p.agent.as_deref()), (Some("ACME"), Some("alice")));
        assert!(!serde_json::to_string(&record).unwrap().contains(PIN));

        // Created locked: logged out, PIN forgotten.
        assert!(!signer.is_unlocked());
        assert!(matches!(signer.sign(b"x"), Err(BackendError::Locked)));

        signer.unlock(&pin(), false).expect("unlock");
        assert!(signer.is_unlocked());
        let debug = format!("{signer:?}");
        assert!(!debug.contains(PIN), "{debug}");
        let data = b"a COSE Sig_structure, in real life".to_vec();
        let signature = signer.sign(&data).expect("sign");
        assert_eq!(signature.len(), 64);
        let public = record.public().unwrap();
        assert_eq!(signer.public_key(), &public);
        public.verify(Algorithm::Es256, &data, &signature).expect("verifies");
        for i in 0..20 {
            let msg = format!("low-S check {i}");
            assert!(is_low_s(&signer.sign(msg.as_bytes()).unwrap()), "signers emit low-S");
        }
        command_verifies_on_a_device(&mut signer, "alice");
        openssl_verifies(hsm, &public, &data, &signature);

        // The token's own export of the public key is ours.
        let id_hex = &p.id;
        assert_eq!(
            public_key_as_pkcs11_tool_exports_it(hsm, "p256", id_hex),
            public.to_spki_pem()
        );
        // The private key as pkcs11-tool sees it: sensitive, never extractable, sign only.
        let listing = hsm.pkcs11_tool(&[
            "--token-label", "p256", "--login", "--pin", PIN, "--list-objects", "--type", "privkey",
        ]);
        let private = object_listing(&listing, "Private Key Object", "alice-laptop");
        assert!(private.contains("; EC"), "{private}");
        assert!(
            private.contains("Access:     sensitive, always sensitive, never extractable, local"),
            "{private}"
        );
        assert!(private.contains("Usage:      sign\n"), "{private}");
        assert!(private.contains(&format!("ID:         {id_hex}")), "{private}");

        signer.lock();
        assert!(!signer.is_unlocked());
        assert!(matches!(signer.sign(&data), Err(BackendError::Locked)));
        assert!(format!("{signer:?}").contains("session: false"));
    }
}

softhsm_test! {
    fn ed25519_key_made_on_the_token_signs_with_plain_eddsa(hsm) {
        hsm.init_token("ed");
        let listed = tokens();
        assert!(
            listed[0].algorithms.iter().any(|a| a == "ed25519"),
            "SoftHSM 2.6 lists CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA"
        );
        let (mut signer, record) = pkcs11::create(
            &uri(hsm, "ed", ""),
            "ACME",
            "bob",
            Algorithm::Ed25519,
            &pin(),
            None,
            NOW,
        )
        .expect("create an Ed25519 key");
        assert_eq!(record.alg, Algorithm::Ed25519);
        let p = params(&record);
        assert_eq!(p.mechanism, "CKM_EDDSA");
        // No object= and no label: a label naming the account and agent.
        assert_eq!(p.object, "keybridge ACME/bob");

        signer.unlock(&pin(), false).unwrap();
        let data = b"ed25519 over the exact bytes".to_vec();
        let signature = signer.sign(&data).unwrap();
        let public = record.public().unwrap();
        public.verify(Algorithm::Ed25519, &data, &signature).expect("verifies");
        // Ed25519 is deterministic: the token and the maths agree twice.
        assert_eq!(signer.sign(&data).unwrap(), signature);
        command_verifies_on_a_device(&mut signer, "bob");
        openssl_verifies(hsm, &public, &data, &signature);

        let listing = hsm.pkcs11_tool(&[
            "--token-label", "ed", "--login", "--pin", PIN, "--list-objects",
        ]);
        let private = object_listing(&listing, "Private Key Object", "keybridge ACME/bob");
        assert!(private.contains("; EC_EDWARDS"), "{private}");
        assert!(
            private.contains("Access:     sensitive, always sensitive, never extractable, local"),
            "{private}"
        );
        let public_listing = object_listing(&listing, "Public Key Object", "keybridge ACME/bob");
        // Which spelling of the curve SoftHSM took: the RFC 8410 OID.
        assert!(public_listing.contains("EC_PARAMS:  06032b6570"), "{public_listing}");
        let exported = public_key_as_pkcs11_tool_exports_it(hsm, "ed", &p.id);
        assert_eq!(PublicKey::from_spki_pem(&exported).unwrap(), public);
        signer.lock();
        assert!(matches!(signer.sign(&data), Err(BackendError::Locked)));
    }
}

softhsm_test! {
    fn wrong_pin_is_refused_counted_once_and_leaves_the_state_as_it_was(hsm) {
        hsm.init_token("pins");
        // A wrong PIN at create: nothing is made.
        let err = pkcs11::create(
            &uri(hsm, "pins", "object=k"), "ACME", "carol", Algorithm::Es256, &wrong_pin(), None, NOW,
        )
        .unwrap_err();
        assert!(matches!(err, BackendError::WrongSecret { retries_left: None }), "{err:?}");
        assert!(tokens()[0].keys.is_empty());

        let (mut signer, _) = pkcs11::create(
            &uri(hsm, "pins", "object=k"), "ACME", "carol", Algorithm::Es256, &pin(), None, NOW,
        )
        .unwrap();
        let flags = |hsm: &SoftHsm| {
            let token = tokens().remove(0);
            let tool = hsm.pkcs11_tool(&["-L"]);
            (token.pin_count_low, token.pin_final_try, token.pin_locked, tool)
        };
        let (low, final_try, locked, _) = flags(hsm);
        assert!(!low && !final_try && !locked);

        let err = signer.unlock(&wrong_pin(), false).unwrap_err();
        assert!(matches!(err, BackendError::WrongSecret { retries_left: None }), "{err:?}");
        assert!(!err.to_string().contains("654321"));
        assert!(!signer.is_unlocked());
        assert!(matches!(signer.sign(b"x"), Err(BackendError::Locked)));
        // SoftHSM2 keeps no counter: it raises "count low" after a wrong PIN
        // and never "final try" or "locked".
        let (low, final_try, locked, tool) = flags(hsm);
        println!("after one wrong PIN: count_low={low} final_try={final_try} locked={locked}");
        println!(
            "softhsm2-util --show-slots:\n{}",
            hsm.tool_text("softhsm2-util", &["--show-slots"])
        );
        assert!(low && !final_try && !locked, "{tool}");
        assert!(tool.contains("user PIN count low"), "{tool}");

        // The right PIN works and clears the flag.
        signer.unlock(&pin(), false).unwrap();
        assert!(!flags(hsm).0);
        let sig = signer.sign(b"y").unwrap();
        signer.public_key().verify(Algorithm::Es256, b"y", &sig).unwrap();

        // A wrong PIN while unlocked: refused, and the key stays unlocked
        // (the token was logged out by the failed attempt; the cached PIN
        // logs it in again at the next signature).
        assert!(matches!(
            signer.unlock(&wrong_pin(), true),
            Err(BackendError::WrongSecret { .. })
        ));
        assert!(signer.is_unlocked());
        let sig = signer.sign(b"z").unwrap();
        signer.public_key().verify(Algorithm::Es256, b"z", &sig).unwrap();
        assert!(!format!("{signer:?}").contains(PIN));
    }
}

softhsm_test! {
    fn a_key_made_by_pkcs11_tool_opens_by_uri_and_signs(hsm) {
        hsm.init_token("tool");
        let login = ["--token-label", "tool", "--login", "--pin", PIN];
        hsm.pkcs11_tool(&[&login[..], &["--keypairgen", "--key-type", "EC:prime256v1", "--label", "X", "--id", "01"]].concat());
        hsm.pkcs11_tool(&[&login[..], &["--keypairgen", "--key-type", "EC:edwards25519", "--label", "E", "--id", "02"]].concat());

        // No PIN: the public object is enough to make the record.
        let (_, record) = pkcs11::open_uri(&uri(hsm, "tool", "object=X"), None, Some("imported".into()), NOW)
            .expect("open by label");
        let canonical = parsed(&record.uri);
        assert_eq!(canonical.id, Some(vec![1]));
        assert_eq!(canonical.object.as_deref(), Some("X"));
        assert!(record.uri.contains("id=%01"), "{}", record.uri);
        let p = params(&record);
        assert!(!p.generated);
        assert_eq!(p.local, None, "not checked without a PIN");
        assert_eq!(
            public_key_as_pkcs11_tool_exports_it(hsm, "tool", "01"),
            record.public().unwrap().to_spki_pem()
        );

        // With the PIN: the private half is checked too.
        let (mut signer, with_pin) = pkcs11::open_uri(&uri(hsm, "tool", "id=%01"), Some(&pin()), None, NOW)
            .expect("open by id with PIN");
        assert_eq!(with_pin.uri, record.uri);
        assert_eq!(with_pin.public_key, record.public_key);
        let p = params(&with_pin);
        assert_eq!((p.local, p.always_sensitive, p.never_extractable), (Some(true), Some(true), Some(true)));
        signer.unlock(&pin(), false).unwrap();
        let sig = signer.sign(b"imported").unwrap();
        record.public().unwrap().verify(Algorithm::Es256, b"imported", &sig).unwrap();
        openssl_verifies(hsm, &record.public().unwrap(), b"imported", &sig);
        command_verifies_on_a_device(&mut signer, "dave");
        drop(signer);

        // The record re-opens through the backend dispatch (daemon start: no PIN).
        let mut reopened = keybridge_backends::open(&record, std::path::Path::new("/nonexistent")).expect("open the record");
        assert!(!reopened.is_unlocked());
        assert_eq!(reopened.public_key(), &record.public().unwrap());
        reopened.unlock(&pin(), false).unwrap();
        let sig = reopened.sign(b"again").unwrap();
        record.public().unwrap().verify(Algorithm::Es256, b"again", &sig).unwrap();

        // The Ed25519 key pkcs11-tool made ("edwards25519" curve name).
        let (mut ed, ed_record) = pkcs11::open_uri(&uri(hsm, "tool", "object=E"), Some(&pin()), None, NOW).unwrap();
        assert_eq!(ed_record.alg, Algorithm::Ed25519);
        ed.unlock(&pin(), false).unwrap();
        let sig = ed.sign(b"ed").unwrap();
        ed_record.public().unwrap().verify(Algorithm::Ed25519, b"ed", &sig).unwrap();

        // A URI matching both keys is ambiguous, and the answer lists them.
        let err = pkcs11::open_uri(&uri(hsm, "tool", ""), None, None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::Ambiguous(_)), "{err:?}");
        assert!(err.to_string().contains("2 keys match"), "{err}");
        assert!(err.to_string().contains("\"X\" id 01") && err.to_string().contains("\"E\" id 02"), "{err}");
        let err = pkcs11::open_uri(&uri(hsm, "tool", "object=nothing"), None, None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
        assert!(err.to_string().contains("no P-256 or Ed25519 public key"), "{err}");

        // The PIN from pin-source (mode 0600), and a file others can read.
        let pin_file = hsm.file("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        set_mode(&pin_file, 0o600);
        let with_source = parsed(&format!("{}&pin-source=file:{}", hsm.token_uri("tool", "object=X"), pin_file.display()));
        let (_, from_file) = pkcs11::open_uri(&with_source, None, None, NOW).expect("PIN from file");
        assert_eq!(params(&from_file).local, Some(true), "checked with the PIN from the file");
        assert_eq!(
            pkcs11::pin_from_uri(&with_source).unwrap().map(|p| p.expose_secret().to_owned()),
            Some(PIN.to_owned())
        );
        set_mode(&pin_file, 0o644);
        let err = pkcs11::open_uri(&with_source, None, None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::InvalidSecret(_)), "{err:?}");
        assert!(err.to_string().contains("chmod 600"), "{err}");

        // PINs never travel in URIs: refused when the URI is read.
        let err = format!("{}&pin-value={PIN}", hsm.token_uri("tool", "object=X"))
            .parse::<KeyUri>()
            .unwrap_err();
        assert!(err.to_string().contains("pin-source"), "{err}");
        assert!(!err.to_string().contains(PIN), "{err}");
    }
}

softhsm_test! {
    fn list_shows_tokens_and_their_usable_keys_without_login(hsm) {
        hsm.init_token("one");
        hsm.init_token("two");
        let (_, p256) = pkcs11::create(&uri(hsm, "one", "object=a"), "ACME", "a", Algorithm::Es256, &pin(), None, NOW).unwrap();
        let (_, ed) = pkcs11::create(&uri(hsm, "two", "object=b"), "ACME", "b", Algorithm::Ed25519, &pin(), None, NOW).unwrap();
        // A P-384 key is not usable by keybridge and is left out.
        hsm.pkcs11_tool(&["--token-label", "one", "--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:secp384r1", "--label", "p384", "--id", "99"]);

        let mut tokens = tokens();
        tokens.sort_by(|a, b| a.label.cmp(&b.label));
        assert_eq!(tokens.len(), 2, "{tokens:?}");
        // Both have a user PIN (pkcs11-tool says so; the listing says
        // whether it is needed and in what state it is).
        let slots = hsm.pkcs11_tool(&["-L"]);
        assert_eq!(slots.matches("token initialized, PIN initialized").count(), 2, "{slots}");
        for (token, record) in tokens.iter().zip([&p256, &ed]) {
            assert_eq!(token.backend, BackendKind::Pkcs11);
            assert!(token.slot.is_some());
            assert_eq!(token.manufacturer, "SoftHSM project");
            assert_eq!(token.model, "SoftHSM v2");
            assert!(token.login_required);
            assert!(!token.pin_locked && !token.pin_final_try);
            assert_eq!(token.algorithms, ["p256", "ed25519"]);
            assert_eq!(token.keys.len(), 1, "{token:?}");
            let key = &token.keys[0];
            assert_eq!(key.uri, record.uri);
            assert_eq!(key.kid, record.kid().unwrap().to_hex());
            assert_eq!(key.alg, record.alg.name());
            assert_eq!(key.id, params(record).id);
            let token_uri = parsed(&token.uri);
            assert_eq!(token_uri.serial.as_deref(), Some(token.serial.as_str()));
            // Each listed URI opens its key.
            let (_, opened) = pkcs11::open_uri(&parsed(&key.uri), None, None, NOW).unwrap();
            assert_eq!(opened.public_key, record.public_key);
        }
        // The JSON a client reads: the backend by name.
        let json = serde_json::to_value(&tokens[0]).unwrap();
        assert_eq!(json["backend"], "pkcs11");
        assert_eq!(json["keys"][0]["alg"], "p256");
        println!("{tokens:#?}");
    }
}

softhsm_test! {
    fn a_token_that_disappears_reports_token_absent_and_works_again_when_back(hsm) {
        let token = hsm.init_token("gone");
        let (mut signer, record) = pkcs11::create(&uri(hsm, "gone", "object=k"), "ACME", "erin", Algorithm::Es256, &pin(), None, NOW).unwrap();
        signer.unlock(&pin(), false).unwrap();
        let public = record.public().unwrap();
        let sig = signer.sign(b"before").unwrap();
        public.verify(Algorithm::Es256, b"before", &sig).unwrap();
        let mut locked = keybridge_backends::open(&record, std::path::Path::new("/nonexistent")).unwrap();

        let away = hsm.file("away");
        std::fs::rename(&token.dir, &away).unwrap();
        let err = signer.sign(b"while away").unwrap_err();
        println!("sign with the token directory moved away: {err}");
        assert!(matches!(err, BackendError::TokenAbsent(_)), "{err:?}");
        assert!(signer.is_unlocked(), "the PIN stays cached for when it comes back");
        assert!(matches!(signer.sign(b"still away"), Err(BackendError::TokenAbsent(_))));
        let err = locked.unlock(&pin(), false).unwrap_err();
        assert!(matches!(err, BackendError::TokenAbsent(_)), "{err:?}");
        // Daemon start while the token is away: the record still opens.
        let mut opened_while_away = keybridge_backends::open(&record, std::path::Path::new("/nonexistent")).expect("open while away");

        std::fs::rename(&away, &token.dir).unwrap();
        // SoftHSM2 sees the token again only after a re-initialisation,
        // which keybridge does at most once a second.
        std::thread::sleep(Duration::from_millis(1100));
        let sig = signer.sign(b"back").expect("works again once the token is back");
        public.verify(Algorithm::Es256, b"back", &sig).unwrap();
        locked.unlock(&pin(), false).unwrap();
        let sig = locked.sign(b"locked one").unwrap();
        public.verify(Algorithm::Es256, b"locked one", &sig).unwrap();
        opened_while_away.unlock(&pin(), false).unwrap();
        opened_while_away.sign(b"x").unwrap();

        // Deleted, then a new token with the same label: not our key.
        hsm.tool("softhsm2-util", &["--delete-token", "--token", "gone"]);
        let err = signer.sign(b"deleted").unwrap_err();
        assert!(matches!(err, BackendError::TokenAbsent(_)), "{err:?}");
        hsm.init_token("gone");
        std::thread::sleep(Duration::from_millis(1100));
        let err = signer.sign(b"impostor").unwrap_err();
        println!("sign after the token was re-created: {err}");
        assert!(matches!(&err, BackendError::TokenAbsent(m) if m.contains("serial")), "{err:?}");
    }
}

softhsm_test! {
    fn keys_on_one_token_stay_usable_when_another_key_locks(hsm) {
        hsm.init_token("shared");
        let (mut a, _) = pkcs11::create(&uri(hsm, "shared", "object=a"), "ACME", "a", Algorithm::Es256, &pin(), None, NOW).unwrap();
        let (mut b, _) = pkcs11::create(&uri(hsm, "shared", "object=b"), "ACME", "b", Algorithm::Ed25519, &pin(), None, NOW).unwrap();
        a.unlock(&pin(), false).unwrap();
        b.unlock(&pin(), false).unwrap();
        a.sign(b"1").unwrap();
        // Locking a logs the token out; b logs in again with its own PIN.
        a.lock();
        assert!(matches!(a.sign(b"2"), Err(BackendError::Locked)));
        let sig = b.sign(b"3").expect("b still signs");
        b.public_key().verify(Algorithm::Ed25519, b"3", &sig).unwrap();
        // Unlocking a checks the PIN even though the token is logged in.
        assert!(matches!(a.unlock(&wrong_pin(), false), Err(BackendError::WrongSecret { .. })));
        assert!(!a.is_unlocked());
        b.sign(b"4").expect("b recovers from a's failed attempt");
        a.unlock(&pin(), false).unwrap();
        a.sign(b"5").unwrap();
        b.sign(b"6").unwrap();
    }
}

softhsm_test! {
    fn many_tasks_share_one_worker_while_another_token_has_its_own(hsm) {
        hsm.init_token("busy");
        hsm.init_token("other");
        let (p256, _) = pkcs11::create(&uri(hsm, "busy", "object=k"), "ACME", "f", Algorithm::Es256, &pin(), None, NOW).unwrap();
        let (ed, _) = pkcs11::create(&uri(hsm, "other", "object=k"), "ACME", "g", Algorithm::Ed25519, &pin(), None, NOW).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let started = Instant::now();
        let count = runtime.block_on(async {
            let busy = Worker::spawn("busy".into(), Box::new(p256));
            let other = Worker::spawn("other".into(), Box::new(ed));
            busy.unlock(pin(), false).await.unwrap();
            other.unlock(pin(), false).await.unwrap();
            let mut tasks = Vec::new();
            for t in 0..8 {
                for worker in [busy.clone(), other.clone()] {
                    tasks.push(tokio::spawn(async move {
                        let mut signed = Vec::new();
                        for i in 0..50 {
                            let msg = format!("{} task {t} message {i}", worker.name()).into_bytes();
                            let sig = worker.sign(msg.clone()).await.expect("sign");
                            signed.push((worker.public_key().clone(), msg, sig));
                        }
                        signed
                    }));
                }
            }
            let mut count = 0;
            for task in tasks {
                let signed = tokio::time::timeout(Duration::from_secs(120), task)
                    .await
                    .expect("in time")
                    .unwrap();
                for (public, msg, sig) in signed {
                    public.verify(public.algorithm(), &msg, &sig).expect("verifies");
                    count += 1;
                }
            }
            // each-task: one signature, then locked.
            busy.sign_then_lock(b"last".to_vec()).await.unwrap();
            assert!(matches!(busy.sign(b"after".to_vec()).await, Err(BackendError::Locked)));
            count
        });
        assert_eq!(count, 2 * 8 * 50);
        println!("{count} signatures on two tokens in {:?}", started.elapsed());
    }
}

softhsm_test! {
    fn create_refuses_to_overwrite_and_explains_bad_references(hsm) {
        hsm.init_token("careful");
        let careful = uri(hsm, "careful", "object=k;id=%01");
        pkcs11::create(&careful, "ACME", "h", Algorithm::Es256, &pin(), None, NOW).unwrap();
        let err = pkcs11::create(&careful, "ACME", "h", Algorithm::Es256, &pin(), None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::AlreadyExists(_)), "{err:?}");
        assert!(err.to_string().contains("already has objects with id 01"), "{err}");
        let err = pkcs11::create(&uri(hsm, "careful", "object=k"), "ACME", "h", Algorithm::Es256, &pin(), None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::AlreadyExists(_)), "{err:?}");
        assert!(err.to_string().contains("already has a key labelled \"k\""), "{err}");
        assert_eq!(tokens()[0].keys.len(), 1);

        let err = pkcs11::create(&uri(hsm, "nosuch", ""), "ACME", "h", Algorithm::Es256, &pin(), None, NOW).unwrap_err();
        assert!(matches!(&err, BackendError::NotFound(m) if m.contains("nosuch")), "{err:?}");
        let err = pkcs11::create(&parsed("pkcs11:token=careful"), "ACME", "h", Algorithm::Es256, &pin(), None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::InvalidUri(_)), "{err:?}");
        assert!(err.to_string().contains(pkcs11::MODULE_ENV), "{err}");
        let err = "pkcs11:token=careful;slot-id=1".parse::<KeyUri>().unwrap_err();
        assert!(err.to_string().contains("unknown attribute"), "{err}");
        let err = pkcs11::create(&parsed(&format!("pkcs11:token=careful?module-path={MODULE}-gone")), "ACME", "h", Algorithm::Es256, &pin(), None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
    }
}

softhsm_test! {
    fn several_tokens_with_one_label_are_ambiguous_and_listed(hsm) {
        hsm.init_token("twin");
        hsm.init_token("twin");
        let serials: Vec<String> = tokens().into_iter().map(|t| t.serial).collect();
        assert_eq!(serials.len(), 2);
        let err = pkcs11::create(&uri(hsm, "twin", "object=k"), "ACME", "j", Algorithm::Es256, &pin(), None, NOW).unwrap_err();
        assert!(matches!(err, BackendError::Ambiguous(_)), "{err:?}");
        for serial in &serials {
            assert!(err.to_string().contains(serial.as_str()), "{err}");
        }
        assert!(err.to_string().contains("serial="), "{err}");
        // serial= tells them apart.
        let one = uri(hsm, "twin", &format!("serial={};object=k", serials[0]));
        pkcs11::create(&one, "ACME", "j", Algorithm::Es256, &pin(), None, NOW).expect("one twin");
    }
}

softhsm_test! {
    fn the_backend_neutral_create_takes_the_pin_from_pin_source_and_opens_existing_keys(hsm) {
        hsm.init_token("neutral");
        let pin_file = hsm.file("pin");
        std::fs::write(&pin_file, PIN).unwrap();
        set_mode(&pin_file, 0o600);
        let with_source: KeyUri = format!(
            "{}&pin-source=file:{}",
            hsm.token_uri("neutral", "object=made"),
            pin_file.display()
        )
        .parse()
        .unwrap();
        let without_source: KeyUri = hsm.token_uri("neutral", "object=made").parse().unwrap();
        assert!(!keybridge_backends::needs_secret(BackendKind::Pkcs11, Some(&with_source)));
        assert!(keybridge_backends::needs_secret(BackendKind::Pkcs11, Some(&without_source)));
        let spec = |uri: &KeyUri, existing: bool, secret: Option<SecretString>| CreateSpec {
            uri: Some(uri.clone()),
            backend: BackendKind::Pkcs11,
            account: "ACME".into(),
            agent: "kim".into(),
            alg: None,
            label: Some("made".into()),
            existing,
            secret,
            now: NOW,
            options: Default::default(),
            state_dir: None,
        };

        // No secret in the request: the PIN comes from the file. P-256 by default.
        let (mut signer, record) =
            keybridge_backends::create(spec(&with_source, false, None)).expect("create");
        assert!(!signer.is_unlocked(), "created locked");
        assert_eq!(record.alg, Algorithm::Es256);
        assert!(params(&record).generated);
        assert!(!record.uri.contains("pin-source"), "{}", record.uri);
        signer.unlock(&pin(), false).unwrap();
        let sig = signer.sign(b"neutral").unwrap();
        record.public().unwrap().verify(Algorithm::Es256, b"neutral", &sig).unwrap();

        // Generating needs a PIN: none given, none in the URI.
        let err = keybridge_backends::create(spec(&without_source, false, None)).err().unwrap();
        assert!(matches!(err, BackendError::InvalidSecret(_)), "{err:?}");

        // existing: the same key, opened, no PIN needed.
        let (_, opened) = keybridge_backends::create(spec(&without_source, true, None)).expect("existing");
        assert_eq!(opened.public_key, record.public_key);
        assert!(!params(&opened).generated);
        // With the PIN given, the private half is checked too.
        let (_, checked) =
            keybridge_backends::create(spec(&without_source, true, Some(pin()))).expect("existing, PIN");
        assert_eq!(params(&checked).never_extractable, Some(true));
    }
}

softhsm_test! {
    fn the_module_can_come_from_the_environment(hsm) with env &[(pkcs11::MODULE_ENV, MODULE)] => {
        hsm.init_token("env");
        let (mut signer, record) = pkcs11::create(&parsed("pkcs11:token=env;object=k"), "ACME", "i", Algorithm::Es256, &pin(), None, NOW).unwrap();
        // The record names the module: it does not depend on the environment.
        assert!(record.uri.ends_with(&format!("?module-path={MODULE}")), "{}", record.uri);
        signer.unlock(&pin(), false).unwrap();
        signer.sign(b"env").unwrap();
        // Listing without a location lists that module.
        let listed = keybridge_backends::list(BackendKind::Pkcs11, None).unwrap();
        assert_eq!(listed[0].keys[0].uri, record.uri);
    }
}
