//! What [`crate::create`] does for a PKCS#11 key: the checks on the
//! [`CreateSpec`], the PIN from the request or the URI's `pin-source`, then
//! [`keygen::create`] or, with `existing`, [`existing::open_uri`].

use super::login::pin_from_uri;
use super::signer::Pkcs11Signer;
use super::{existing, keygen};
use crate::record::KeyRecord;
use crate::uri::KeyUri;
use crate::uri::pkcs11::Pkcs11UriError;
use crate::{BackendError, CreateSpec, redact_uri};
use keybridge_protocol::Algorithm;

/// See the module docs. The default algorithm is P-256; generating needs a
/// PIN ([`BackendError::InvalidSecret`] without one), opening an existing
/// key does not.
pub(crate) fn create_from_spec(
    spec: CreateSpec,
) -> Result<(Pkcs11Signer, KeyRecord), BackendError> {
    let uri = match spec.uri {
        Some(KeyUri::Pkcs11(uri)) => uri,
        Some(other) => {
            return Err(BackendError::InvalidUri(format!(
                "{}: {}",
                redact_uri(&other.to_string()),
                Pkcs11UriError::NotPkcs11
            )));
        }
        None => {
            return Err(BackendError::InvalidUri(
                "a PKCS#11 key needs --uri 'pkcs11:token=…;object=…?module-path=…'".into(),
            ));
        }
    };
    let alg = spec.alg.unwrap_or(Algorithm::Es256);
    let pin = match spec.secret {
        Some(pin) => Some(pin),
        None => pin_from_uri(&uri)?,
    };
    if spec.existing {
        existing::open_uri(&uri, pin.as_ref(), spec.label, spec.now)
    } else {
        let pin = pin.ok_or_else(|| {
            BackendError::InvalidSecret("generating a key on a token needs its PIN".into())
        })?;
        keygen::create(
            &uri,
            &spec.account,
            &spec.agent,
            alg,
            &pin,
            spec.label,
            spec.now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::BackendKind;

    fn spec(uri: Option<&str>) -> CreateSpec {
        CreateSpec {
            uri: uri.map(|u| u.parse().unwrap()),
            backend: BackendKind::Pkcs11,
            account: "ACME".into(),
            agent: "alice".into(),
            alg: None,
            label: None,
            existing: false,
            secret: None,
            now: 0,
            options: Default::default(),
            state_dir: None,
        }
    }

    fn refusal(spec: CreateSpec) -> BackendError {
        create_from_spec(spec).expect_err("refused")
    }

    #[test]
    fn a_pkcs11_key_without_a_pkcs11_uri_is_an_invalid_uri() {
        let err = refusal(spec(None));
        assert!(
            matches!(&err, BackendError::InvalidUri(m) if m.contains("needs --uri")),
            "{err:?}"
        );
        let err = refusal(spec(Some("yubikey:serial=1;slot=9c")));
        assert!(
            matches!(&err, BackendError::InvalidUri(m) if m.contains("starts with pkcs11:")),
            "{err:?}"
        );
    }

    #[test]
    fn a_pkcs11_uri_naming_a_certificate_is_an_invalid_uri() {
        let mut cert = spec(Some("pkcs11:token=t;object=k;type=cert?module-path=/m.so"));
        cert.secret = Some("1234".into());
        let err = refusal(cert);
        assert!(
            matches!(&err, BackendError::InvalidUri(m) if m.contains("cert object, not a key")),
            "{err:?}"
        );
    }

    #[test]
    fn generating_without_a_pin_is_refused_before_any_module_is_loaded() {
        let err = refusal(spec(Some(
            "pkcs11:token=t;object=k?module-path=/nonexistent/m.so",
        )));
        assert!(
            matches!(&err, BackendError::InvalidSecret(m) if m == "generating a key on a token needs its PIN"),
            "{err:?}"
        );
    }
}
