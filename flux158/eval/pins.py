"""Every evaluator model's hub revision, in one place: the commit each `from_pretrained` loads, recorded in
`metrics.json` and fetched by `scripts/fetch_eval_weights.py`. Changing a pin is a one-line change here.

The commits were read from Hugging Face cache paths (`models--<org>--<name>/snapshots/<commit>`) published by
independent projects, since this build machine cannot reach the hub; `python scripts/fetch_eval_weights.py
--check-pins` confirms each against the hub and prints the current commit of `main` beside it. A listed repo without
a pin would load `main` and say so (a warning, and `unpinned` in `metrics.json`); open_clip tags load their hub file
at the pin of the repo the tag names (`flux158/eval/open_clip_weights.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubPin:
    repo: str
    revision: str | None  # a commit hash; None: not pinned yet (loads `main`)
    evidence: str


PINS = {pin.repo: pin for pin in (
    HubPin("Salesforce/blip-vqa-capfilt-large", "c6af15bed424cf343aab3ff3bb31417ba272923a",
           "T2I-CompBench B-VQA; snapshot commit in one public project's cache path"),
    HubPin("openai/clip-vit-base-patch32", "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268",
           "T2I-CompBench CLIPScore; the same commit pinned or cached by more than ten public projects"),
    HubPin("google/owlv2-base-patch16-ensemble", "cfd3195ba4ea9592eec887ded089f4c08eff231d",
           "native UniDet stand-in; the commit cached by several public projects"),
    HubPin("Intel/dpt-hybrid-midas", "11eaf7a1cf4bd70740697dbc216f98980c0aeb03",
           "T2I-CompBench 3D spatial; one of the two commits public cache paths hold (the other 530c450); "
           "--check-pins shows main"),
    HubPin("facebook/mask2former-swin-small-coco-instance", "f77f179fc62b98f6734481ebbef5bceeb1e7f10b",
           "GenEval's approximate `hf` detector; the hub page's upload commit of the weights (Jan 2023)"),
    HubPin("timm/vit_large_patch14_clip_224.openai", "18d0535469bb561bf468d76c1d73aa35156c922b",
           "open_clip ViT-L-14/openai (GenEval colors, CLIP fidelity), loaded by flux158/eval/open_clip_weights.py; "
           "the commit in a public project's open_clip cache path"),
)}


def revision(repo: str, requested: str | None = None) -> str | None:
    """The revision to load `repo` at: `requested` if given, else its pin (None: `main`). Repos this file does not
    list (a user's own judge or detector) load as given."""
    if requested is not None:
        return requested
    pin = PINS.get(repo)
    if pin is None:
        return None
    if pin.revision is None:
        log.warning("%s is not pinned to a commit: loading `main` (flux158/eval/pins.py)", repo)
        return None
    return pin.revision


def recorded(repos: list[str]) -> dict[str, str]:
    """What `metrics.json` records for the models of an evaluation: each repo's pinned commit, `unpinned` (a listed
    repo without a pin: `main`), or `as given` (a user's own model)."""
    return {repo: ("as given" if repo not in PINS else PINS[repo].revision or "unpinned") for repo in repos}
