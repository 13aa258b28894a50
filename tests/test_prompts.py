import hashlib
import json

import pytest

from flux158.data import sources
from flux158.data.pinned import PinnedFile, fetch, seed_cache
from flux158.data.prompts import PROMPT_SETS, load_prompt_set, take_per_group
from flux158.errors import PromptDataError

EXPECTED_COUNTS = {"geneval": 553, "t2i_compbench_val": 2400, "t2i_compbench_train": 5600, "parti": 1632,
                   "calibration": 7232}


@pytest.mark.parametrize("name", PROMPT_SETS)
def test_prompt_set_counts(name, mirror, tmp_path):
    items = load_prompt_set(name, tmp_path / "cache", [mirror], offline=True)
    assert len(items) == EXPECTED_COUNTS[name]


def test_geneval_tags_and_metadata(mirror, tmp_path):
    items = load_prompt_set("geneval", tmp_path, [mirror], offline=True)
    tags = {}
    for it in items:
        tags[it.metadata["tag"]] = tags.get(it.metadata["tag"], 0) + 1
    assert tags == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                    "color_attr": 100}
    assert items[0].prompt == items[0].metadata["prompt"]


def test_calibration_order_matches_reference_list(mirror, shared_reference, tmp_path):
    reference = shared_reference("calibration_prompts_7232.jsonl")
    items = load_prompt_set("calibration", tmp_path, [mirror], offline=True)
    ref = [json.loads(line) for line in reference.read_text().splitlines()]
    assert [(i.prompt, i.index) for i in items] == [(r["prompt"], r["index"]) for r in ref]
    assert items[1632].group == "t2i_compbench_train/color" and items[-1].group == "t2i_compbench_train/complex"


def test_t2i_color_val_is_the_paper_era_file(mirror, shared_reference, tmp_path):
    items = load_prompt_set("t2i_compbench_val", tmp_path, [mirror], categories=["color"], offline=True)
    expected = shared_reference("t2i_compbench/dataset/color_val.at-33d6305-2024-11-23.txt").read_text()
    assert [i.prompt for i in items] == [line.strip() for line in expected.splitlines()]
    assert len({i.prompt for i in items}) == 295  # the 2025 edit removed the duplicates; the paper had them
    assert [i.index for i in items] == list(range(300))


def test_cache_is_seeded_by_content_whatever_the_name(tmp_path):
    payload = b"hello prompts\n"
    pinned = PinnedFile("x.txt", "https://invalid.example/x.txt", hashlib.sha256(payload).hexdigest())
    src = tmp_path / "src" / "deep"
    src.mkdir(parents=True)
    (src / "renamed.bin").write_bytes(payload)
    (src / "other.txt").write_bytes(b"unrelated")
    installed = seed_cache(tmp_path / "cache", tmp_path / "src", [pinned])
    assert installed == [pinned.cache_path(tmp_path / "cache")]
    assert fetch(pinned, tmp_path / "cache", offline=True).read_bytes() == payload


def test_download_from_url_verifies_sha256(tmp_path):
    good = tmp_path / "remote.txt"
    good.write_bytes(b"a photo of a cat\n")
    pinned = PinnedFile("remote.txt", good.as_uri(), hashlib.sha256(b"a photo of a cat\n").hexdigest())
    got = fetch(pinned, tmp_path / "cache", offline=False)
    assert got == tmp_path / "cache" / pinned.sha256 / "remote.txt" and got.read_bytes() == good.read_bytes()


def test_sha256_mismatch_is_refused_and_not_cached(tmp_path):
    tampered = tmp_path / "remote.txt"
    tampered.write_bytes(b"tampered\n")
    pinned = PinnedFile("remote.txt", tampered.as_uri(), hashlib.sha256(b"original\n").hexdigest())
    with pytest.raises(PromptDataError, match="sha256 mismatch") as err:
        fetch(pinned, tmp_path / "cache", offline=False)
    assert pinned.sha256 in str(err.value) and hashlib.sha256(b"tampered\n").hexdigest() in str(err.value)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_corrupt_cache_entry_is_replaced_from_mirror(mirror, tmp_path):
    cached = sources.GENEVAL_METADATA.cache_path(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_text("truncated")
    replaced = fetch(sources.GENEVAL_METADATA, tmp_path, [mirror], offline=True)
    assert replaced == cached and hashlib.sha256(cached.read_bytes()).hexdigest() == sources.GENEVAL_METADATA.sha256


def test_offline_miss_names_url_and_destination(tmp_path):
    with pytest.raises(PromptDataError) as err:
        load_prompt_set("geneval", tmp_path / "cache", offline=True)
    msg = str(err.value)
    assert sources.GENEVAL_METADATA.url in msg
    assert str(sources.GENEVAL_METADATA.cache_path(tmp_path / "cache")) in msg
    assert sources.GENEVAL_COMMIT in sources.GENEVAL_METADATA.url


def test_unreachable_url_gives_clear_error(tmp_path):
    pinned = PinnedFile("x.txt", "http://127.0.0.1:9/x.txt", "0" * 64)  # port 9 (discard): connection refused
    with pytest.raises(PromptDataError, match="Could not download x.txt"):
        fetch(pinned, tmp_path, offline=False, timeout_s=5)


def test_pinned_t2i_urls_use_the_paper_era_commit():
    f = sources.t2i_compbench_file("color", "val")
    assert f.url == ("https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/"
                     "33d63057ce4ee301be8838cc85e6cdac734223a3/examples/dataset/color_val.txt")
    with pytest.raises(ValueError, match="unknown T2I-CompBench file"):
        sources.t2i_compbench_file("colour", "val")


def test_take_per_group(mirror, tmp_path):
    items = load_prompt_set("t2i_compbench_val", tmp_path, [mirror], categories=["shape", "numeracy"], offline=True)
    kept = take_per_group(items, 3)
    assert [(i.group, i.index) for i in kept] == [("shape", 0), ("shape", 1), ("shape", 2),
                                                  ("numeracy", 0), ("numeracy", 1), ("numeracy", 2)]
