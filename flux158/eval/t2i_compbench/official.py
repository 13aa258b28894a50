"""The `official` backends: run T2I-CompBench's own scripts in a user-provided checkout and environment, in a
subprocess, and read their `vqa_result.json`. UniDet (detectron2 is not on PyPI) scores spatial, 3d_spatial and
numeracy; the ShareGPT4V-CoT script (`MLLM_eval/ShareGPT4V-CoT_eval/Share_eval.py`, its own `share4v` package)
is the S-CoT judge.

Set-up (once, outside this project): clone Karine-Huang/T2I-CompBench (paper era: 33d6305), build its
environment (detectron2 from source), put the UniDet weights in `UniDet_eval/experts/expert_weights/` and
`dataset/detection_features.pt` where the scripts expect it; for S-CoT install `MLLM_eval/ShareGPT4V-CoT_eval`
(`pip install -e .`) in an environment that can load `Lin-Chen/ShareGPT4V-7B`. Then pass the checkout and that
environment's python (one runner per environment).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from flux158.eval.t2i_compbench.judge import upstream_category

# category -> (script in UniDet_eval/, its result file under --outpath)
SCRIPTS = {
    "spatial": ("2D_spatial_eval.py", "labels/annotation_obj_detection_2d/vqa_result.json"),
    "3d_spatial": ("3D_spatial_eval.py", "labels/annotation_obj_detection_3d/vqa_result.json"),
    "numeracy": ("numeracy_eval.py", "annotation_num/vqa_result.json"),
}
JUDGE_DIR, JUDGE_SCRIPT, JUDGE_RESULT = "MLLM_eval/ShareGPT4V-CoT_eval", "Share_eval.py", "sharegpt4v/vqa_result.json"


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
        return self._run(command, workdir, outpath / result)

    def judge(self, category: str, category_dir: Path) -> dict[int, float]:
        """S-CoT scores of `category_dir` from upstream's ShareGPT4V-CoT script (chain of thought on), divided by
        100 to the paper's 0-1 scale; {question_id: score}."""
        upstream = upstream_category(category)
        workdir = Path(self.checkout) / JUDGE_DIR
        if not (workdir / JUDGE_SCRIPT).exists():
            raise OfficialRunnerError(f"{workdir / JUDGE_SCRIPT} not found: pass the root of a T2I-CompBench checkout")
        outpath = Path(category_dir).resolve()
        (outpath / JUDGE_RESULT).unlink(missing_ok=True)
        command = [self.python, JUDGE_SCRIPT, "--file-path", str(outpath), "--category", upstream, "--cot"]
        return {k: v / 100 for k, v in self._run(command, workdir, outpath / JUDGE_RESULT).items()}

    def _run(self, command: list[str], workdir: Path, result: Path) -> dict[int, float]:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=self.timeout_s)
        if done.returncode != 0 or not result.exists():
            tail = (done.stdout + done.stderr)[-2000:]
            raise OfficialRunnerError(f"{' '.join(command)} (in {workdir}) failed with exit code {done.returncode}:"
                                      f"\n{tail}")
        return {int(r["question_id"]): float(r["answer"]) for r in json.loads(result.read_text())}
