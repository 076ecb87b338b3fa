//! The routing hash: which point on the 64-bit ring a key lands on. Part of the wire contract:
//! changing it would move every key to a different shard, so it never changes.

use xxhash_rust::xxh3::xxh3_64;

/// Returns the part of `key` that is hashed, following Redis Cluster's hash-tag rule: if the key
/// contains `{` and a later `}` with at least one byte between them, only the bytes between the
/// first `{` and the first `}` after it are hashed. Otherwise the whole key is.
///
/// So `{user42}:cart` and `{user42}:orders` share a shard, while `{}x` hashes as a whole.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}')
            && close > 0
        {
            return &rest[..close];
        }
    }
    key
}

/// The key's point on the ring: `xxh3_64` with seed 0 of its hash tag.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(hash_tag(key))
}

/// The ring point every key starting with `prefix` lands on, when the prefix fixes their hash
/// tag: it holds a `{`, then a `}` with at least one byte between. Every such key has the same
/// first `{` and first `}` after it, so the same tag, so one shard holds them all, together.
/// `None` when keys with this prefix may hash anywhere.
pub fn prefix_hash(prefix: &[u8]) -> Option<u64> {
    let tag = hash_tag(prefix);
    (tag.len() != prefix.len()).then(|| xxh3_64(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_that_closes_a_hash_tag_fixes_the_hash_of_its_keys() {
        let hash = prefix_hash(b"{user42}:").expect("a closed tag");
        for key in [&b"{user42}:cart"[..], b"{user42}:", b"{user42}:{x}y"] {
            assert_eq!(key_hash(key), hash, "{:?}", String::from_utf8_lossy(key));
        }
        assert_eq!(prefix_hash(b"{user42}"), Some(hash));
        // An open tag, an empty tag or no tag leaves the hash free.
        for free in [&b"{user42"[..], b"{}:", b"user42:", b""] {
            assert_eq!(prefix_hash(free), None, "{:?}", String::from_utf8_lossy(free));
        }
    }

    #[test]
    fn hash_tag_follows_redis_cluster_rules() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"plain", b"plain"),
            (b"{user42}:cart", b"user42"),
            (b"x{user42}y{other}", b"user42"),
            (b"{}user42", b"{}user42"),
            (b"{user42", b"{user42"),
            (b"user}42{", b"user}42{"),
            (b"a{b}c}", b"b"),
            (b"{{x}}", b"{x"),
            (b"", b""),
        ];
        for (key, tag) in cases {
            assert_eq!(
                hash_tag(key),
                *tag,
                "hash tag of {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn keys_with_the_same_tag_hash_alike() {
        assert_eq!(key_hash(b"{user42}:cart"), key_hash(b"{user42}:orders"));
        assert_eq!(key_hash(b"{user42}:cart"), key_hash(b"user42"));
        assert_ne!(key_hash(b"user42:cart"), key_hash(b"user42:orders"));
    }

    #[test]
    fn hash_is_xxh3_with_seed_zero() {
        // Golden values: the hash is part of the wire contract and must never change.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        assert_eq!(key_hash(b"hello"), xxh3_64(b"hello"));
    }
}
