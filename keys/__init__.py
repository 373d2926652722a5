"""Sealpost key store: DKIM keys and CMS certificates, their lifecycle, the public archive."""
