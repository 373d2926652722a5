"""Sealpost gateway: SMTP in, seal (DKIM + CMS), durable spool, delivery, retries, DSN."""
