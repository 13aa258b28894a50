"""The `official` detector backend: run T2I-CompBench's own UniDet scripts (detectron2 is not on PyPI) in a
user-provided checkout and environment, in a subprocess, and read their `vqa_result.json`.

Set-up (once, outside this project): clone Karine-Huang/T2I-CompBench (paper era: 33d6305), build its
environment (detectron2 from source), put the UniDet weights in `UniDet_eval/experts/expert_weights/` and
`dataset/detection_features.pt` where the scripts expect it. Then pass the checkout and that environment's python.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# category -> (script in UniDet_eval/, its result file under --outpath)
SCRIPTS = {
    "spatial": ("2D_spatial_eval.py", "labels/annotation_obj_detection_2d/vqa_result.json"),
    "3d_spatial": ("3D_spatial_eval.py", "labels/annotation_obj_detection_3d/vqa_result.json"),
    "numeracy": ("numeracy_eval.py", "annotation_num/vqa_result.json"),
}


class OfficialRunnerError(RuntimeError):
    """The checkout is missing or the upstream script failed."""


@dataclass(frozen=True)
class OfficialRunner:
    checkout: Path  # the T2I-CompBench clone
    python: str = "python"  # the interpreter of the environment that has detectron2
    timeout_s: int = 24 * 3600

    def run(self, category: str, category_dir: Path, complex_mode: bool = False) -> dict[int, float]:
        """Score `category_dir` (holding `samples/`) with the upstream script; {question_id: score}.

        Stale upstream outputs are removed first: the scripts append nothing, but the 3D script skips its depth
        stage when `labels/depth` already exists, which would reuse old depth maps.
        """
        if category not in SCRIPTS:
            raise ValueError(f"the official runner scores {sorted(SCRIPTS)}, not {category!r}")
        script, result = SCRIPTS[category]
        workdir = Path(self.checkout) / "UniDet_eval"
        if not (workdir / script).exists():
            raise OfficialRunnerError(f"{workdir / script} not found: pass the root of a T2I-CompBench checkout")
        outpath = Path(category_dir).resolve()
        (outpath / result).unlink(missing_ok=True)
        if category == "3d_spatial":
            shutil.rmtree(outpath / "labels" / "depth", ignore_errors=True)
        # upstream parses --complex with type=bool, so any value means True: pass it only for complex mode
        command = [self.python, script, "--outpath", str(outpath)] + (["--complex", "True"] if complex_mode else [])
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=self.timeout_s)
        if done.returncode != 0 or not (outpath / result).exists():
            tail = (done.stdout + done.stderr)[-2000:]
            raise OfficialRunnerError(f"{' '.join(command)} (in {workdir}) failed with exit code {done.returncode}:"
                                      f"\n{tail}")
        return {int(r["question_id"]): float(r["answer"]) for r in json.loads((outpath / result).read_text())}
