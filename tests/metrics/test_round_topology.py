"""The topology a run used, round by round, rebuilt from the nodes' ``peers``/``weights``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from dlactor.metrics.report import report
from dlactor.metrics.topology import round_stats, round_topologies, write_round_topology
from dlactor.topology.mixing import metropolis_hastings, mixing_matrix, spectral_gap


def graph_records(graphs: dict[int, nx.Graph], rounds: int) -> dict[int, list[dict[str, Any]]]:
    """Records as nodes write them: ``peers``/``weights`` only when they change."""
    records: dict[int, list[dict[str, Any]]] = {}
    current: dict[int, tuple[list[int], list[float]]] = {}
    graph = graphs[0]
    for r in range(rounds):
        graph = graphs.get(r, graph)
        rows = metropolis_hastings(graph)
        for node in sorted(graph.nodes):
            rec: dict[str, Any] = {"node": node, "round": r}
            peers = sorted(graph[node])
            row = (peers, [rows[node][p] for p in peers])
            if current.get(node) != row:
                current[node] = row
                rec["peers"], rec["weights"] = row
            records.setdefault(node, []).append(rec)
    return records


def test_a_static_graph_is_recorded_once_and_rebuilt_for_every_round(tmp_path: Path) -> None:
    ring = nx.cycle_graph(6)
    records = graph_records({0: ring}, rounds=5)
    assert sum("peers" in rec for recs in records.values() for rec in recs) == 6
    topos = list(round_topologies(records, 6))
    assert [t.round for t, _ in topos] == [0, 1, 2, 3, 4]
    assert [changed for _, changed in topos] == [True, False, False, False, False]
    assert all(t.edges() == sorted(ring.edges) for t, _ in topos)
    path = write_round_topology(tmp_path, records, 6)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"round": 0, "edges": [list(e) for e in sorted(ring.edges)]}]
    stats = round_stats(records, 6)
    assert stats["gap"] == pytest.approx([spectral_gap(mixing_matrix(ring))] * 5)
    assert stats["degree_mean"] == [2.0] * 5 and len(stats["degrees"]) == 30


def test_changing_graphs_get_a_line_per_change_and_their_own_gap(tmp_path: Path) -> None:
    g0, g2 = nx.cycle_graph(6), nx.complete_graph(6)
    records = graph_records({0: g0, 2: g2}, rounds=4)
    path = write_round_topology(tmp_path, records, 6)
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [0, 2]
    stats = round_stats(records, 6)
    assert stats["gap"][1] == pytest.approx(spectral_gap(mixing_matrix(g0)))
    assert stats["gap"][3] == pytest.approx(spectral_gap(mixing_matrix(g2)))
    assert stats["degree_max"] == [2, 2, 5, 5]


def test_a_one_sided_edge_is_reported_as_asymmetric(tmp_path: Path) -> None:
    records = {0: [{"node": 0, "round": 0, "peers": [1], "weights": [0.5]}],
               1: [{"node": 1, "round": 0, "peers": [], "weights": []}]}  # fmt: skip
    ((topo, _),) = round_topologies(records, 2)
    assert topo.asymmetric() == 1
    path = write_round_topology(tmp_path, records, 2)
    assert json.loads(path.read_text())["asymmetric_pairs"] == 1


def test_report_draws_degrees_and_spectral_gap_for_a_run_with_peers(tmp_path: Path) -> None:
    run = tmp_path / "dyn-20260101-000000"
    (run / "nodes").mkdir(parents=True)
    graphs = {r: nx.random_regular_graph(3, 8, seed=r) for r in range(6)}
    for node, recs in graph_records(graphs, 6).items():
        for rec in recs:
            rec.update(t_wall=0.1 * rec["round"], bytes_sent=10, train_loss=1.0)
            if rec["round"] in (2, 5):
                rec.update(test_acc=0.5, test_loss=1.0)
        (run / "nodes" / f"{node}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "manifest.json").write_text(json.dumps({"name": "dyn", "nodes": 8}))
    written = report([run])
    assert run / "plots" / "topology.png" in written
    gaps = round_stats(graph_records(graphs, 6), 8)["gap"]
    assert all(0 < g < 1 and not math.isnan(g) for g in gaps)
