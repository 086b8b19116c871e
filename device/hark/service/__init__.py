"""The daemon around the core: its loop, its wiring (composition root), systemd and agent glue."""
