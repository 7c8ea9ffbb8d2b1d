//! Model signatures: the centre signs a model package (its content hash) with an Ed25519 key, and
//! a node configured with the public key installs and activates only packages signed by it. The
//! signature covers the package hash, which covers the manifest and every file it names, so no
//! byte of a signed model can change unnoticed.
//!
//! Keys are text files: the private key a hex PKCS#8 document (owner-only, like every secret of
//! the node), the public key 64 hex digits; a signature is 128 hex digits in `<manifest>.sig`.

use std::path::Path;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::{Error, Result};

/// Signed instead of the bare hash, so that a signature made for another purpose with the same
/// key can never pass for a model's.
fn message(package_hash: &str) -> Vec<u8> {
    format!("retina-edge model package v1\n{package_hash}\n").into_bytes()
}

fn invalid(path: &Path, what: &str, message: impl std::fmt::Display) -> Error {
    Error::Access(format!("{what} {}: {message}", path.display()))
}

fn hex_file(path: &Path, what: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let text = String::from_utf8(bytes).map_err(|_| invalid(path, what, "not text"))?;
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .map_err(|_| invalid(path, what, "not hex digits"))
}

pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// Makes a key pair: writes the private key (mode 0600) and the public key.
    pub fn generate(private: &Path, public: &Path) -> Result<()> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| Error::Internal("the system random generator failed".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| Error::Internal("a generated key did not parse".into()))?;
        if private.exists() {
            return Err(invalid(private, "model signing key", "exists already; not overwritten"));
        }
        crate::config::write_atomically(private, &(data_encoding::HEXLOWER.encode(pkcs8.as_ref()) + "\n"))?;
        let public_hex = data_encoding::HEXLOWER.encode(pair.public_key().as_ref()) + "\n";
        std::fs::write(public, public_hex).map_err(|e| Error::io(format!("writing {}", public.display()), e))
    }

    pub fn load(path: &Path) -> Result<SigningKey> {
        let what = "model signing key";
        let bytes = hex_file(path, what, crate::files::read_owner_only(path, what)?)?;
        Ed25519KeyPair::from_pkcs8(&bytes)
            .map(SigningKey)
            .map_err(|_| invalid(path, what, "not an Ed25519 PKCS#8 key"))
    }

    /// The signature of a package, as the text of a `.sig` file.
    pub fn sign(&self, package_hash: &str) -> String {
        data_encoding::HEXLOWER.encode(self.0.sign(&message(package_hash)).as_ref()) + "\n"
    }
}

#[derive(Debug, Clone)]
pub struct VerifyingKey {
    key: Vec<u8>,
    /// For messages: which key refused.
    path: std::path::PathBuf,
}

impl VerifyingKey {
    pub fn load(path: &Path) -> Result<VerifyingKey> {
        let what = "model verifying key";
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))?;
        let key = hex_file(path, what, bytes)?;
        if key.len() != 32 {
            return Err(invalid(
                path,
                what,
                format!("{} bytes; an Ed25519 public key has 32", key.len()),
            ));
        }
        Ok(VerifyingKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// Checks the text of a `.sig` file (`signature_at` names it in errors).
    pub fn verify(&self, package_hash: &str, signature: &[u8], signature_at: &Path) -> Result<()> {
        let signature = hex_file(signature_at, "model signature", signature.to_vec())?;
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(&message(package_hash), &signature)
            .map_err(|_| {
                invalid(
                    signature_at,
                    "model signature",
                    format!(
                        "does not verify with {} for package {}",
                        self.path.display(),
                        &package_hash[..12]
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_for_its_package_and_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("k"), dir.path().join("k.pub"));
        SigningKey::generate(&private, &public).unwrap();
        assert!(
            SigningKey::generate(&private, &public).is_err(),
            "an existing key is not overwritten"
        );
        let key = SigningKey::load(&private).unwrap();
        let verifier = VerifyingKey::load(&public).unwrap();
        let hash = "ab".repeat(32);
        let sig = key.sign(&hash);
        let at = Path::new("m.toml.sig");
        verifier.verify(&hash, sig.as_bytes(), at).unwrap();
        assert!(verifier.verify(&"cd".repeat(32), sig.as_bytes(), at).is_err());
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(verifier.verify(&hash, &flipped, at).is_err());
        assert!(
            verifier
                .verify(&hash, b"not hex", at)
                .unwrap_err()
                .to_string()
                .contains("not hex")
        );

        let (other, other_pub) = (dir.path().join("o"), dir.path().join("o.pub"));
        SigningKey::generate(&other, &other_pub).unwrap();
        let err = VerifyingKey::load(&other_pub)
            .unwrap()
            .verify(&hash, sig.as_bytes(), at)
            .unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
    }
}
