"""RFC 9162 (RFC 6962) Merkle tree hashing, proofs and their verification.

Pure functions over 32-byte SHA-256 hashes. Proofs are computed from a `HashReader`, the
hash of any *perfect* subtree (2**h leaves starting at a multiple of 2**h): every node
an RFC 9162 proof names is a run of such subtrees, so a store that keeps only perfect
subtrees (C2SP tiles, Go's sumdb "stored hashes") can prove anything with O(log n) reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

HashReader = Callable[[int, int], bytes]
"""read(h, i): the hash of the perfect subtree over leaves [i * 2**h, (i + 1) * 2**h)."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The k of RFC 9162 2.1.1: the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(start: int, end: int, read: HashReader) -> bytes:
    """MTH(D[start:end]) for a node of an RFC 9162 tree (start aligned to the range's size).

    Greedy decomposition into perfect subtrees, folded from the right: MTH splits at the
    largest power of two below n, so the right fold rebuilds exactly the RFC nodes.
    """
    parts: list[bytes] = []
    while start < end:
        height = (end - start).bit_length() - 1
        if start:
            height = min(height, (start & -start).bit_length() - 1)
        parts.append(read(height, start >> height))
        start += 1 << height
    result = parts.pop()
    while parts:
        result = node_hash(parts.pop(), result)
    return result


def root(size: int, read: HashReader) -> bytes:
    if size < 0:
        raise ValueError(f"negative tree size {size}")
    if size == 0:
        return EMPTY_ROOT
    return _range_hash(0, size, read)


def inclusion_proof(index: int, size: int, read: HashReader) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 2.1.3.1, leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"no leaf {index} in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    # Top-down, so the path comes out root side first; the RFC lists it leaf side first.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_range_hash(lo + k, hi, read))
            hi = lo + k
        else:
            path.append(_range_hash(lo, lo + k, read))
            lo += k
    path.reverse()
    return path


def consistency_proof(old: int, new: int, read: HashReader) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 9162 2.1.4.1 (SUBPROOF with b = true)."""
    if not 0 < old <= new:
        # A tree of size 0 commits to nothing: there is no proof to give, and
        # verify_consistency refuses one (as transparency-dev/merkle does).
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    proof: list[bytes] = []
    lo, hi = 0, new
    known = True  # b of the RFC: whether the old root is the node we stand on
    while old - lo != hi - lo:
        k = _split(hi - lo)
        if old - lo <= k:
            proof.append(_range_hash(lo + k, hi, read))
            hi = lo + k
        else:
            proof.append(_range_hash(lo, lo + k, read))
            lo += k
            known = False
    if not known:
        proof.append(_range_hash(lo, hi, read))
    proof.reverse()
    return proof


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: whether `leaf` (a leaf hash) is entry `index` of the tree `root`."""
    if not (_is_size(index) and _is_size(size) and _is_hash(leaf) and _is_hash(root)):
        return False
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        # sn reaching 0 first means the proof is longer than the tree is high.
        if sn == 0 or not _is_hash(p):
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: whether the tree `new_root` extends the tree `old_root`."""
    if not (_is_size(old_size) and _is_size(new_size) and _is_hash(old_root)):
        return False
    if not _is_hash(new_root) or not all(_is_hash(p) for p in proof):
        return False
    if old_size == 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if len(proof) == 0:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
