//! RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing, §2.1.
//!
//! Leaf hash `SHA-256(0x00 || entry)`, interior node
//! `SHA-256(0x01 || left || right)`; a tree of `n` leaves splits at the
//! largest power of two below `n`. [`Frontier`] computes tree heads
//! incrementally (one hash per appended leaf, amortised), which is what
//! `pds audit verify` uses to check every checkpoint in one pass.

use sha2::{Digest, Sha256};

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The hash of an empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The roots of the perfect subtrees covering the leaves seen so far
/// (largest first): enough to compute the tree head of any prefix size
/// reached by appending.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    /// (height, hash) of each perfect subtree, largest first.
    nodes: Vec<(u32, Hash)>,
    size: u64,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, last)) = self.nodes.last() {
            if h != node.0 {
                break;
            }
            self.nodes.pop();
            node = (h + 1, node_hash(&last, &node.1));
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The tree head (MTH) of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        // For a non-power-of-two size, MTH's left part is the largest
        // perfect subtree and the right part recurses: folding from the
        // smallest subtree upwards gives exactly that.
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// MTH over `leaves` by the recursive definition of RFC 9162 §2.1.1.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly below `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Inclusion proof (audit path) of leaf `index` in the tree of `leaves`,
/// RFC 9162 §2.1.3.1.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut p = inclusion_proof(&leaves[..k], index);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(&leaves[k..], index - k);
        p.push(root(&leaves[..k]));
        p
    }
}

/// Verifies an inclusion proof, RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    expected_root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == expected_root
}

/// Consistency proof between the tree of the first `m` leaves and the tree
/// of all `leaves`, RFC 9162 §2.1.4.1.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![root(leaves)]
        };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &leaves[..k], complete);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = subproof(m - k, &leaves[k..], false);
        p.push(root(&leaves[..k]));
        p
    }
}

/// Verifies a consistency proof, RFC 9162 §2.1.4.2.
pub fn verify_consistency(
    m: u64,
    n: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if m == n {
        return proof.is_empty() && first_root == second_root;
    }
    if m == 0 || m > n || proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if m.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut fnode, mut snode) = (m - 1, n - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &fr == first_root && &sr == second_root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of the Certificate Transparency reference tests
    /// (RFC 6962 / 9162 share the hashing).
    fn vector_leaves() -> Vec<Hash> {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        inputs.iter().map(|i| leaf_hash(i)).collect()
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn reference_tree_heads() {
        let leaves = vector_leaves();
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut f = Frontier::new();
        for (i, l) in leaves.iter().enumerate() {
            f.push(*l);
            assert_eq!(hex::encode(f.root()), ROOTS[i], "frontier, size {}", i + 1);
            assert_eq!(
                hex::encode(root(&leaves[..=i])),
                ROOTS[i],
                "recursive, size {}",
                i + 1
            );
        }
    }

    #[test]
    fn frontier_matches_definition_for_many_sizes() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::new();
        for (i, l) in leaves.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), root(&leaves[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_detect_changes() {
        let leaves: Vec<Hash> = (0u32..37).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            let r = root(&leaves[..n]);
            for i in 0..n {
                let p = inclusion_proof(&leaves[..n], i);
                assert!(
                    verify_inclusion(i as u64, n as u64, &leaves[i], &p, &r),
                    "{i} in {n}"
                );
                let other = leaf_hash(b"not in the log");
                assert!(!verify_inclusion(i as u64, n as u64, &other, &p, &r));
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_detect_rewrites() {
        let leaves: Vec<Hash> = (0u32..33).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            for m in 1..=n {
                let p = consistency_proof(&leaves[..n], m);
                let (r1, r2) = (root(&leaves[..m]), root(&leaves[..n]));
                assert!(
                    verify_consistency(m as u64, n as u64, &r1, &r2, &p),
                    "{m} -> {n}"
                );
                if m < n {
                    // A rewritten first tree is not a prefix any more.
                    let mut forged = leaves[..m].to_vec();
                    forged[m - 1] = leaf_hash(b"rewritten");
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &root(&forged),
                        &r2,
                        &p
                    ));
                }
            }
        }
    }
}
