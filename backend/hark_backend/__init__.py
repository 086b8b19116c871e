"""hark_backend: mints short-lived Realtime keys for registered hark devices."""
