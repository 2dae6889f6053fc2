"""Checkpoints: what each process saves every ``checkpoint.every`` rounds, in safetensors
files that cannot run code, and resuming a run from the last one every process completed
(docs/churn.md)."""
