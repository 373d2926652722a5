"""The statement log: RFC 9162 Merkle tree, C2SP tiles and checkpoints."""
