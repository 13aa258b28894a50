"""scripts/fetch_eval_weights.py: the plan names every evaluator's weights; offline, each failure is reported."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_eval_weights.py"


def test_dry_run_lists_every_evaluators_weights():
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--judge-model", "me/sharegpt4v-7b-hf"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert "t2i_compbench: hub Salesforce/blip-vqa-capfilt-large @ c6af15bed424cf343aab3ff3bb31417ba272923a" in out
    assert "t2i_compbench: hub Intel/dpt-hybrid-midas @ 11eaf7a1cf4bd70740697dbc216f98980c0aeb03" in out
    assert "t2i_compbench: hub me/sharegpt4v-7b-hf @ main" in out  # the user's own
    assert any("c9d0c4f2.pth" in line for line in out)  # GenEval's mmdet checkpoint
    clip = "open_clip ViT-L-14/openai @ timm/vit_large_patch14_clip_224.openai 18d0535469bb561bf468d76c1d73aa35156c922b"
    assert f"geneval: {clip} (colors)" in out and f"fidelity: {clip} (CLIP similarity)" in out
    assert "fidelity: torchvision AlexNet (LPIPS backbone)" in out and len(out) == 9


def test_offline_every_missing_item_is_reported_and_the_exit_code_says_so(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", "t2i_compbench", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("FAILED") == 4 and "4 of 4 not fetched" in done.stderr
