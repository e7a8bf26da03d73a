//! Ed25519, the one signature scheme of the agent, on one library (`ring`, already built for
//! TLS): the device signs its evidence chain; the platform signs model updates and commands.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// A secret signing key, made from its 32-byte seed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        // A 32-byte seed is always a valid Ed25519 secret; ring only refuses other lengths.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .unwrap_or_else(|e| unreachable!("a 32-byte Ed25519 seed is always accepted: {e}"));
        Self { pair }
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        public
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }
}

/// Whether `signature` is `public_key`'s signature of `message`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key).verify(message, signature).is_ok()
}

/// Hex or base64 bytes of an exact length (keys: 32, signatures: 64).
pub fn decode_key_material(text: &str, length: usize) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let bytes = if text.len() == length * 2 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|e| e.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("is neither {length} bytes of hex nor base64 ({e})"))?
    };
    if bytes.len() != length {
        return Err(format!("is {} bytes; expected {length}", bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only_and_for_its_message_only() {
        let key = SigningKey::from_seed(&[7; 32]);
        let signature = key.sign(b"record 1");
        assert!(verify(&key.public_key(), b"record 1", &signature));
        assert!(!verify(&key.public_key(), b"record 2", &signature));
        assert!(!verify(&SigningKey::from_seed(&[8; 32]).public_key(), b"record 1", &signature));
        assert!(!verify(&key.public_key(), b"record 1", &signature[..63]), "a short signature");
    }

    #[test]
    fn the_rfc_8032_test_vector_holds() {
        // RFC 8032, section 7.1, TEST 1: the empty message.
        let seed: [u8; 32] = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
        let key = SigningKey::from_seed(&seed);
        assert_eq!(hex::encode(key.public_key()), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        assert_eq!(
            hex::encode(key.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn keys_and_signatures_are_read_from_hex_or_base64() {
        let bytes: Vec<u8> = (0..32).collect();
        assert_eq!(decode_key_material(&hex::encode(&bytes), 32).unwrap(), bytes);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(decode_key_material(&b64, 32).unwrap(), bytes);
        assert!(decode_key_material(&b64, 64).unwrap_err().contains("expected 64"));
        assert!(decode_key_material("not a key!", 32).is_err());
    }
}
