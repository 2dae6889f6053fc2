"""The emulated network: link latency, per-node bandwidth, loss, traces, and a virtual clock.

``settings`` is the ``[network]`` table; ``files`` reads the latency matrix, trace and speed
files it names; ``model`` turns both into rates and latencies at any time; ``clock`` is a
process's time. The transport that applies them is :mod:`dlactor.transport.emulated`.
docs/network.md has the model and why it is built this way.
"""
