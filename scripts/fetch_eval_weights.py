"""Download every evaluator's weights once, into the caches the evaluators read, so that scoring runs offline
(e.g. on GPU nodes without internet: run this on a login node first).

    python scripts/fetch_eval_weights.py [--only geneval t2i_compbench fidelity] [--cache-dir outputs/cache/eval]
                                         [--judge-model <hub id of a LLaVA-format ShareGPT4V>] [--dry-run]

`--cache-dir` must match the runs' `paths.cache_dir`/eval (the default is the default;
`python -m flux158.eval.t2i_compbench` reads the Hugging Face default cache, so pass
`--cache-dir ~/.cache/huggingface/hub` for it). The LPIPS backbone goes to
torch.hub's directory ($TORCH_HOME). Each item is verified as its library does: OpenMMLab's sha256 prefix for the
mmdet checkpoint, torchvision's hash for AlexNet, the hub's ETags for Hugging Face files. The mmdet checkpoint is a
pickle: its full sha256 is printed, to compare with a trusted copy and pin in flux158/eval/geneval/weights.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flux158.eval import pins  # noqa: E402
from flux158.eval.geneval.weights import MASK2FORMER_SWIN_S_MMDET3  # noqa: E402
from flux158.eval.t2i_compbench.bvqa import BLIP_VQA  # noqa: E402
from flux158.eval.t2i_compbench.clipscore import CLIP_B32  # noqa: E402
from flux158.eval.t2i_compbench.depth import DPT_HYBRID  # noqa: E402
from flux158.eval.t2i_compbench.native import OWLV2  # noqa: E402

GROUPS = ("geneval", "t2i_compbench", "fidelity")


def _hub(repo_id: str, cache_dir: Path) -> Callable[[], object]:
    def fetch():
        from huggingface_hub import snapshot_download

        # the pinned commit (flux158/eval/pins.py), the PyTorch weights and their configs; not the
        # TensorFlow/Flax/ONNX copies some repos also hold
        return snapshot_download(repo_id, revision=pins.revision(repo_id), cache_dir=cache_dir,
                                 ignore_patterns=["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "*.mlmodel"])

    return fetch


def check_pins(api=None) -> int:
    """Confirm each pin against the hub, and print the current commit of `main` for every repo: a maintainer with
    hub access pastes a new or confirmed commit into flux158/eval/pins.py."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    bad = 0
    for repo, pin in pins.PINS.items():
        try:
            main = api.model_info(repo).sha
            if pin.revision is not None:
                api.model_info(repo, revision=pin.revision)
            state = "unpinned" if pin.revision is None else ("pinned = main" if pin.revision == main else
                                                              f"pinned {pin.revision} (exists)")
            print(f"{repo}: main is {main}; {state}")
        except Exception as e:  # one unreachable repo must not hide the others
            bad += 1
            print(f"{repo}: cannot confirm {pin.revision or 'main'}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2 if bad else 0


def _open_clip(model: str, pretrained: str, cache_dir: Path) -> Callable[[], object]:
    def fetch():
        from flux158.eval.open_clip_weights import create_pinned

        return create_pinned(model, pretrained, cache_dir)  # the file at the tag's pinned commit

    return fetch


def _open_clip_revision(model: str = "ViT-L-14", pretrained: str = "openai") -> str:
    from flux158.eval.open_clip_weights import tag_source

    source = tag_source(model, pretrained)
    return "as given" if source is None else f"{source[0]} {pins.revision(source[0]) or 'main'}"


def _mmdet(cache_dir: Path) -> Callable[[], object]:
    def fetch():
        from flux158.eval.geneval.weights import fetch as fetch_pinned
        from flux158.eval.geneval.weights import sha256_of

        path = fetch_pinned(MASK2FORMER_SWIN_S_MMDET3, cache_dir)
        pinned = "pinned" if MASK2FORMER_SWIN_S_MMDET3.fully_pinned else "not pinned yet: compare, then pin it"
        print(f"        {path.name}: sha256 {sha256_of(path)} ({pinned})")
        return path

    return fetch


def _alexnet() -> object:
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)


def plan(groups: list[str], cache_dir: Path, judge_model: str | None = None) -> list[tuple[str, str, Callable]]:
    """(group, what, fetch) for every weight file the chosen evaluators read."""
    items = []
    if "geneval" in groups:
        items += [("geneval", f"mmdet {MASK2FORMER_SWIN_S_MMDET3.filename}", _mmdet(cache_dir)),
                  ("geneval", f"open_clip ViT-L-14/openai @ {_open_clip_revision()} (colors)",
                   _open_clip("ViT-L-14", "openai", cache_dir))]
    if "t2i_compbench" in groups:
        repos = [BLIP_VQA, CLIP_B32, DPT_HYBRID, OWLV2] + ([judge_model] if judge_model else [])
        items += [("t2i_compbench", f"hub {repo} @ {pins.revision(repo) or 'main'}", _hub(repo, cache_dir))
                  for repo in repos]
    if "fidelity" in groups:
        items += [("fidelity", "torchvision AlexNet (LPIPS backbone)", _alexnet),
                  ("fidelity", f"open_clip ViT-L-14/openai @ {_open_clip_revision()} (CLIP similarity)",
                   _open_clip("ViT-L-14", "openai", cache_dir))]
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    ap.add_argument("--cache-dir", type=Path, default=REPO / "outputs" / "cache" / "eval")
    ap.add_argument("--judge-model", help="also fetch this hub repo (a LLaVA-format ShareGPT4V conversion)")
    ap.add_argument("--dry-run", action="store_true", help="list what would be fetched")
    ap.add_argument("--check-pins", action="store_true",
                    help="confirm flux158/eval/pins.py against the hub and print each repo's current commit")
    args = ap.parse_args(argv)
    if args.check_pins:
        return check_pins()
    items = plan(args.only, args.cache_dir, args.judge_model)
    failed = []
    for group, what, fetch in items:
        if args.dry_run:
            print(f"{group}: {what}")
            continue
        try:
            fetch()
            print(f"ok      {group}: {what}")
        except Exception as e:  # report every item, then fail: one unreachable file should not hide the others
            failed.append(what)
            print(f"FAILED  {group}: {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(items)} not fetched (offline? HF_HUB_OFFLINE set? no access?)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
