"""The network edge: the Realtime link and the ephemeral-key fetch."""
