"""Who a process is, and how it proves it: per-process keys, the connection handshake, TLS.

See docs/security.md for the threat model.
"""
