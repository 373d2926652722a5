"""C2SP signed notes, checkpoints and witness cosignatures.

Formats, exactly as specified so that other tools can read, witness or replace our log:
- https://c2sp.org/signed-note (Ed25519 signatures, verifier and signer key encodings);
- https://c2sp.org/tlog-checkpoint (the note text of a log's tree head);
- https://c2sp.org/tlog-cosignature (timestamped Ed25519 cosignatures, type 0x04).

The reading rules follow golang.org/x/mod/sumdb/note, the reference implementation, so a
note that Go refuses is refused here too, with the same limits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04

# Go's limit: the spec asks verifiers for one (at least 16), and one that refuses what Go
# accepts, or the reverse, would split the ecosystem's view of a note.
MAX_SIGNATURES = 100

# The largest tree size and cosignature timestamp: both are u64 on the wire, but the specs
# (and Go, which reads them as int64) stop at 2^63 - 1.
MAX_INT63 = 2**63 - 1

_SIG_PREFIX = "\u2014 "  # em dash, space
_COSIGNATURE_HEADER = "cosignature/v1\ntime {timestamp}\n"
_HEX8 = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class NoteError(ValueError):
    """A note, key or checkpoint that the C2SP rules refuse."""


class MalformedNoteError(NoteError):
    """The bytes are not a signed note."""


class KeyFormatError(NoteError):
    """A verifier or signer key text that cannot be read, or whose key hash is wrong."""


class AmbiguousKeyError(NoteError):
    """Two configured verifiers share a name and key hash: which one signed cannot be told."""


class InvalidSignatureError(NoteError):
    """A signature from a known key does not verify: the whole note is refused."""


class UnverifiedNoteError(NoteError):
    """No signature from a known key: the text must not be trusted. `note` keeps what was read."""

    def __init__(self, note: Note) -> None:
        super().__init__("note has no verifiable signatures: no signature is from a known key")
        self.note = note


def is_valid_name(name: str) -> bool:
    """A key name per signed-note: non-empty, no Unicode space, no "+"."""
    return (
        name != ""
        and "+" not in name
        # Control characters cannot appear in a note, so a name holding one could never be
        # used; Zs covers the Unicode spaces that str.isspace() might miss.
        and not any(ch.isspace() or unicodedata.category(ch) in ("Zs", "Cc") for ch in name)
    )


def key_hash(name: str, alg: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4] as a big-endian integer."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str) -> bytes:
    # The standard alphabet with padding, nothing else (no spaces, no URL-safe characters).
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64: {exc}") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _cosigned_message(text: bytes, timestamp: int) -> bytes:
    return _COSIGNATURE_HEADER.format(timestamp=timestamp).encode() + text


def _raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _split_key_text(text: str, parts: int) -> list[str]:
    # The base64 key may itself hold "+", so only the leading separators split.
    fields = text.split("+", parts - 1)
    if len(fields) != parts:
        raise KeyFormatError(f"malformed key: expected {parts} parts separated by '+'")
    return fields


def _read_key_material(name: str, hash16: str, key64: str) -> tuple[int, int, bytes]:
    if not is_valid_name(name):
        raise KeyFormatError(f"malformed key: invalid key name {name!r}")
    if not _HEX8.fullmatch(hash16):
        raise KeyFormatError("malformed key: the key hash is not 8 lowercase hex digits")
    try:
        material = _b64decode(key64)
    except ValueError as exc:
        raise KeyFormatError(f"malformed key: {exc}") from None
    if len(material) != 33:
        raise KeyFormatError(
            "malformed key: expected an algorithm byte and a 32-byte Ed25519 key, "
            f"got {len(material)} bytes"
        )
    alg = material[0]
    if alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise KeyFormatError(f"unknown key algorithm 0x{alg:02x}")
    return int(hash16, 16), alg, material[1:]


@dataclass(frozen=True)
class Verifier:
    """A verifier key: `<name>+<hex key hash>+<base64(alg || public key)>`.

    alg 0x01 verifies plain Ed25519 note signatures; alg 0x04 verifies tlog-cosignature/v1
    timestamped signatures, whose signed message is the cosignature header and the note text.
    """

    name: str
    key_hash: int
    alg: int
    public_key: bytes

    @classmethod
    def from_text(cls, text: str) -> Verifier:
        name, hash16, key64 = _split_key_text(text, 3)
        hash_, alg, public_key = _read_key_material(name, hash16, key64)
        if hash_ != key_hash(name, alg, public_key):
            raise KeyFormatError(f"key hash {hash16} does not match key {name}")
        return cls(name, hash_, alg, public_key)

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes, alg: int = ALG_ED25519) -> Verifier:
        if not is_valid_name(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        if len(public_key) != 32 or alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise KeyFormatError("an Ed25519 verifier needs a 32-byte key and alg 0x01 or 0x04")
        return cls(name, key_hash(name, alg, public_key), alg, public_key)

    def text(self) -> str:
        material = _b64encode(bytes([self.alg]) + self.public_key)
        return f"{self.name}+{self.key_hash:08x}+{material}"

    def as_cosigner(self) -> Verifier:
        """The same Ed25519 key as a witness cosignature (0x04) verifier, with its own hash."""
        return Verifier.from_public_key(self.name, self.public_key, ALG_COSIGNATURE_V1)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Check `signature` (the bytes after the key hash) over the note text `message`."""
        if self.alg == ALG_COSIGNATURE_V1:
            if len(signature) != 8 + 64:
                return False
            timestamp = int.from_bytes(signature[:8], "big")
            if timestamp > MAX_INT63:
                return False
            message, signature = _cosigned_message(message, timestamp), signature[8:]
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A signer key: `PRIVATE+KEY+<name>+<hex key hash>+<base64(alg || 32-byte seed)>`."""

    name: str
    key_hash: int
    alg: int
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_text(cls, text: str) -> Signer:
        private, key, name, hash16, key64 = _split_key_text(text, 5)
        if (private, key) != ("PRIVATE", "KEY"):
            raise KeyFormatError("malformed signer key: it must start with PRIVATE+KEY+")
        hash_, alg, seed = _read_key_material(name, hash16, key64)
        private_key = Ed25519PrivateKey.from_private_bytes(seed)
        if hash_ != key_hash(name, alg, _raw_public_key(private_key.public_key())):
            raise KeyFormatError(f"key hash {hash16} does not match signer key {name}")
        return cls(name, hash_, alg, private_key)

    @classmethod
    def from_private_key(
        cls, name: str, private_key: Ed25519PrivateKey, alg: int = ALG_ED25519
    ) -> Signer:
        if not is_valid_name(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        if alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise KeyFormatError(f"unknown key algorithm 0x{alg:02x}")
        public = _raw_public_key(private_key.public_key())
        return cls(name, key_hash(name, alg, public), alg, private_key)

    def text(self) -> str:
        seed = self.private_key.private_bytes_raw()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash:08x}+{_b64encode(bytes([self.alg]) + seed)}"

    def verifier(self) -> Verifier:
        return Verifier.from_public_key(
            self.name, _raw_public_key(self.private_key.public_key()), self.alg
        )

    def as_cosigner(self) -> Signer:
        """The same Ed25519 key as a witness cosigner (0x04), with its own key hash."""
        return Signer.from_private_key(self.name, self.private_key, ALG_COSIGNATURE_V1)

    def sign(self, message: bytes) -> bytes:
        """A plain Ed25519 note signature; cosigners sign with `cosign`, which needs a time."""
        if self.alg != ALG_ED25519:
            raise NoteError(f"key {self.name} is a cosigner key: use cosign() with a timestamp")
        return self.private_key.sign(message)


def generate_key(name: str, alg: int = ALG_ED25519) -> tuple[str, str]:
    """A new Ed25519 key pair as (signer key text, verifier key text)."""
    signer = Signer.from_private_key(name, Ed25519PrivateKey.generate(), alg)
    return signer.text(), signer.verifier().text()


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key hash and the base64 of (key hash || signature)."""

    name: str
    key_hash: int
    base64: str

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {self.base64}\n"

    def raw(self) -> bytes:
        """The signature bytes after the 4-byte key hash."""
        return _b64decode(self.base64)[4:]


@dataclass(frozen=True)
class Note:
    """An opened note: its text, the signatures verified, and those from unknown keys."""

    text: str
    signatures: tuple[Signature, ...]
    unverified: tuple[Signature, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNoteError("malformed note: the text must end with a newline")
    for ch in text:
        if ch < " " and ch != "\n":
            raise MalformedNoteError(
                f"malformed note: control character U+{ord(ch):04X} (only newline is allowed)"
            )


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(_SIG_PREFIX):
        raise MalformedNoteError(
            f"malformed note: signature line does not start with an em dash: {line[:40]!r}"
        )
    name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not is_valid_name(name):
        raise MalformedNoteError(f"malformed note: invalid key name {name!r}")
    try:
        raw = _b64decode(b64)
    except ValueError:
        raise MalformedNoteError(f"malformed note: signature of {name} is not base64") from None
    if len(raw) < 5:
        raise MalformedNoteError(f"malformed note: signature of {name} is too short")
    return Signature(name, int.from_bytes(raw[:4], "big"), b64)


class _Verifiers:
    def __init__(self, verifiers: Iterable[Verifier]) -> None:
        self._by_id: dict[tuple[str, int], list[Verifier]] = {}
        for v in verifiers:
            self._by_id.setdefault((v.name, v.key_hash), []).append(v)

    def find(self, name: str, hash_: int) -> Verifier | None:
        found = self._by_id.get((name, hash_), [])
        if len(found) > 1:
            # Go refuses this too: trying each would let either key vouch for the other.
            raise AmbiguousKeyError(f"ambiguous key {name}+{hash_:08x}")
        return found[0] if found else None


def open_note(data: bytes, verifiers: Iterable[Verifier]) -> Note:
    """Read a signed note and verify it against the known `verifiers`.

    Signatures from unknown keys are kept in `Note.unverified` and otherwise ignored; a
    signature from a known key that fails refuses the whole note; a note with no verified
    signature raises UnverifiedNoteError (whose `note` still carries what was read).
    """
    try:
        message = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNoteError("malformed note: not valid UTF-8") from None
    for ch in message:
        if ch < " " and ch != "\n":
            raise MalformedNoteError(
                f"malformed note: control character U+{ord(ch):04X} (only newline is allowed)"
            )
    split = message.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("malformed note: no blank line before the signatures")
    text, block = message[: split + 1], message[split + 2 :]
    if not block or not block.endswith("\n"):
        raise MalformedNoteError("malformed note: the signature block must end with a newline")

    known = _Verifiers(verifiers)
    text_bytes = text.encode()
    lines = block[:-1].split("\n")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    seen_unverified: set[str] = set()
    for count, line in enumerate(lines, start=1):
        sig = _parse_signature_line(line)
        if count > MAX_SIGNATURES:
            raise MalformedNoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")
        verifier = known.find(sig.name, sig.key_hash)
        if verifier is None:
            if line not in seen_unverified:
                seen_unverified.add(line)
                unverified.append(sig)
            continue
        # A repeated signature from a known key adds nothing; Go skips it the same way.
        if (sig.name, sig.key_hash) in seen:
            continue
        seen.add((sig.name, sig.key_hash))
        if not verifier.verify(text_bytes, sig.raw()):
            raise InvalidSignatureError(f"invalid signature for key {sig.name}+{sig.key_hash:08x}")
        verified.append(sig)

    note = Note(text, tuple(verified), tuple(unverified))
    if not verified:
        raise UnverifiedNoteError(note)
    return note


def sign_note(text: str, signers: Sequence[Signer], others: Sequence[Signature] = ()) -> bytes:
    """The signed note: `text`, a blank line, then `others` (kept as they are, except those
    from one of `signers`, which are replaced) and a fresh signature from each signer."""
    _check_text(text)
    if len(others) + len(signers) > MAX_SIGNATURES:
        raise NoteError(f"a note carries at most {MAX_SIGNATURES} signatures")
    text_bytes = text.encode()
    mine = {(s.name, s.key_hash) for s in signers}
    lines: list[str] = []
    for sig in others:
        if (sig.name, sig.key_hash) in mine:
            continue
        checked = _parse_signature_line(sig.line()[:-1])
        if checked.key_hash != sig.key_hash:
            raise MalformedNoteError(f"malformed note: key hash of {sig.name}'s signature")
        lines.append(sig.line())
    for signer in signers:
        raw = signer.key_hash.to_bytes(4, "big") + signer.sign(text_bytes)
        lines.append(Signature(signer.name, signer.key_hash, _b64encode(raw)).line())
    return (text + "\n" + "".join(lines)).encode()


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint note text: origin, tree size, RFC 6962 root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for label, line in [("origin", self.origin), *(("extension", e) for e in self.extensions)]:
            if not line:
                raise NoteError(f"checkpoint {label} line must not be empty")
            if any(ch < " " for ch in line):
                raise NoteError(f"checkpoint {label} line holds a control character")
        if not 0 <= self.size <= MAX_INT63:
            raise NoteError(f"checkpoint tree size {self.size} out of range")
        if len(self.root) != 32:
            raise NoteError(f"checkpoint root hash is {len(self.root)} bytes, not 32 (SHA-256)")

    def format(self) -> str:
        lines = [self.origin, str(self.size), _b64encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Read a checkpoint note text (not the signed note: open it first)."""
        if not text.endswith("\n"):
            raise NoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("checkpoint needs origin, tree size and root hash lines")
        origin, size, root64, *extensions = lines
        if not _DECIMAL.fullmatch(size):
            raise NoteError(f"checkpoint tree size {size[:30]!r} is not a decimal without 0s ahead")
        try:
            root = _b64decode(root64)
        except ValueError:
            raise NoteError("checkpoint root hash is not base64") from None
        if _b64encode(root) != root64:
            raise NoteError("checkpoint root hash is not in canonical base64")
        return cls(origin, int(size), root, tuple(extensions))


def cosign(checkpoint_text: str, witness_signer: Signer, timestamp: int) -> str:
    """A witness's tlog-cosignature/v1 line (ending in newline) over a checkpoint text.

    `witness_signer` may be a plain Ed25519 signer key: the cosignature uses its 0x04 form.
    """
    Checkpoint.parse(checkpoint_text)  # witnesses cosign checkpoints, nothing else
    if not 0 <= timestamp <= MAX_INT63:
        raise NoteError(f"cosignature timestamp {timestamp} out of range")
    cosigner = witness_signer.as_cosigner()
    message = _cosigned_message(checkpoint_text.encode(), timestamp)
    raw = (
        cosigner.key_hash.to_bytes(4, "big")
        + timestamp.to_bytes(8, "big")
        + cosigner.private_key.sign(message)
    )
    return Signature(cosigner.name, cosigner.key_hash, _b64encode(raw)).line()


def cosignature_timestamp(signature: Signature) -> int:
    """The POSIX time a cosignature/v1 claims, read without verifying it."""
    try:
        raw = signature.raw()
    except ValueError:
        raise NoteError("cosignature is not base64") from None
    if len(raw) != 8 + 64:
        raise NoteError("not an Ed25519 cosignature/v1: wrong signature length")
    timestamp = int.from_bytes(raw[:8], "big")
    if timestamp > MAX_INT63:
        raise NoteError("cosignature timestamp out of range")
    return timestamp


def verify_cosignature(checkpoint_text: str, line: str, witness: Verifier) -> int:
    """Check one cosignature line over a checkpoint text; returns its timestamp."""
    sig = _parse_signature_line(line.removesuffix("\n"))
    if witness.alg != ALG_COSIGNATURE_V1:
        witness = witness.as_cosigner()
    if (sig.name, sig.key_hash) != (witness.name, witness.key_hash):
        raise NoteError(
            f"cosignature is from {sig.name}+{sig.key_hash:08x}, "
            f"not witness {witness.name}+{witness.key_hash:08x}"
        )
    timestamp = cosignature_timestamp(sig)
    if not witness.verify(checkpoint_text.encode(), sig.raw()):
        raise InvalidSignatureError(f"invalid cosignature from {witness.name}")
    return timestamp
