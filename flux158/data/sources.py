"""The benchmark files this project reads, each pinned to a commit URL and a sha256 (see SOURCES in README)."""

from __future__ import annotations

from pathlib import Path

from flux158.data.pinned import PinnedFile

GENEVAL_COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
PARTI_COMMIT = "5a657978134374ce28973948331b319adef164bd"
# The paper (arXiv 2412.18653, Dec 2024) predates the 2025-09 edit of color_val.txt, so pin the commit of its era.
T2I_COMPBENCH_COMMIT = "33d63057ce4ee301be8838cc85e6cdac734223a3"

T2I_COMPBENCH_CATEGORIES = (
    "color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex",
)

_RAW = "https://raw.githubusercontent.com"

GENEVAL_METADATA = PinnedFile(
    "evaluation_metadata.jsonl",
    f"{_RAW}/djghosh13/geneval/{GENEVAL_COMMIT}/prompts/evaluation_metadata.jsonl",
    "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
)
GENEVAL_OBJECT_NAMES = PinnedFile(
    "object_names.txt",
    f"{_RAW}/djghosh13/geneval/{GENEVAL_COMMIT}/evaluation/object_names.txt",
    "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd",
)
PARTI_PROMPTS = PinnedFile(
    "PartiPrompts.tsv",
    f"{_RAW}/google-research/parti/{PARTI_COMMIT}/PartiPrompts.tsv",
    "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb",
)

_T2I_SHA256 = {
    ("color", "val"): "1e37a12c1861bf6b11623eaffb0bf6d6eeea9702caf45b95d040f1721bba7f4f",
    ("color", "train"): "db5d3287027d453f8c977f0c7315f8a01a770f02f61fa54ae19406762982393f",
    ("shape", "val"): "37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae",
    ("shape", "train"): "451bdfccd330d4cf979d45664817be7959e89250b93d5c591cc562b858175a87",
    ("texture", "val"): "fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f",
    ("texture", "train"): "4846315c5972f9e9cc82e4833099e8ec2c28b999ca77269512715f3f56bde54f",
    ("spatial", "val"): "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988",
    ("spatial", "train"): "af14cdf2320057d98f94077e6211c2ddfaabfbb9e3842873657baabb17e00de6",
    ("3d_spatial", "val"): "c9953597315f36a5fcb41291bb19bdc6ab5f64a0fa760d691b4854a73f5d1fe9",
    ("3d_spatial", "train"): "0bba7e9ad31b0ce7908f6cbf2426a4b7ef6e8b841c1b737d0ad2d5b8e688dd93",
    ("non_spatial", "val"): "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d",
    ("non_spatial", "train"): "dbac5a9ec83204dcd0c3538a12d3212e2ce66db6f7ba45b49a1d869b2d3f2430",
    ("numeracy", "val"): "dad8df141604b70ba7554bec724e3db0a80023680769b5c514854ea2d2527bbe",
    ("numeracy", "train"): "f66bb8708cb0be23c0406e14d892b25661b2b71e3e72abddc79c38466ab629c6",
    ("complex", "val"): "1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4",
    ("complex", "train"): "d214ac45cb3c5307dd14a144c8c69aa5ffdcc7be74ff71b5dac989f8ca9f924b",
}


def t2i_compbench_file(category: str, split: str) -> PinnedFile:
    """The pinned `examples/dataset/<category>_<split>.txt` of T2I-CompBench at the paper-era commit."""
    if (category, split) not in _T2I_SHA256:
        raise ValueError(
            f"unknown T2I-CompBench file {category!r}/{split!r}; categories: {T2I_COMPBENCH_CATEGORIES}, "
            "splits: val, train"
        )
    name = f"{category}_{split}.txt"
    url = f"{_RAW}/Karine-Huang/T2I-CompBench/{T2I_COMPBENCH_COMMIT}/examples/dataset/{name}"
    return PinnedFile(name, url, _T2I_SHA256[(category, split)])


# The complex category's 3-in-1 sub-type lists (unchanged upstream since 2024; hashes from shared SOURCES.md).
_T2I_COMPLEX_SUBTYPE_SHA256 = {
    "spatial": "6c7ac0ab75c7c9080cfc7b421fb059b9b0febb98471707aeedf58771088abc02",
    "action": "d49ee4c7f99e3f3379fb8704a54ff5288b83bb412971edf616a4721c2473308e",
}


def t2i_compbench_complex_subtype_file(kind: str) -> PinnedFile:
    """The pinned `examples/dataset/complex_val_<kind>.txt` (kind: spatial or action) used by 3-in-1."""
    if kind not in _T2I_COMPLEX_SUBTYPE_SHA256:
        raise ValueError(f"unknown complex sub-type {kind!r}; choose one of {sorted(_T2I_COMPLEX_SUBTYPE_SHA256)}")
    name = f"complex_val_{kind}.txt"
    url = f"{_RAW}/Karine-Huang/T2I-CompBench/{T2I_COMPBENCH_COMMIT}/examples/dataset/{name}"
    return PinnedFile(name, url, _T2I_COMPLEX_SUBTYPE_SHA256[kind])


# The evaluators' vocabularies, at the commit shared/benchmarks/SOURCES.md records (unchanged since 2024-03).
T2I_COMPBENCH_EVAL_COMMIT = "1b7094991a57f3c22abdd4f6e8ba6c1a15517073"
# numeracy's object list: "singular - plural" per line
T2I_NUMERACY_OBJECTS = PinnedFile(
    "new_objects.txt",
    f"{_RAW}/Karine-Huang/T2I-CompBench/{T2I_COMPBENCH_EVAL_COMMIT}/examples/dataset/new_objects.txt",
    "f39a3d2ff6067d7738673cbf465dc659ccc750776162989a5d9916f1d5f3e231",
)
# UniDet's 722 class names, one per line in class-id order. Upstream ships them inside a torch pickle
# (`UniDet_eval/dataset/detection_features.pt`, key "labels"); `url` is that pickle, `sha256` the derived text's.
def _labels_from_detection_features(pickle: Path) -> bytes:
    import torch

    # weights_only: the restricted unpickler (tensors, lists, strings), never arbitrary code
    labels = torch.load(pickle, map_location="cpu", weights_only=True)["labels"]
    return "".join(f"{label}\n" for label in labels).encode()


UNIDET_LABELS = PinnedFile(
    "unidet_detection_features_labels_722.txt",
    f"https://github.com/Karine-Huang/T2I-CompBench/raw/{T2I_COMPBENCH_EVAL_COMMIT}/UniDet_eval/dataset/"
    "detection_features.pt",
    "ecc3b55237c9fc053a3c59faba3a6b69d7f90b5efe5e611520cbd83755efdd5c",
    derive=_labels_from_detection_features,
)


def all_pinned_files() -> list[PinnedFile]:
    """Every file the project may fetch, for pre-seeding a cache on an offline cluster."""
    t2i = [t2i_compbench_file(c, s) for c, s in _T2I_SHA256]
    subtypes = [t2i_compbench_complex_subtype_file(k) for k in _T2I_COMPLEX_SUBTYPE_SHA256]
    return [GENEVAL_METADATA, GENEVAL_OBJECT_NAMES, PARTI_PROMPTS, *t2i, *subtypes, T2I_NUMERACY_OBJECTS,
            UNIDET_LABELS]
