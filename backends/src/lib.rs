//! keybridge signer backends.
