"""Sealpost verifier: tells an insurer whether a received statement email is authentic."""
