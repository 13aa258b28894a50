"""The check every evaluator runs on its images before scoring any: a bad file is named, and nothing is scored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from flux158.eval.errors import BadInputError


def verify_images(paths: Sequence[Path], progress: bool = True) -> None:
    """Open every image and verify it (PIL's `verify`: the file's structure and, for PNG, every chunk's CRC).

    Raises:
        BadInputError: naming the first file that does not verify, and what to do about it.
    """
    for path in tqdm(paths, desc="verify images", unit="img", disable=not progress or len(paths) < 100):
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
            raise BadInputError(f"{path} is not a readable image ({type(e).__name__}: {e}); nothing was scored. "
                                "Delete it and run the generate stage again: it regenerates missing images") from None
