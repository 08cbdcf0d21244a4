//! The tpm2-pkcs11 fixture itself: a token it makes generates a P-256 key
//! and signs with pkcs11-tool, labels with spaces, `#` and non-ASCII
//! survive, a second token gets a slot of its own, two fixtures at once
//! are separate TPMs and stores, wrong PINs lock the TPM out until
//! [`Tpm2Pkcs11::clear_lockout`], and a test can load the module in its own
//! process ([`Tpm2Pkcs11::run_isolated`]). The last tests pin what
//! tpm2-pkcs11 1.9.0 does with the key templates the PKCS#11 backend uses,
//! which the backend has to live with.

use keybridge_tests::tpm2_pkcs11::{self, MODULE, Tpm2Pkcs11};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::pkcs8::DecodePublicKey as _;
use sha2::{Digest as _, Sha256};

const SO_PIN: &str = "so-pin-12345678";
const USER_PIN: &str = "user-pin-1234";
/// A label with everything a label may have: spaces, `#`, non-ASCII (30
/// bytes of UTF-8).
const ODD_LABEL: &str = "keybridge #1 – über Tökén";

/// Generates a P-256 key `id`/`label` on the token `token` with
/// pkcs11-tool.
fn keypairgen(p11: &Tpm2Pkcs11, token: &str, id: &str, label: &str, pin: &str) {
    p11.pkcs11_tool_ok(&[
        "--token-label",
        token,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        id,
        "--label",
        label,
        "--login",
        "--pin",
        pin,
    ]);
}

/// The public key `id` of token `token`, read with pkcs11-tool.
fn public_key(p11: &Tpm2Pkcs11, token: &str, id: &str) -> p256::ecdsa::VerifyingKey {
    let file = format!("pub-{id}.der");
    p11.pkcs11_tool_ok(&[
        "--token-label",
        token,
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        id,
        "-o",
        &file,
    ]);
    let der = std::fs::read(p11.work_dir().join(file)).unwrap();
    p256::ecdsa::VerifyingKey::from_public_key_der(&der).expect("a P-256 public key")
}

/// Signs SHA-256(`data`) with the key `id` of `token` (`--mechanism
/// ECDSA`, the hash made here, as keybridge does) and returns the digest
/// and the raw r‖s signature.
fn sign(p11: &Tpm2Pkcs11, token: &str, id: &str, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let digest = Sha256::digest(data).to_vec();
    std::fs::write(p11.work_dir().join("digest"), &digest).unwrap();
    p11.pkcs11_tool_ok(&[
        "--token-label",
        token,
        "--sign",
        "--mechanism",
        "ECDSA",
        "--id",
        id,
        "--login",
        "--pin",
        USER_PIN,
        "-i",
        "digest",
        "-o",
        "signature",
    ]);
    let signature = std::fs::read(p11.work_dir().join("signature")).unwrap();
    (digest, signature)
}

/// Asserts `signature` (r‖s) is `key`'s over `digest`.
fn assert_verifies(key: &p256::ecdsa::VerifyingKey, digest: &[u8], signature: &[u8]) {
    let signature = p256::ecdsa::Signature::from_slice(signature).expect("64 bytes of r‖s");
    key.verify_prehash(digest, &signature)
        .expect("the token's signature verifies with its public key");
}

#[test]
fn a_token_generates_a_p256_key_that_signs_ecdsa_and_lists_its_objects() {
    let Some((p11, token)) = Tpm2Pkcs11::with_token(ODD_LABEL, SO_PIN, USER_PIN) else {
        return;
    };
    assert_eq!(token.label, ODD_LABEL);
    let slots = p11.pkcs11_tool_ok(&["--list-token-slots"]);
    assert!(
        slots.contains(&format!("token label        : {ODD_LABEL}")),
        "{slots}"
    );
    assert!(
        slots.contains("login required, rng, token initialized, PIN initialized"),
        "{slots}"
    );

    keypairgen(&p11, ODD_LABEL, "01", "k", USER_PIN);
    let key = public_key(&p11, ODD_LABEL, "01");
    let (digest, signature) = sign(&p11, ODD_LABEL, "01", b"remote-control dev-1");
    assert_eq!(signature.len(), 64);
    assert_verifies(&key, &digest, &signature);

    let objects = p11.pkcs11_tool_ok(&[
        "--token-label",
        ODD_LABEL,
        "--list-objects",
        "--login",
        "--pin",
        USER_PIN,
    ]);
    assert!(
        objects.contains("Public Key Object; EC  EC_POINT 256 bits"),
        "{objects}"
    );
    assert!(objects.contains("Private Key Object; EC"), "{objects}");
    assert_eq!(objects.matches("label:      k\n").count(), 2, "{objects}");
    assert_eq!(objects.matches("ID:         01\n").count(), 2, "{objects}");
    assert!(
        objects.contains("Access:     sensitive, always sensitive, never extractable, local"),
        "{objects}"
    );
    assert!(objects.contains("Allowed mechanisms: ECDSA,"), "{objects}");
    // Without a login only the public key shows.
    let public_only = p11.pkcs11_tool_ok(&["--token-label", ODD_LABEL, "--list-objects"]);
    assert!(public_only.contains("Public Key Object"), "{public_only}");
    assert!(!public_only.contains("Private Key Object"), "{public_only}");
}

#[test]
fn a_second_token_gets_its_own_slot_and_objects() {
    let Some((p11, first)) = Tpm2Pkcs11::with_token("first", SO_PIN, USER_PIN) else {
        return;
    };
    let second = p11.add_token("second # two", "another so pin", USER_PIN);
    assert_eq!(second.so_pin, "another so pin");
    let slots = p11.pkcs11_tool_ok(&["--list-token-slots"]);
    assert!(slots.contains("token label        : first\n"), "{slots}");
    assert!(
        slots.contains("token label        : second # two\n"),
        "{slots}"
    );

    keypairgen(&p11, &second.label, "02", "on second", &second.user_pin);
    let listed = |token: &str| {
        p11.pkcs11_tool_ok(&[
            "--token-label",
            token,
            "--list-objects",
            "--login",
            "--pin",
            USER_PIN,
        ])
    };
    assert!(listed(&second.label).contains("label:      on second"));
    assert!(!listed(&first.label).contains("Key Object"));

    // A label taken already is refused.
    let again = p11.ptool(&[
        "addtoken",
        &format!("--pid={}", p11.primary_id()),
        "--label=first",
        "--sopin=x",
        "--userpin=y",
    ]);
    assert!(!again.status.success());
}

#[test]
fn two_fixtures_at_once_are_different_tpms_buses_and_stores() {
    let (Some((a, _)), Some((b, _))) = (
        Tpm2Pkcs11::with_token("same label", SO_PIN, USER_PIN),
        Tpm2Pkcs11::with_token("same label", SO_PIN, USER_PIN),
    ) else {
        return;
    };
    let var = |p11: &Tpm2Pkcs11, name: &str| {
        p11.env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    for name in ["DBUS_SESSION_BUS_ADDRESS", "TPM2_PKCS11_STORE"] {
        assert_ne!(var(&a, name), var(&b, name), "{name}");
    }
    for p11 in [&a, &b] {
        assert_eq!(var(p11, "TPM2_PKCS11_TCTI"), tpm2_pkcs11::TCTI);
        assert_eq!(var(p11, "TPM2TOOLS_TCTI"), tpm2_pkcs11::TCTI);
    }
    assert_ne!(
        a.swtpm().map(|t| t.port()),
        b.swtpm().map(|t| t.port()),
        "each has its own swtpm"
    );

    // Both work at the same time, each on its own TPM.
    std::thread::scope(|s| {
        s.spawn(|| keypairgen(&a, "same label", "0a", "in a", USER_PIN));
        s.spawn(|| keypairgen(&b, "same label", "0b", "in b", USER_PIN));
    });
    let key_a = public_key(&a, "same label", "0a");
    let key_b = public_key(&b, "same label", "0b");
    assert_ne!(key_a, key_b);
    let (digest, signature) = sign(&a, "same label", "0a", b"for a");
    assert_verifies(&key_a, &digest, &signature);
    // b's store has only b's key.
    let in_b = b.pkcs11_tool_ok(&["--list-objects"]);
    assert!(in_b.contains("label:      in b"), "{in_b}");
    assert!(!in_b.contains("label:      in a"), "{in_b}");
    // Its abrmd reaches its own TPM: a persistent handle made in a is not in b.
    a.tpm2_ok("createprimary", &["-C", "o", "-c", "prim.ctx"]);
    a.tpm2_ok("evictcontrol", &["-C", "o", "-c", "prim.ctx", "0x81000101"]);
    assert!(
        a.tpm2_ok("getcap", &["handles-persistent"])
            .contains("0x81000101")
    );
    assert!(
        !b.tpm2_ok("getcap", &["handles-persistent"])
            .contains("0x81000101")
    );
}

#[test]
fn wrong_pins_count_against_the_tpm_until_it_locks_out_and_clear_lockout_ends_it() {
    let Some((p11, token)) = Tpm2Pkcs11::with_token("pins", SO_PIN, USER_PIN) else {
        return;
    };
    let login = |pin: &str| {
        let out = p11.pkcs11_tool(&[
            "--token-label",
            &token.label,
            "--list-objects",
            "--login",
            "--pin",
            pin,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };
    // swtpm locks out after 3 failures.
    for _ in 0..3 {
        let (ok, stderr) = login("wrong");
        assert!(!ok);
        assert!(stderr.contains("CKR_PIN_INCORRECT"), "{stderr}");
    }
    // The flags never tell: no "user PIN count low" / "locked".
    let slots = p11.pkcs11_tool_ok(&["--list-token-slots"]);
    assert!(
        slots.contains(
            "token flags        : login required, rng, token initialized, PIN initialized\n"
        ),
        "{slots}"
    );
    let (ok, stderr) = login(USER_PIN);
    assert!(!ok, "the right PIN during a lockout");
    assert!(stderr.contains("CKR_PIN_LOCKED"), "{stderr}");

    p11.clear_lockout();
    p11.set_lockout(10, 1000, 1000);
    let (ok, stderr) = login(USER_PIN);
    assert!(ok, "{stderr}");
}

#[test]
fn token_uris_percent_encode_the_label() {
    let Some(p11) = Tpm2Pkcs11::start() else {
        return;
    };
    assert_eq!(
        p11.token_uri("a #1 ü", "object=k"),
        format!("pkcs11:token=a%20%231%20%C3%BC;object=k?module-path={MODULE}")
    );
    assert_eq!(
        p11.token_uri("t", ""),
        format!("pkcs11:token=t?module-path={MODULE}")
    );
    assert_eq!(tpm2_pkcs11::module(), std::path::Path::new(MODULE));
}

/// What tpm2-pkcs11 (1.9.0) does with PKCS#11 key templates, through
/// cryptoki in this process: the backend's own templates, the smallest
/// change that makes them work, and the refusals the backend has to map.
mod templates {
    use super::*;
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
    use cryptoki::session::{Session, UserType};
    use cryptoki::types::AuthPin;

    /// DER of the P-256 OID, as `CKA_EC_PARAMS`.
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

    /// The public template of keygen.rs's `generate`.
    fn backend_public(id: &[u8]) -> Vec<Attribute> {
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Label(b"tpl".to_vec()),
        ]
    }

    /// The private template of keygen.rs's `generate`.
    fn backend_private(id: &[u8]) -> Vec<Attribute> {
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Id(id.to_vec()),
            Attribute::Label(b"tpl".to_vec()),
        ]
    }

    /// `template` without the attributes of types `drop`, then with `add`.
    fn changed(
        template: Vec<Attribute>,
        drop: &[AttributeType],
        add: &[Attribute],
    ) -> Vec<Attribute> {
        let types: Vec<AttributeType> = add.iter().map(Attribute::attribute_type).collect();
        template
            .into_iter()
            .filter(|a| !drop.contains(&a.attribute_type()) && !types.contains(&a.attribute_type()))
            .chain(add.iter().cloned())
            .collect()
    }

    fn rv(e: &Error) -> Option<RvError> {
        match e {
            Error::Pkcs11(rv, _) => Some(*rv),
            _ => None,
        }
    }

    fn generate(
        session: &Session,
        public: &[Attribute],
        private: &[Attribute],
    ) -> Result<(ObjectHandle, ObjectHandle), Option<RvError>> {
        session
            .generate_key_pair(&Mechanism::EccKeyPairGen, public, private)
            .map_err(|e| rv(&e))
    }

    fn flag(session: &Session, key: ObjectHandle, t: AttributeType) -> bool {
        match session.get_attributes(key, &[t]).unwrap().as_slice() {
            [
                Attribute::Sensitive(v)
                | Attribute::Extractable(v)
                | Attribute::AlwaysSensitive(v)
                | Attribute::NeverExtractable(v)
                | Attribute::Private(v)
                | Attribute::Local(v)
                | Attribute::Sign(v)
                | Attribute::Decrypt(v)
                | Attribute::Verify(v)
                | Attribute::Encrypt(v)
                | Attribute::AlwaysAuthenticate(v),
            ] => *v,
            other => panic!("{t:?}: {other:?}"),
        }
    }

    fn open() -> (Pkcs11, Session) {
        let ctx = Pkcs11::new(MODULE).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        let slot = ctx.get_slots_with_token().unwrap()[0];
        let session = ctx.open_rw_session(slot).unwrap();
        session
            .login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned())))
            .unwrap();
        (ctx, session)
    }

    /// The backend's templates fail with CKR_GENERAL_ERROR: tpm2-pkcs11
    /// makes CKA_VERIFY the TPM's `decrypt` bit, which the private
    /// template's Decrypt(false) clears, and then finds the public
    /// template's Verify(true) contradicting it ("User specified and TPM
    /// specified attr mismatch: 0x10a"); Encrypt(false) likewise contradicts
    /// the `sign` bit (0x104). Without those two public attributes the key
    /// is made, sign-only in the TPM, and the private key is everything the
    /// backend checks.
    #[test]
    fn the_backend_templates_need_verify_and_encrypt_out_of_the_public_one() {
        Tpm2Pkcs11::run_isolated(
            "templates::the_backend_templates_need_verify_and_encrypt_out_of_the_public_one",
            |p11| {
                p11.add_token("templates", SO_PIN, USER_PIN);
                let (_ctx, s) = open();
                use AttributeType as T;

                let err = generate(&s, &backend_public(b"a"), &backend_private(b"a"));
                assert_eq!(
                    err,
                    Err(Some(RvError::GeneralError)),
                    "as the backend has it"
                );
                // Either attribute alone still fails.
                for drop in [T::Verify, T::Encrypt] {
                    let public = changed(backend_public(b"b"), &[drop], &[]);
                    let err = generate(&s, &public, &backend_private(b"b"));
                    assert_eq!(err, Err(Some(RvError::GeneralError)), "without {drop:?}");
                }
                // Refused values: a public key that encrypts, a private key
                // that decrypts (with the rest as the backend has it).
                let public = changed(backend_public(b"c"), &[], &[Attribute::Encrypt(true)]);
                let err = generate(&s, &public, &backend_private(b"c"));
                assert_eq!(
                    err,
                    Err(Some(RvError::GeneralError)),
                    "public Encrypt(true)"
                );
                let private = changed(backend_private(b"d"), &[], &[Attribute::Decrypt(true)]);
                let err = generate(&s, &backend_public(b"d"), &private);
                assert_eq!(
                    err,
                    Err(Some(RvError::GeneralError)),
                    "private Decrypt(true)"
                );
                // Values the module checks up front: CKR_ATTRIBUTE_VALUE_INVALID.
                let fixed = changed(backend_public(b"e"), &[T::Verify, T::Encrypt], &[]);
                for bad in [Attribute::SignRecover(true), Attribute::Token(false)] {
                    let private = changed(backend_private(b"e"), &[], std::slice::from_ref(&bad));
                    let err = generate(&s, &fixed, &private);
                    assert_eq!(err, Err(Some(RvError::AttributeValueInvalid)), "{bad:?}");
                }

                // The fix: no Verify and no Encrypt in the public template.
                let public = changed(backend_public(b"ok"), &[T::Verify, T::Encrypt], &[]);
                let (pubkey, key) =
                    generate(&s, &public, &backend_private(b"ok")).expect("generated");
                for (t, want) in [
                    (T::Private, true),
                    (T::Sensitive, true),
                    (T::Extractable, false),
                    (T::AlwaysSensitive, true),
                    (T::NeverExtractable, true),
                    (T::Local, true),
                    (T::Sign, true),
                    (T::Decrypt, false),
                    (T::AlwaysAuthenticate, false),
                ] {
                    assert_eq!(flag(&s, key, t), want, "private {t:?}");
                }
                // The module's view of the public key: what the TPM key can
                // do under its rule (sign, so "encrypt"; not decrypt, so not
                // "verify").
                assert!(!flag(&s, pubkey, T::Verify));
                assert!(flag(&s, pubkey, T::Encrypt));
                assert!(!flag(&s, pubkey, T::Private));

                // CKM_ECDSA signs a hash made outside; its length picks the
                // TPM's hash (20, 32, 48 or 64 bytes), any other length is
                // CKR_GENERAL_ERROR.
                for len in [20, 32, 48, 64] {
                    let sig = s.sign(&Mechanism::Ecdsa, key, &vec![7; len]).unwrap();
                    assert_eq!(sig.len(), 64, "r‖s for a {len}-byte hash");
                }
                let odd = s.sign(&Mechanism::Ecdsa, key, &[7; 33]).map_err(|e| rv(&e));
                assert_eq!(odd, Err(Some(RvError::GeneralError)));
                let digest = Sha256::digest(b"data").to_vec();
                let sig = s.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                s.verify(&Mechanism::Ecdsa, pubkey, &digest, &sig)
                    .expect("C_Verify with the public key");
            },
        );
    }

    /// The token flags cryptoki sees: login required, initialized, and no
    /// PIN counter flag ever, even after a wrong PIN.
    #[test]
    fn token_flags_have_no_pin_counters() {
        Tpm2Pkcs11::run_isolated("templates::token_flags_have_no_pin_counters", |p11| {
            p11.add_token("flags", SO_PIN, USER_PIN);
            let ctx = Pkcs11::new(MODULE).unwrap();
            ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .unwrap();
            let slot = ctx.get_slots_with_token().unwrap()[0];
            let session = ctx.open_ro_session(slot).unwrap();
            let wrong = session
                .login(UserType::User, Some(&AuthPin::from("wrong".to_owned())))
                .map_err(|e| rv(&e));
            assert_eq!(wrong, Err(Some(RvError::PinIncorrect)));
            let info = ctx.get_token_info(slot).unwrap();
            assert_eq!(info.label(), "flags");
            assert!(info.login_required());
            assert!(info.token_initialized());
            assert!(info.user_pin_initialized());
            assert!(info.rng());
            assert!(!info.user_pin_count_low());
            assert!(!info.user_pin_final_try());
            assert!(!info.user_pin_locked());
            assert!(!info.protected_authentication_path());
        });
    }
}
