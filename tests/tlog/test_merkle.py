"""RFC 9162 Merkle hashing and proofs, checked against transparency-dev/merkle's published
values (tests/tlog/vectors.json names the repository, files and commit) and against the
RFC's recursive definitions written out naively below.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlog import merkle
from tlog.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors.json").read_text())
TREE = VECTORS["rfc6962_tree"]
LEAF_INPUTS = [bytes.fromhex(x) for x in TREE["leaf_inputs"]]
NODE_HASHES = [[bytes.fromhex(x) for x in level] for level in TREE["node_hashes"]]
ROOT_HASHES = [bytes.fromhex(x) for x in TREE["root_hashes"]]

# transparency-dev accepts roots of any length when both sizes are equal and the roots are
# the same bytes; we refuse anything that is not a SHA-256 hash.
STRICTER_THAN_TRANSPARENCY_DEV = {"additional/sizes-are-equal-one-and-proof-is-empty.json"}


def _hexes(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def reference_mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 2.1.1 defines it, over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(reference_mth(leaves[:k]), reference_mth(leaves[k:]))


class ReferenceTree:
    """Leaf hashes in memory; MTH of any range, memoised, from the RFC's definition."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.reads = 0

    @functools.cache  # noqa: B019 - one short-lived tree per test
    def mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self.leaves[start]
        k = 1 << ((n - 1).bit_length() - 1)
        return node_hash(self.mth(start, start + k), self.mth(start + k, end))

    def read(self, height: int, index: int) -> bytes:
        """A merkle.HashReader that refuses anything but a perfect subtree inside the tree."""
        self.reads += 1
        start, end = index << height, (index + 1) << height
        assert end <= len(self.leaves), f"read ({height}, {index}) beyond {len(self.leaves)}"
        return self.mth(start, end)


def tree_of(size: int) -> ReferenceTree:
    return ReferenceTree([leaf_hash(i.to_bytes(4, "big")) for i in range(size)])


def vector_reader(height: int, index: int) -> bytes:
    return NODE_HASHES[height][index]


# -- hashing -------------------------------------------------------------------------------


def test_the_empty_tree_hashes_to_sha256_of_nothing() -> None:
    assert ROOT_HASHES[0] == EMPTY_ROOT
    assert root(0, vector_reader) == EMPTY_ROOT


def test_leaves_and_nodes_hash_as_rfc6962_says() -> None:
    assert [leaf_hash(x) for x in LEAF_INPUTS] == NODE_HASHES[0]
    for height in range(1, len(NODE_HASHES)):
        below = NODE_HASHES[height - 1]
        pairs = [node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)]
        assert pairs == NODE_HASHES[height]


@pytest.mark.parametrize("size", range(len(ROOT_HASHES)))
def test_root_of_every_prefix_is_the_published_one(size: int) -> None:
    assert root(size, vector_reader) == ROOT_HASHES[size]
    assert reference_mth(NODE_HASHES[0][:size]) == ROOT_HASHES[size]


# -- proofs against published values ---------------------------------------------------------


@pytest.mark.parametrize(
    "case", VECTORS["inclusion_proofs"]["cases"], ids=lambda c: f"{c['index']}:{c['size']}"
)
def test_inclusion_proof_is_the_published_one(case: dict[str, Any]) -> None:
    proof = inclusion_proof(case["index"], case["size"], vector_reader)
    assert proof == _hexes(case["proof"])
    leaf = NODE_HASHES[0][case["index"]]
    assert verify_inclusion(leaf, case["index"], case["size"], proof, ROOT_HASHES[case["size"]])


@pytest.mark.parametrize(
    "case", VECTORS["consistency_proofs"]["cases"], ids=lambda c: f"{c['old']}:{c['new']}"
)
def test_consistency_proof_is_the_published_one(case: dict[str, Any]) -> None:
    old, new = case["old"], case["new"]
    proof = consistency_proof(old, new, vector_reader)
    assert proof == _hexes(case["proof"])
    assert verify_consistency(old, new, ROOT_HASHES[old], ROOT_HASHES[new], proof)


@pytest.mark.parametrize("case", VECTORS["inclusion_probes"]["cases"], ids=lambda c: c["file"])
def test_inclusion_verdict_is_transparency_devs(case: dict[str, Any]) -> None:
    verdict = verify_inclusion(
        bytes.fromhex(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        _hexes(case["proof"]),
        bytes.fromhex(case["root"]),
    )
    assert verdict is case["valid"], case["desc"]


@pytest.mark.parametrize("case", VECTORS["consistency_probes"]["cases"], ids=lambda c: c["file"])
def test_consistency_verdict_is_transparency_devs(case: dict[str, Any]) -> None:
    verdict = verify_consistency(
        case["size1"],
        case["size2"],
        bytes.fromhex(case["root1"]),
        bytes.fromhex(case["root2"]),
        _hexes(case["proof"]),
    )
    expected = case["valid"] and case["file"] not in STRICTER_THAN_TRANSPARENCY_DEV
    assert verdict is expected, case["desc"]


def test_the_one_verdict_stricter_than_transparency_dev_is_about_hash_lengths() -> None:
    (case,) = [
        c
        for c in VECTORS["consistency_probes"]["cases"]
        if c["file"] in STRICTER_THAN_TRANSPARENCY_DEV
    ]
    assert case["valid"]
    assert len(bytes.fromhex(case["root1"])) != merkle.HASH_SIZE
    assert verify_consistency(1, 1, ROOT_HASHES[1], ROOT_HASHES[1], [])


# -- proofs of any tree ---------------------------------------------------------------------


@st.composite
def sized_index(draw: st.DrawFn, low: int = 1) -> tuple[int, int]:
    size = draw(st.integers(min_value=low, max_value=3000))
    return size, draw(st.integers(min_value=0, max_value=size - 1))


def _flip(proof: list[bytes], at: int) -> list[bytes]:
    changed = list(proof)
    changed[at] = bytes([changed[at][0] ^ 1]) + changed[at][1:]
    return changed


@settings(max_examples=150, deadline=None)
@given(sized_index(), st.data())
def test_an_inclusion_proof_proves_its_leaf_and_nothing_else(
    size_index: tuple[int, int], data: st.DataObject
) -> None:
    size, index = size_index
    tree = tree_of(size)
    top = tree.mth(0, size)
    leaf = tree.leaves[index]
    proof = inclusion_proof(index, size, tree.read)
    assert root(size, tree.read) == top == reference_mth(tree.leaves)
    assert verify_inclusion(leaf, index, size, proof, top)

    assert not verify_inclusion(tree_of(size + 1).leaves[size], index, size, proof, top)
    if proof:
        assert not verify_inclusion(
            leaf, index, size, _flip(proof, data.draw(st.integers(0, len(proof) - 1))), top
        )
        assert not verify_inclusion(leaf, index, size, proof[:-1], top)
    assert not verify_inclusion(leaf, index, size, [*proof, top], top)
    assert not verify_inclusion(leaf, index, size, proof, _flip([top], 0)[0])
    other = data.draw(st.integers(0, size).filter(lambda i: i != index))
    assert not verify_inclusion(leaf, other, size, proof, top)
    # The size is bound by the signed checkpoint, not by the proof: a tree whose path to
    # the leaf has the same shape takes the same proof. A path of another length does not.
    other_size = data.draw(st.integers(index + 1, 2 * size + 1).filter(lambda s: s != size))
    if len(inclusion_proof(index, other_size, tree_of(other_size).read)) != len(proof):
        assert not verify_inclusion(leaf, index, other_size, proof, top)


@settings(max_examples=150, deadline=None)
@given(sized_index(low=2), st.data())
def test_a_consistency_proof_proves_an_append_only_extension(
    size_index: tuple[int, int], data: st.DataObject
) -> None:
    new, old = size_index
    old = max(old, 1)
    tree = tree_of(new)
    old_root, new_root = tree.mth(0, old), tree.mth(0, new)
    proof = consistency_proof(old, new, tree.read)
    assert verify_consistency(old, new, old_root, new_root, proof)
    assert consistency_proof(new, new, tree.read) == []
    assert verify_consistency(new, new, new_root, new_root, [])

    if proof:
        assert not verify_consistency(
            old, new, old_root, new_root, _flip(proof, data.draw(st.integers(0, len(proof) - 1)))
        )
        assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
    assert not verify_consistency(old, new, old_root, new_root, [*proof, new_root])
    assert not verify_consistency(old, new, _flip([old_root], 0)[0], new_root, proof)
    assert not verify_consistency(old, new, old_root, _flip([new_root], 0)[0], proof)
    assert not verify_consistency(new, old, new_root, old_root, proof)
    # A log that rewrote entry 0 after the old checkpoint cannot prove consistency.
    forked = ReferenceTree([leaf_hash(b"rewritten"), *tree.leaves[1:]])
    forked_proof = consistency_proof(old, new, forked.read)
    assert not verify_consistency(old, new, old_root, forked.mth(0, new), forked_proof)
    other = data.draw(st.integers(1, new).filter(lambda s: s != old))
    if len(consistency_proof(other, new, tree.read)) != len(proof):
        assert not verify_consistency(other, new, old_root, new_root, proof)


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 65535, 65536, 65537, 2**40 + 12345])
def test_proofs_read_a_logarithmic_number_of_hashes(size: int) -> None:
    reads = 0

    def read(height: int, index: int) -> bytes:
        nonlocal reads
        reads += 1
        assert (index + 1) << height <= size
        return (height * 2**64 + index).to_bytes(merkle.HASH_SIZE, "big")

    bound = 2 * size.bit_length() + 2
    for call in (
        lambda: root(size, read),
        lambda: inclusion_proof(0, size, read),
        lambda: inclusion_proof(size - 1, size, read),
        lambda: inclusion_proof(size // 3, size, read),
        lambda: consistency_proof(max(1, size // 3), size, read),
        lambda: consistency_proof(1, size, read),
    ):
        reads = 0
        call()
        assert reads <= bound


@pytest.mark.parametrize(
    "call",
    [
        lambda r: inclusion_proof(0, 0, r),
        lambda r: inclusion_proof(8, 8, r),
        lambda r: inclusion_proof(-1, 8, r),
        lambda r: consistency_proof(0, 8, r),
        lambda r: consistency_proof(5, 4, r),
        lambda r: root(-1, r),
    ],
)
def test_proofs_of_impossible_trees_are_refused(
    call: Callable[[merkle.HashReader], object],
) -> None:
    with pytest.raises(ValueError, match=r"no leaf|no consistency proof|negative tree size"):
        call(vector_reader)


_hostile_hash = st.one_of(st.binary(max_size=40), st.just(NODE_HASHES[0][0]), st.none())
_hostile_int = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    _hostile_hash, _hostile_int, _hostile_int, st.lists(_hostile_hash, max_size=70), _hostile_hash
)
def test_hostile_input_is_a_refusal_never_an_exception(
    leaf: Any, a: Any, b: Any, proof: Any, top: Any
) -> None:
    assert verify_inclusion(leaf, a, b, proof, top) in (True, False)
    assert verify_consistency(a, b, leaf, top, proof) in (True, False)
