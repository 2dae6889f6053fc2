"""What the launcher's template holds when it forks the nodes, and what of it nodes never use.

    .venv/bin/python experiments/bench/template_contents.py [CONFIG]   (default: the quickstart)

The template is the launcher as it forks: dlactor's command line imported, the config read,
the plan made (graph, data, model, the first optimizer). Every node shares its pages, so its
size is paid once in memory, but every fork copies its page tables, and a page a node writes
is copied into that node. Printed: the template's RSS and USS; its imported packages by
module count; and, for the packages only the launcher uses (the command line's, the
launcher's supervision and reporting), what importing each costs a fresh interpreter that
has dlactor's node side loaded already (RSS after minus before: what the template would
shed without it).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

#: What the nodes import (a forked node runs dlactor.launch.worker), then each launcher-only
#: package on top: the difference is that package's own cost.
NODE_SIDE = "import dlactor.launch.worker, dlactor.launch.plan, torch.optim"
LAUNCHER_ONLY = {
    "rich": ["rich.console", "rich.table", "rich.progress"],
    "typer (and click)": ["typer"],
    "dlactor's command line": ["dlactor.cli"],
    "dlactor's supervisor": ["dlactor.launch.supervisor", "dlactor.launch.local"],
    "scikit-learn (the digits loader)": ["sklearn.datasets"],
}


def rss_after(code: str) -> int:
    """RSS of a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport psutil; print(psutil.Process().memory_info().rss)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def main() -> None:
    config = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "configs" / "quickstart.toml"
    import dlactor.cli
    import dlactor.launch.local
    import dlactor.launch.supervisor  # noqa: F401
    from dlactor.config import load_config
    from dlactor.launch.plan import make_plan

    make_plan(load_config(config))
    info = psutil.Process().memory_full_info()
    packages = Counter(name.split(".")[0] for name in list(sys.modules))
    print(f"# The template of {config.name}\n")
    print(f"RSS {info.rss / 2**20:,.0f} MiB, USS {info.uss / 2**20:,.0f} MiB, "
          f"{len(sys.modules):,} modules imported.\n")  # fmt: skip
    print("| package | modules |\n|---|---:|")
    for name, count in packages.most_common(15):
        print(f"| {name} | {count} |")
    base = rss_after(NODE_SIDE)
    print(f"\nA fresh interpreter with the nodes' imports: {base / 2**20:,.0f} MiB RSS. "
          "What each launcher-only package adds to it:\n")  # fmt: skip
    print("| package | in this template | MiB added |\n|---|---|---:|")
    for name, modules in LAUNCHER_ONLY.items():
        loaded = modules[0] in sys.modules
        added = (rss_after(f"{NODE_SIDE}\nimport {', '.join(modules)}") - base) / 2**20
        print(f"| {name} | {'yes' if loaded else 'no'} | {added:,.1f} |")


if __name__ == "__main__":
    main()
