"""Nodes that come and go: availability schedules (``[availability]``), failures injected by
the launcher (``[faults]``), and the settings for both (docs/churn.md)."""
