"""The `native` detector backend: an open-vocabulary detector in this environment (OWLv2 through transformers)
queried with UniDet's 722 class names, so the official 2D, 3D and numeracy rules can run without detectron2.

This is an approximation of the official UniDet scores, not a reproduction:
- OWLv2's sigmoid class scores are calibrated differently from UniDet's cascade scores. The rules use the scores
  directly (0.25 x confidence terms and the 2D floor at 0.5), so absolute category scores shift.
- Queries are the bare class names, without UniDet's label hierarchy.

What it keeps from the protocol: the 479-px input space (torchvision `Resize(479, max_size=480)`), the hard-coded
score threshold 0.1, class-wise NMS at IoU 0.5, at most 300 detections, one box able to carry several labels,
detections in descending score order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.ops import batched_nms, box_convert

from flux158.eval.t2i_compbench.depth import TO_DETECTOR_RESOLUTION
from flux158.eval.t2i_compbench.hub import from_hub
from flux158.eval.t2i_compbench.rules import Detection

OWLV2 = "google/owlv2-base-patch16-ensemble"
SCORE_THRESHOLD = 0.1  # upstream's hard-coded UniDet threshold
NMS_IOU = 0.5
MAX_DETECTIONS = 300


class NativeDetector:
    """`detect(image)` -> detections over `labels` in the detector's 479-px image space."""

    def __init__(self, model, tokenizer, image_processor, labels: Sequence[str], device: str | None = None,
                 score_threshold: float = SCORE_THRESHOLD, query_batch: int = 256) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.image_processor = model.to(self.device).eval(), image_processor
        self.labels, self.score_threshold = list(labels), score_threshold
        self.query_embeds = self._embed_queries(tokenizer, query_batch)

    @classmethod
    def from_pretrained(cls, labels: Sequence[str], model_id: str = OWLV2, revision: str | None = None,
                        device: str | None = None, cache_dir: Path | None = None) -> NativeDetector:
        from transformers import AutoTokenizer, Owlv2ForObjectDetection, Owlv2ImageProcessor

        model, tokenizer, processor = from_hub(model_id, Owlv2ForObjectDetection, AutoTokenizer, Owlv2ImageProcessor,
                                               revision=revision, cache_dir=cache_dir)
        return cls(model, tokenizer, processor, labels, device)

    @torch.no_grad()
    def _embed_queries(self, tokenizer, batch: int) -> torch.Tensor:
        """The class-name embeddings, computed once (OWL's text tower is independent of the image)."""
        length = self.model.config.text_config.max_position_embeddings
        embeds = []
        for start in range(0, len(self.labels), batch):
            text = tokenizer(self.labels[start:start + batch], padding="max_length", truncation=True,
                             max_length=length, return_tensors="pt").to(self.device)
            embeds.append(self.model.owlv2.get_text_features(**text).pooler_output)
        return torch.cat(embeds)

    @torch.no_grad()
    def scores_and_boxes(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch class probabilities (patches, labels) and xyxy boxes (patches, 4) in `image`'s pixels."""
        pixels = self.image_processor(images=image, return_tensors="pt").pixel_values.to(self.device)
        feature_map, _ = self.model.image_embedder(pixel_values=pixels)
        feats = feature_map.flatten(1, 2)
        mask = torch.ones(1, len(self.labels), dtype=torch.bool, device=self.device)
        logits, _ = self.model.class_predictor(feats, self.query_embeds[None], mask)
        boxes = self.model.box_predictor(feats, feature_map)[0]
        # OWLv2 pads to a square at the bottom/right, so normalised boxes are in units of the longer side
        side = max(image.width, image.height)
        boxes = box_convert(boxes.float(), "cxcywh", "xyxy") * side
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
        return logits[0].float().sigmoid(), boxes

    def detect(self, image: Image.Image) -> list[Detection]:
        """Detections of one image at the detector resolution, best first."""
        image = TO_DETECTOR_RESOLUTION(image.convert("RGB"))
        probs, boxes = self.scores_and_boxes(image)
        return detections_from_scores(probs, boxes, self.labels, self.score_threshold)


def detections_from_scores(probs: torch.Tensor, boxes: torch.Tensor, labels: Sequence[str],
                           score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
                           max_detections: int = MAX_DETECTIONS) -> list[Detection]:
    """Every (box, class) pair above the threshold, class-wise NMS, the best `max_detections`, best first."""
    patch, cls = (probs > score_threshold).nonzero(as_tuple=True)
    scores = probs[patch, cls]
    keep = batched_nms(boxes[patch].double(), scores.double(), cls, nms_iou)[:max_detections]
    return [Detection(labels[c], tuple(boxes[p].tolist()), float(s))
            for p, c, s in zip(patch[keep].tolist(), cls[keep].tolist(), scores[keep].tolist(), strict=True)]
