"""Sealpost registry of insurers: organisations, their mailboxes and API tokens."""
