"""tlog.note against the C2SP specs' examples and Go's golang.org/x/mod/sumdb/note vectors."""

from __future__ import annotations

import base64

import pytest

from tests.tlog import note_vectors as v
from tlog import note
from tlog.note import (
    AmbiguousKeyError,
    Checkpoint,
    InvalidSignatureError,
    KeyFormatError,
    MalformedNoteError,
    NoteError,
    Signature,
    Signer,
    UnverifiedNoteError,
    Verifier,
    cosign,
    cosignature_timestamp,
    generate_key,
    open_note,
    sign_note,
    verify_cosignature,
)

PETER = Verifier.from_text(v.PETER_VKEY)
ENOCH = Verifier.from_text(v.ENOCH_VKEY)
PETER_SIG = Signature("PeterNeumann", v.PETER_HASH, v.PETER_SIG_B64)
ENOCH_SIG = Signature("EnochRoot", v.ENOCH_HASH, v.ENOCH_SIG_B64)


def _note(*sigs: str, text: str = v.TEXT) -> bytes:
    return (text + "\n" + "".join(sigs)).encode()


# --- keys -------------------------------------------------------------------------------


def test_go_verifier_and_signer_keys_read_and_write_back() -> None:
    assert PETER.name == "PeterNeumann"
    assert PETER.key_hash == v.PETER_HASH
    assert PETER.text() == v.PETER_VKEY
    signer = Signer.from_text(v.PETER_SKEY)
    assert signer.text() == v.PETER_SKEY
    assert signer.verifier() == PETER


def test_spec_and_formats_verifier_keys_read() -> None:
    assert Verifier.from_text(v.SPEC_VKEY).key_hash == 0x530D903A
    cosigner = Verifier.from_text(v.COSIGNER_VKEY)
    assert cosigner.alg == note.ALG_COSIGNATURE_V1
    assert cosigner.text() == v.COSIGNER_VKEY


def test_every_mangled_verifier_key_is_refused() -> None:
    # Go's TestNewVerifier: every proper substring and every single-byte change fails.
    key = v.PETER_VKEY
    for i in range(len(key) + 1):
        for j in range(i + 1, len(key) + 1):
            if (i, j) != (0, len(key)):
                with pytest.raises(NoteError):
                    Verifier.from_text(key[i:j])
    for i in range(len(key)):
        with pytest.raises(NoteError):
            Verifier.from_text(key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :])
    for bad in v.BAD_VKEYS:
        with pytest.raises(KeyFormatError):
            Verifier.from_text(bad)


def test_every_mangled_signer_key_is_refused() -> None:
    key = v.PETER_SKEY
    for i in range(len(key) + 1):
        for j in range(i + 1, len(key) + 1):
            if (i, j) != (0, len(key)):
                with pytest.raises(NoteError):
                    Signer.from_text(key[i:j])
    for i in range(len(key)):
        with pytest.raises(NoteError):
            Signer.from_text(key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :])


@pytest.mark.parametrize("name", ["", "a+b", "a b", "tab\there", "nb\u00a0sp", "ideo\u3000sp"])
def test_invalid_key_names_are_refused(name: str) -> None:
    with pytest.raises(KeyFormatError):
        generate_key(name)


def test_generated_keys_sign_and_verify() -> None:
    skey, vkey = generate_key("sealpost.example/log")
    signer, verifier = Signer.from_text(skey), Verifier.from_text(vkey)
    assert signer.verifier() == verifier
    assert vkey.startswith("sealpost.example/log+")
    assert skey.startswith("PRIVATE+KEY+sealpost.example/log+")
    opened = open_note(sign_note("hello\n", [signer]), [verifier])
    assert opened.text == "hello\n"
    assert [s.name for s in opened.signatures] == ["sealpost.example/log"]


# --- signing ----------------------------------------------------------------------------


def test_sign_matches_go_output_byte_for_byte() -> None:
    signer = Signer.from_text(v.PETER_SKEY)
    assert sign_note(v.TEXT, [signer]).decode() == v.PETER_SIGNED_NOTE
    # An old signature by the same key is replaced, as Go does.
    stale = Signature("PeterNeumann", v.PETER_HASH, "BADSIGN=")
    assert sign_note(v.TEXT, [signer], [stale]).decode() == v.PETER_SIGNED_NOTE


def test_sign_keeps_other_signatures_first() -> None:
    signed = sign_note(v.TEXT, [Signer.from_text(v.PETER_SKEY)], [ENOCH_SIG])
    assert signed == _note(v.ENOCH_SIG, v.PETER_SIG)
    opened = open_note(signed, [PETER, ENOCH])
    assert opened.signatures == (ENOCH_SIG, PETER_SIG)


@pytest.mark.parametrize("text", ["abc", "", "a\r\n", "tab\there\n"])
def test_sign_refuses_text_that_cannot_be_a_note(text: str) -> None:
    with pytest.raises(MalformedNoteError):
        sign_note(text, [Signer.from_text(v.PETER_SKEY)])


def test_sign_refuses_a_prefilled_signature_with_the_wrong_hash() -> None:
    with pytest.raises(MalformedNoteError):
        sign_note(v.TEXT, [], [Signature("PeterNeumann", v.PETER_HASH, "BADHASH=")])


# --- opening ----------------------------------------------------------------------------


def test_known_good_notes_verify() -> None:
    opened = open_note(v.SPEC_NOTE.encode(), [Verifier.from_text(v.SPEC_VKEY)])
    assert opened.text == "This is an example message.\n"
    assert len(opened.signatures) == 1
    opened = open_note(v.PETER_SIGNED_NOTE.encode(), [PETER])
    assert opened.text == v.TEXT
    assert opened.signatures == (PETER_SIG,)


def test_unknown_key_signatures_are_kept_apart() -> None:
    opened = open_note(_note(v.PETER_SIG, v.ENOCH_SIG), [PETER])
    assert opened.signatures == (PETER_SIG,)
    assert opened.unverified == (ENOCH_SIG,)
    both = open_note(_note(v.PETER_SIG, v.ENOCH_SIG), [PETER, ENOCH])
    assert both.signatures == (PETER_SIG, ENOCH_SIG)
    assert both.unverified == ()


def test_a_note_with_no_known_signature_is_refused_but_readable() -> None:
    with pytest.raises(UnverifiedNoteError) as caught:
        open_note(_note(v.PETER_SIG, v.ENOCH_SIG), [])
    assert caught.value.note.signatures == ()
    assert caught.value.note.unverified == (PETER_SIG, ENOCH_SIG)


def test_altered_text_is_refused() -> None:
    altered = v.PETER_SIGNED_NOTE.replace("cryptography", "cryptograph")
    with pytest.raises(InvalidSignatureError, match="PeterNeumann\\+c74f20a3"):
        open_note(altered.encode(), [PETER])


def test_altered_signature_is_refused() -> None:
    broken = v.PETER_SIG[:60] + "ABCD" + v.PETER_SIG[60:]
    with pytest.raises(InvalidSignatureError):
        open_note(_note(broken), [PETER])


def test_wrong_key_is_not_trusted() -> None:
    # Same name, other key: its hash differs, so the signature is from an unknown key.
    _, other = generate_key("PeterNeumann")
    with pytest.raises(UnverifiedNoteError):
        open_note(v.PETER_SIGNED_NOTE.encode(), [Verifier.from_text(other)])
    # A verifier that claims Peter's name and hash over another key fails the signature.
    impostor = Verifier("PeterNeumann", v.PETER_HASH, note.ALG_ED25519, ENOCH.public_key)
    with pytest.raises(InvalidSignatureError):
        open_note(v.PETER_SIGNED_NOTE.encode(), [impostor])


def test_duplicated_verifier_key_is_refused_when_used() -> None:
    with pytest.raises(AmbiguousKeyError, match="EnochRoot\\+af0cfe78"):
        open_note(_note(v.ENOCH_SIG), [ENOCH, PETER, ENOCH])
    assert open_note(_note(v.PETER_SIG), [ENOCH, PETER, ENOCH]).signatures == (PETER_SIG,)


def test_repeated_signature_lines_count_once() -> None:
    enoch_abcd = v.ENOCH_SIG[:60] + "ABCD" + v.ENOCH_SIG[60:]
    opened = open_note(
        _note(v.PETER_SIG, v.PETER_SIG, v.ENOCH_SIG, v.ENOCH_SIG, enoch_abcd), [PETER]
    )
    assert opened.signatures == (PETER_SIG,)
    assert [s.base64 for s in opened.unverified] == [
        v.ENOCH_SIG_B64,
        enoch_abcd.split(" ")[2].strip(),
    ]


@pytest.mark.parametrize("verifiers", [[PETER], []])
def test_more_than_100_signatures_are_refused(verifiers: list[Verifier]) -> None:
    with pytest.raises(MalformedNoteError, match="100"):
        open_note(_note(v.PETER_SIG * 101), verifiers)
    assert open_note(_note(v.PETER_SIG * 100), [PETER]).signatures == (PETER_SIG,)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(v.TEXT.encode(), id="no signature block"),
        pytest.param((v.TEXT + "\n").encode(), id="empty signature block"),
        pytest.param(v.TEXT.encode() + v.PETER_SIG.encode(), id="missing blank line"),
        pytest.param(_note(v.PETER_SIG)[:-1], id="last line without newline"),
        pytest.param(b"\x01" + _note(v.PETER_SIG), id="control character"),
        pytest.param(b"\xff" + _note(v.PETER_SIG), id="not UTF-8"),
        pytest.param(_note(v.PETER_SIG).replace(b"\xe2\x80\x94", b"\xe2\x80"), id="cut UTF-8"),
        pytest.param(_note(v.PETER_SIG).replace(b"\n", b"\r\n"), id="CRLF line ends"),
        pytest.param(
            _note(v.PETER_SIG.replace("PeterNeumann", "Bad Name")).rstrip(b"\n"), id="bad name"
        ),
        pytest.param(_note(v.PETER_SIG, "Unexpected line.\n"), id="not a signature line"),
        pytest.param(_note(v.PETER_SIG.replace("\u2014", "-")), id="hyphen, not em dash"),
        pytest.param(_note("\u2014 PeterNeumann x08gow==\n"), id="short signature"),
        pytest.param(_note("\u2014 PeterNeumann x08go!ZJ\n"), id="not base64"),
        pytest.param(_note("\u2014 PeterNeumann \n"), id="empty signature"),
    ],
)
def test_malformed_notes_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedNoteError, match="malformed note"):
        open_note(data, [PETER])


def test_text_may_hold_blank_lines() -> None:
    signer = Signer.from_text(v.PETER_SKEY)
    for text in ["a\n\nb\n", "Note\n\n"]:
        assert open_note(sign_note(text, [signer]), [PETER]).text == text


# --- checkpoints ------------------------------------------------------------------------


def test_spec_checkpoint_parses_and_formats_back() -> None:
    with pytest.raises(UnverifiedNoteError) as caught:
        open_note(_note(v.SPEC_LOG_SIG, v.SPEC_WITNESS_SIG, text=v.SPEC_CHECKPOINT_TEXT), [])
    text = caught.value.note.text
    checkpoint = Checkpoint.parse(text)
    assert checkpoint.origin == v.SPEC_CHECKPOINT_ORIGIN
    assert checkpoint.size == v.SPEC_CHECKPOINT_SIZE
    assert checkpoint.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.format() == v.SPEC_CHECKPOINT_TEXT


def test_checkpoint_with_extensions_round_trips() -> None:
    checkpoint = Checkpoint("sealpost.example/log", 0, bytes(32), ("ext one", "ext two"))
    assert Checkpoint.parse(checkpoint.format()) == checkpoint
    assert checkpoint.format().split("\n")[1] == "0"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("o\n1\n" + "A" * 43 + "=", id="no final newline"),
        pytest.param("o\n1\n", id="two lines"),
        pytest.param("\n1\n" + "A" * 43 + "=\n", id="empty origin"),
        pytest.param("o\n01\n" + "A" * 43 + "=\n", id="leading zero"),
        pytest.param("o\n+1\n" + "A" * 43 + "=\n", id="sign"),
        pytest.param("o\n 1\n" + "A" * 43 + "=\n", id="space"),
        pytest.param("o\n-1\n" + "A" * 43 + "=\n", id="negative"),
        pytest.param("o\n١\n" + "A" * 43 + "=\n", id="non-ASCII digit"),
        pytest.param("o\n99999999999999999999\n" + "A" * 43 + "=\n", id="too large"),
        pytest.param("o\n1\nAAAA\n", id="short root"),
        pytest.param("o\n1\n" + "A" * 43 + "\n", id="root without padding"),
        pytest.param("o\n1\n" + "A" * 42 + "B=\n", id="non-canonical root"),
        pytest.param("o\n1\n" + "A" * 43 + "=\n\n", id="empty extension line"),
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


def test_signed_checkpoint_round_trip() -> None:
    skey, vkey = generate_key("sealpost.example/log")
    checkpoint = Checkpoint("sealpost.example/log", 12345, bytes(range(32)))
    signed = sign_note(checkpoint.format(), [Signer.from_text(skey)])
    opened = open_note(signed, [Verifier.from_text(vkey)])
    assert Checkpoint.parse(opened.text) == checkpoint


# --- cosignatures -----------------------------------------------------------------------


def test_spec_cosignature_timestamp_reads() -> None:
    with pytest.raises(UnverifiedNoteError) as caught:
        open_note(_note(v.SPEC_LOG_SIG, v.SPEC_WITNESS_SIG, text=v.SPEC_CHECKPOINT_TEXT), [])
    witness_sig = caught.value.note.unverified[1]
    assert witness_sig.name == "witness.example.com/w1"
    assert cosignature_timestamp(witness_sig) == v.SPEC_WITNESS_TIMESTAMP


def test_formats_cosignature_timestamp_reads() -> None:
    sig = Signature("w", 0, v.COSIGNATURE_B64)
    assert cosignature_timestamp(sig) == v.COSIGNATURE_TIMESTAMP
    with pytest.raises(NoteError):
        cosignature_timestamp(Signature("w", 0, v.NOT_A_COSIGNATURE_B64))


def test_cosignature_made_here_verifies_and_a_changed_timestamp_fails() -> None:
    skey, vkey = generate_key("insurer.example/witness")
    witness_signer = Signer.from_text(skey)
    witness = Verifier.from_text(vkey)
    checkpoint = Checkpoint("sealpost.example/log", 7, bytes(range(32))).format()
    line = cosign(checkpoint, witness_signer, 1_800_000_000)
    assert line.startswith("\u2014 insurer.example/witness ")
    assert line.endswith("\n")
    assert verify_cosignature(checkpoint, line, witness) == 1_800_000_000
    assert verify_cosignature(checkpoint, line, witness.as_cosigner()) == 1_800_000_000

    # The key hash is over 0x04 || public key, not the plain signing key's.
    raw = base64.b64decode(line.split(" ")[2])
    assert int.from_bytes(raw[:4], "big") == witness.as_cosigner().key_hash
    assert witness.as_cosigner().key_hash != witness.key_hash

    later = raw[:4] + (1_800_000_001).to_bytes(8, "big") + raw[12:]
    changed = line.split(" ")[0] + " insurer.example/witness " + base64.b64encode(later).decode()
    with pytest.raises(InvalidSignatureError):
        verify_cosignature(checkpoint, changed, witness)
    other_checkpoint = checkpoint.replace("\n7\n", "\n8\n")
    with pytest.raises(InvalidSignatureError):
        verify_cosignature(other_checkpoint, line, witness)
    _, stranger = generate_key("insurer.example/witness")
    with pytest.raises(NoteError, match="not witness"):
        verify_cosignature(checkpoint, line, Verifier.from_text(stranger))


def test_cosigned_checkpoint_opens_with_log_and_witness_keys() -> None:
    log_skey, log_vkey = generate_key("sealpost.example/log")
    w_skey, w_vkey = generate_key("insurer.example/witness")
    text = Checkpoint("sealpost.example/log", 3, bytes(32)).format()
    signed = sign_note(text, [Signer.from_text(log_skey)])
    cosigned = signed + cosign(text, Signer.from_text(w_skey), 1_700_000_000).encode()

    log, witness = Verifier.from_text(log_vkey), Verifier.from_text(w_vkey).as_cosigner()
    opened = open_note(cosigned, [log, witness])
    assert [s.name for s in opened.signatures] == [
        "sealpost.example/log",
        "insurer.example/witness",
    ]
    assert cosignature_timestamp(opened.signatures[1]) == 1_700_000_000
    # Whoever knows only the log key still reads the checkpoint; the cosignature is unknown.
    only_log = open_note(cosigned, [log])
    assert [s.name for s in only_log.unverified] == ["insurer.example/witness"]
    # A cosignature key must not pass as the witness's plain note key.
    with pytest.raises(UnverifiedNoteError):
        open_note(cosigned, [Verifier.from_text(w_vkey)])


def test_cosign_refuses_what_is_not_a_checkpoint() -> None:
    skey, _ = generate_key("insurer.example/witness")
    with pytest.raises(NoteError):
        cosign("hello\n", Signer.from_text(skey), 1)
    with pytest.raises(NoteError):
        cosign(Checkpoint("o", 1, bytes(32)).format(), Signer.from_text(skey), -1)
