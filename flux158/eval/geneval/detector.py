"""GenEval's object detector behind one call: RGB image (H, W, 3) uint8 -> detections per GenEval object name.

`MMDetMask2Former` is the official model family (mmdet 3.x Mask2Former Swin-S COCO instance; the official GenEval
run used the mmdet-2 checkpoint of the same training). `HFMask2Former` is an approximation for users who cannot
build mmcv: transformers' Mask2Former with Meta's `facebook/mask2former-swin-small-coco-instance`, a different
training of the same architecture with its own post-processing, so scores near the 0.3 / 0.9 thresholds shift.
Both return every query's detection (GenEval's `filter_detections` applies the thresholds).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from flux158.eval import pins
from flux158.eval.geneval.classes import COCO_CLASSES, OBJECT_NAMES, RENAMED
from flux158.eval.geneval.rules import Detection
from flux158.eval.geneval.weights import MASK2FORMER_SWIN_S_MMDET3, PinnedFile, trusted_pickle

MMDET_CONFIG = "mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py"
HF_MODEL = "facebook/mask2former-swin-small-coco-instance"
# A shrunk Mask2Former of the same classes and pipeline for CPU tests and `model=tiny` runs (random weights).
TINY_MMDET_OPTIONS = {
    "model.backbone.embed_dims": 16, "model.backbone.depths": [1, 1, 1, 1], "model.backbone.num_heads": [1, 1, 2, 2],
    "model.backbone.init_cfg": None, "model.panoptic_head.in_channels": [16, 32, 64, 128],
    "model.panoptic_head.feat_channels": 32, "model.panoptic_head.out_channels": 32,
    "model.panoptic_head.num_queries": 10,
    "model.panoptic_head.pixel_decoder.encoder.num_layers": 1,
    "model.panoptic_head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.embed_dims": 32,
    "model.panoptic_head.pixel_decoder.encoder.layer_cfg.ffn_cfg.embed_dims": 32,
    "model.panoptic_head.pixel_decoder.encoder.layer_cfg.ffn_cfg.feedforward_channels": 64,
    "model.panoptic_head.pixel_decoder.positional_encoding.num_feats": 16,
    "model.panoptic_head.positional_encoding.num_feats": 16,
    "model.panoptic_head.transformer_decoder.num_layers": 2,
    "model.panoptic_head.transformer_decoder.layer_cfg.self_attn_cfg.embed_dims": 32,
    "model.panoptic_head.transformer_decoder.layer_cfg.cross_attn_cfg.embed_dims": 32,
    "model.panoptic_head.transformer_decoder.layer_cfg.ffn_cfg.embed_dims": 32,
    "model.panoptic_head.transformer_decoder.layer_cfg.ffn_cfg.feedforward_channels": 64,
    "test_dataloader.dataset.pipeline.1.scale": (512, 512),
}


class DetectorUnavailableError(RuntimeError):
    """The detector's library is not installed."""


class Detector(Protocol):
    name: str

    def __call__(self, image: np.ndarray) -> dict[str, list[Detection]]: ...


def detections_by_class(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                        masks: np.ndarray | None) -> dict[str, list[Detection]]:
    """The one adapter from instance arrays (mmdet 3.x `pred_instances`, HF post-processing) to GenEval's
    per-class lists (mmdet 2.x's layout), in the detector's order; label i is `OBJECT_NAMES[i]`."""
    out: dict[str, list[Detection]] = {}
    for i in range(len(scores)):
        box = tuple(float(v) for v in boxes[i][:4])
        out.setdefault(OBJECT_NAMES[int(labels[i])], []).append(
            Detection(box, float(scores[i]), None if masks is None else np.asarray(masks[i], dtype=bool)))
    return out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _trusted_pickle() -> Iterator[None]:
    """mmengine loads checkpoints with torch.load, whose weights-only default rejects the numpy objects in
    OpenMMLab checkpoints; allowed only around a file that `trusted_pickle` just handed out."""
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old


class MMDetMask2Former:
    """mmdet 3.x Mask2Former; `checkpoint=None` keeps random weights (tests), `options` edits the config. The
    checkpoint is unpickled only after `trusted_pickle` accepts it (`trust_checkpoint` skips the full-hash match);
    `checkpoint_sha256` records what was loaded."""

    name = "mmdet"

    def __init__(self, checkpoint: PinnedFile | Path | None = MASK2FORMER_SWIN_S_MMDET3, device: str | None = None,
                 config: str | Path | None = None, options: dict | None = None, cache_dir: Path | None = None,
                 trust_checkpoint: bool = False) -> None:
        try:
            import mmdet
            from mmdet.apis import inference_detector, init_detector
            from mmengine.config import Config
        except ImportError as e:
            raise DetectorUnavailableError(
                f"GenEval's detector needs mmdet 3.3 and mmcv 2.1.0 with ops ({e}): run `bash scripts/install_mmcv.sh`"
                ", or use the approximate transformers detector (geneval.detector=hf)") from None
        path = Path(config) if config else Path(mmdet.__file__).parent / ".mim" / "configs" / MMDET_CONFIG
        cfg = Config.fromfile(str(path))
        if options:
            cfg.merge_from_dict(options)
        self.checkpoint_sha256 = None
        if checkpoint is not None:
            checkpoint, self.checkpoint_sha256 = trusted_pickle(checkpoint, cache_dir, trust_checkpoint)
        self._infer = inference_detector
        with _trusted_pickle():
            self.model = init_detector(cfg, str(checkpoint) if checkpoint else None, device=device or default_device())
        # mmdet's fallback list without a checkpoint spells "traffic_light"; checkpoints carry "traffic light"
        classes = tuple(c.replace("_", " ") for c in self.model.dataset_meta.get("classes", COCO_CLASSES))
        if classes != COCO_CLASSES:
            raise ValueError(f"{path} does not predict the 80 COCO classes in mmdet order")

    def __call__(self, image: np.ndarray) -> dict[str, list[Detection]]:
        # numpy inputs are taken as BGR (what mmcv.imread returns for the official evaluator's file paths)
        result = self._infer(self.model, np.ascontiguousarray(image[..., ::-1]))
        inst = result.pred_instances
        masks = inst.masks.cpu().numpy() if "masks" in inst else None
        return detections_by_class(inst.bboxes.cpu().numpy(), inst.scores.cpu().numpy(),
                                   inst.labels.cpu().numpy(), masks)


class HFMask2Former:
    """transformers Mask2Former (approximate; see the module docstring). `config` builds random weights (tests)."""

    name = "hf"

    def __init__(self, model_id: str = HF_MODEL, revision: str | None = None, device: str | None = None,
                 config=None, cache_dir: Path | None = None) -> None:
        from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

        self.device = device or default_device()
        if config is not None:
            self.model = Mask2FormerForUniversalSegmentation(config)
            self.processor = Mask2FormerImageProcessor()
        else:
            revision = pins.revision(model_id, revision)
            try:
                self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model_id, revision=revision,
                                                                                 cache_dir=cache_dir)
                self.processor = Mask2FormerImageProcessor.from_pretrained(model_id, revision=revision,
                                                                           cache_dir=cache_dir)
            except OSError as e:
                raise DetectorUnavailableError(f"cannot load {model_id} from the hub or its cache ({e})") from None
        self.model.to(self.device).eval()
        names = [self.model.config.id2label[i] for i in range(len(self.model.config.id2label))]
        self._to_geneval = [OBJECT_NAMES.index(RENAMED.get(n, n)) if RENAMED.get(n, n) in OBJECT_NAMES else -1
                            for n in names] if config is None else list(range(len(names)))

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict[str, list[Detection]]:
        h, w = image.shape[:2]
        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt").to(self.device)
        result = self.processor.post_process_instance_segmentation(
            self.model(**inputs), threshold=0.0, target_sizes=[(h, w)], return_binary_maps=True)[0]
        keep = [i for i, s in enumerate(result["segments_info"]) if self._to_geneval[s["label_id"]] >= 0]
        if not keep:
            return {}
        masks = result["segmentation"].cpu().numpy().astype(bool)  # (n, H, W) binary maps
        boxes = np.array([_mask_box(masks[i]) for i in keep]).reshape(-1, 4)
        scores = np.array([result["segments_info"][i]["score"] for i in keep])
        labels = np.array([self._to_geneval[result["segments_info"][i]["label_id"]] for i in keep])
        return detections_by_class(boxes, scores, labels, masks[keep])


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """mmdet's mask2bbox: the tight box of the mask's pixels as (x1, y1, x2 + 1, y2 + 1); zeros when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
