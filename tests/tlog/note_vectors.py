"""Known answers for the C2SP note formats, copied from independent sources (values only).

They check tlog.note against what other implementations produce, not against itself.
"""

# --- github.com/golang/mod, sumdb/note/note_test.go (and example_test.go), at commit
# fe2ec04f7c3c3aa6fad97631aafcff6e49e2d1db: golang.org/x/mod/sumdb/note, the reference.
GO_COMMIT = "fe2ec04f7c3c3aa6fad97631aafcff6e49e2d1db"

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_HASH = 0xC74F20A3
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
ENOCH_HASH = 0xAF0CFE78

# Wrong-length key and unknown algorithm, each with a key hash adjusted to match.
BAD_VKEYS = (
    "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
    "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
)

TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG_B64 = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)
ENOCH_SIG_B64 = (
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ="
)
PETER_SIG = "\u2014 PeterNeumann " + PETER_SIG_B64 + "\n"
ENOCH_SIG = "\u2014 EnochRoot " + ENOCH_SIG_B64 + "\n"
# What Go's note.Sign writes for TEXT with PETER_SKEY (Ed25519 is deterministic).
PETER_SIGNED_NOTE = TEXT + "\n" + PETER_SIG

# --- github.com/C2SP/C2SP at commit 5ba5ee830903e91240fc6f9f3a7a9293d49e69c9.
C2SP_COMMIT = "5ba5ee830903e91240fc6f9f3a7a9293d49e69c9"

# signed-note.md, "Example".
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n"
    "\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mF"
    "XmRKuwHjG1Yu72IneyaQM=\n"
)

# tlog-checkpoint.md and tlog-cosignature.md: a checkpoint, its log signature and a witness
# cosignature (the spec publishes no keys for them: they are read, not verified).
SPEC_CHECKPOINT_TEXT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
SPEC_CHECKPOINT_ORIGIN = "example.com/behind-the-sofa"
SPEC_CHECKPOINT_SIZE = 20852163
SPEC_LOG_SIG = (
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
    "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)
SPEC_WITNESS_SIG = (
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJs"
    "X3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
# The time in the spec's example of the cosigned message ("time 1679315147").
SPEC_WITNESS_TIMESTAMP = 1679315147

# --- github.com/transparency-dev/formats, note/note_cosigv1_test.go at commit
# 091ce41666c09683aa9350785e572be27f0c026d: a native cosignature/v1 (0x04) verifier key,
# and a cosignature with the timestamp that implementation reads from it.
FORMATS_COMMIT = "091ce41666c09683aa9350785e572be27f0c026d"
COSIGNER_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
COSIGNATURE_B64 = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJ"
    "XORmnFBOBA=="
)
COSIGNATURE_TIMESTAMP = 1727964367
# A plain Ed25519 signature, which is not a cosignature.
NOT_A_COSIGNATURE_B64 = (
    "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY="
)
