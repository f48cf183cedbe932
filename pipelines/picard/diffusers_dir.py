"""A diffusers pipeline directory (``save_pretrained``; a local path or an fsspec URL):
its JSON read in place through ``storage``."""

from __future__ import annotations

import json
from functools import lru_cache

from tilegraph.storage.files import read_text

FILES = {
    "index": "model_index.json",
    "unet": "unet/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


#: The networks tilegraph samples.
NETWORKS = ("UNet2DModel", "UNet2DConditionModel")


@lru_cache(maxsize=16)
def read_pipeline_dir(url: str) -> dict:
    """``{"index", "unet", "scheduler"}``: the directory's ``model_index.json``, its
    network's config and its scheduler's config.

    Raises
    ------
    ValueError
        Naming the missing or unreadable file.

    Read once per process and URL (the config check, the model spec and the resource
    estimate all ask; behind a URL each read is three requests). Do not mutate.
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


def sample_shape(unet: dict) -> tuple[int, ...]:
    """``(channels, height, width)`` of a ``unet/config.json``."""
    size = unet.get("sample_size", 32)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return (int(unet.get("in_channels", 3)), *(int(n) for n in hw))
