"""A diffusers pipeline directory (``save_pretrained``; a local path or an fsspec URL):
its JSON read in place through ``storage``."""

from __future__ import annotations

import json

from tilegraph.storage.files import read_text

FILES = {
    "index": "model_index.json",
    "unet": "unet/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


def read_pipeline_dir(url: str) -> dict:
    """``{"index", "unet", "scheduler"}``: the directory's ``model_index.json``, its
    network's config and its scheduler's config.

    Raises
    ------
    ValueError
        Naming the missing or unreadable file.
    """
    out = {}
    for key, name in FILES.items():
        try:
            out[key] = json.loads(read_text(url, name))
        except FileNotFoundError:
            raise ValueError(f"{url}/{name} not found (a diffusers pipeline directory)") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{url}/{name} is not JSON: {err}") from None
    return out
