"""A diffusers pipeline directory (``save_pretrained``; a local path or an fsspec URL):
its JSON read in place through ``storage``, and its network checked before a run."""

from __future__ import annotations

import json
import struct
import warnings
from functools import lru_cache

from tilegraph.storage.files import read_text

FILES = {
    "index": "model_index.json",
    "unet": "unet/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


#: The networks tilegraph samples.
NETWORKS = ("UNet2DModel", "UNet2DConditionModel")

#: The autoencoders that decode a latent-diffusion pipeline's samples: ``{subfolder:
#: class}`` as ``model_index.json`` lists them (Stable Diffusion's ``vae``, LDM's ``vqvae``).
AUTOENCODERS = {"vae": "AutoencoderKL", "vqvae": "VQModel"}

#: The ``transformers`` classes tilegraph encodes prompts with (Stable Diffusion 1.x and
#: 2.x): text encoders and tokenizers as ``model_index.json`` names them.
TEXT_ENCODERS = ("CLIPTextModel",)
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")

#: The weights files diffusers' ``from_pretrained`` reads (no ``variant``), in its order
#: of preference: one file, or the index of a sharded checkpoint.
WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)

#: Bytes per element of the safetensors dtypes (others are not size-checked).
SAFETENSORS_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip

#: The largest safetensors header read (the format's own limit is 100 MB).
MAX_HEADER = 100_000_000


@lru_cache(maxsize=16)
def read_pipeline_dir(url: str) -> dict:
    """``{"index", "unet", "scheduler"}``: the directory's ``model_index.json``, its
    network's config and its scheduler's config.

    Raises
    ------
    ValueError
        Naming the missing or unreadable file, or one that is not a JSON object.

    Read once per process and URL (the config check, the model spec and the resource
    estimate all ask; behind a URL each read is three requests). Do not mutate.
    """
    out = {}
    for key, name in FILES.items():
        try:
            out[key] = json.loads(read_text(url, name))
        except FileNotFoundError:
            raise ValueError(f"{url}/{name} not found (a diffusers pipeline directory)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{url}/{name} is not JSON: {err}") from None
        if not isinstance(out[key], dict):
            raise ValueError(
                f"{url}/{name} holds a JSON {type(out[key]).__name__}, not an object of "
                "settings (a diffusers pipeline directory)"
            )
    return out


def sample_shape(unet: dict) -> tuple[int, ...]:
    """``(channels, height, width)`` of a ``unet/config.json``.

    Raises
    ------
    ValueError
        When ``in_channels`` or ``sample_size`` are not positive integers (one or two).
    """
    size, channels = unet.get("sample_size", 32), unet.get("in_channels", 3)
    hw = [size] if not isinstance(size, list) else size
    if len(hw) not in (1, 2) or not all(_positive_int(n) for n in [channels, *hw]):
        raise ValueError(
            "unet/config.json: in_channels and sample_size must be positive integers "
            f"(sample_size may be [height, width]); got in_channels={channels!r}, "
            f"sample_size={size!r}"
        )
    return (int(channels), *(int(n) for n in hw * (3 - len(hw))))


def autoencoder(url: str) -> tuple[str, str] | None:
    """``(subfolder, class name)`` of the autoencoder the directory's ``model_index.json``
    lists (a ``vae`` or ``vqvae`` component), or None for a pixel-space pipeline."""
    index = read_pipeline_dir(url)["index"]
    for sub in AUTOENCODERS:
        entry = index.get(sub)
        if isinstance(entry, list) and len(entry) == 2 and entry[1]:
            return sub, str(entry[1])
    return None


def prompt_encoder(url: str) -> tuple[str, str, int]:
    """``(text encoder class, tokenizer class, hidden size)`` of the directory's prompt
    encoder (``text_encoder/`` and ``tokenizer/`` as ``model_index.json`` lists them).

    Raises
    ------
    ValueError
        When the directory lists none, or classes tilegraph does not encode with.
    """
    index = read_pipeline_dir(url)["index"]
    names = []
    for sub in ("text_encoder", "tokenizer"):
        entry = index.get(sub)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise ValueError(f"model_index.json lists no {sub} (needed to encode prompts)")
        names.append(str(entry[1]))
    if names[0] not in TEXT_ENCODERS or names[1] not in TOKENIZERS:
        raise ValueError(
            f"the directory's text encoder is a {names[0]} with a {names[1]}; tilegraph "
            f"encodes prompts with {' or '.join(TEXT_ENCODERS)} and "
            f"{' or '.join(TOKENIZERS)} (Stable Diffusion 1.x and 2.x)"
        )
    hidden = read_component(url, "text_encoder").get("hidden_size", 512)  # CLIP's default
    return names[0], names[1], int(hidden)


@lru_cache(maxsize=16)
def read_component(url: str, subfolder: str) -> dict:
    """A component's ``<subfolder>/config.json`` (the autoencoder's, the text encoder's;
    read once per process and URL).

    Raises
    ------
    ValueError
        Naming the file when it is missing or not a JSON object.
    """
    name = f"{subfolder}/config.json"
    try:
        out = json.loads(read_text(url, name))
    except FileNotFoundError:
        raise ValueError(f"{url}/{name} not found (model_index.json lists {subfolder})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{url}/{name} is not JSON: {err}") from None
    if not isinstance(out, dict):
        raise ValueError(f"{url}/{name} holds a JSON {type(out).__name__}, not an object")
    return out


def latent_channels(ae: dict) -> int:
    """Channels of the latents an autoencoder config decodes (a ``VQModel`` quantizes
    ``vq_embed_dim`` of them, by default ``latent_channels``)."""
    if ae.get("_class_name") == "VQModel":
        return int(ae.get("vq_embed_dim") or ae.get("latent_channels", 3))
    return int(ae.get("latent_channels", 4))


def image_shape(ae: dict, latent: tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the images an autoencoder config decodes from
    latents of shape ``latent`` ``(C, h, w)``: its decoder upsamples by 2 in every up
    block but the last."""
    blocks = ae.get("block_out_channels", [64])
    n = len(blocks) if isinstance(blocks, list) and blocks else 1
    factor = 2 ** (n - 1)
    return int(ae.get("out_channels", 3)), latent[1] * factor, latent[2] * factor


def decoded_shape(url: str, subfolder: str) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the images the directory's autoencoder in
    ``subfolder`` decodes from its network's samples."""
    latent = sample_shape(read_pipeline_dir(url)["unet"])
    return image_shape(read_component(url, subfolder), latent)


def _positive_int(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0


def check_network(url: str, decoder: str | None = None) -> None:
    """Check the network of the pipeline directory at ``url`` without loading it.

    * ``unet/config.json`` gives a sample shape of positive integers and, where torch
      and diffusers are installed here, builds: the network is constructed on torch's
      ``meta`` device (no memory for its parameters, milliseconds even for a large
      UNet), so every check of diffusers' own constructor runs (``block_out_channels``
      divisible by ``norm_num_groups``, as many blocks as block types, ...);
    * a weights file ``from_pretrained`` reads is there (:data:`WEIGHTS`); a
      ``.safetensors`` file's header is read (not its tensors) and must describe exactly
      the bytes that follow it, with the shapes of the network built above;
    * the network predicts as many channels as it is given (``out_channels``);
    * with ``decoder`` (the autoencoder's subfolder, ``vae`` or ``vqvae``), the same for
      the autoencoder: its config builds and its weights file is there and fits it.

    The weights themselves are not loaded: a Stable Diffusion UNet is 3.4 GB that the
    driver would read and hold for a check, where every worker loads it anyway.

    Raises
    ------
    ValueError
        One line naming the file and what is wrong.
    """
    unet = read_pipeline_dir(url)["unet"]
    ae = None if decoder is None else read_component(url, decoder)
    try:
        channels = sample_shape(unet)[0]
        out = unet.get("out_channels", channels)
        if out != channels:
            raise ValueError(
                f"unet/config.json: out_channels={out!r} differs from in_channels={channels} "
                "(tilegraph needs a network that predicts the noise, epsilon, v or x0, of "
                "its input; a learned-variance network is not supported)"
            )
        parts = [("unet", _network_shapes(unet))]
        if decoder is not None:
            parts.append((decoder, _network_shapes(ae, decoder)))
    except ValueError as exc:
        raise ValueError(f"{url}/{exc}") from None
    fs, root = _fs(url)
    for sub, shapes in parts:
        _check_weights(fs, f"{root.rstrip('/')}/{sub}", url, sub, shapes)


def _check_weights(fs, base: str, url: str, sub: str, shapes: dict | None) -> None:
    """A weights file of component ``sub`` is there and fits the network's ``shapes``."""
    found = next((name for name in WEIGHTS if fs.isfile(f"{base}/{name}")), None)
    if found is None:
        raise ValueError(
            f"{url}/{sub} has no weights file ({' or '.join(WEIGHTS[::2])}): "
            "save the pipeline with save_pretrained"
        )
    if found.endswith(".index.json"):
        _check_shards(fs, base, found, f"{url}/{sub}")
    elif found.endswith(".safetensors"):
        _check_safetensors(fs, f"{base}/{found}", f"{url}/{sub}/{found}", shapes, sub)
    elif fs.size(f"{base}/{found}") == 0:
        raise ValueError(f"{url}/{sub}/{found} is empty")


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(str(url))


def _network_shapes(unet: dict, sub: str = "unet") -> dict[str, tuple[int, ...]] | None:
    """``{parameter name: shape}`` of the network ``<sub>/config.json`` describes, built
    on the meta device; None where torch or diffusers is not installed here (the
    workers check it when they load it).

    Raises
    ------
    ValueError
        diffusers' own message when the network cannot be built from the config.
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        return None
    import diffusers
    import torch
    from diffusers.utils import logging as diffusers_logging

    cls = getattr(diffusers, str(unet.get("_class_name")), None)
    if cls is None:
        raise ValueError(
            f"{sub}/config.json names {unet.get('_class_name')!r}, not a diffusers class"
        )
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # unused keys in the config are not news here
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            net = cls.from_config(unet)
    except Exception as exc:  # diffusers' checks raise ValueError, others TypeError ...
        msg = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"{sub}/config.json does not build a {unet['_class_name']} "
            f"({type(exc).__name__}: {msg})"
        ) from None
    finally:
        diffusers_logging.set_verbosity(level)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _check_safetensors(fs, path: str, shown: str, shapes: dict | None, sub: str = "unet") -> None:
    """The header of a ``.safetensors`` file: an 8-byte length, a JSON object of
    ``{name: {dtype, shape, data_offsets}}`` whose tensors fill the rest of the file."""
    size = fs.size(path)
    head = fs.cat_file(path, start=0, end=8) if size >= 8 else b""
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if not 0 < n <= min(MAX_HEADER, size - 8):
        raise ValueError(f"{shown} is not a safetensors file (its header is cut or corrupt)")
    try:
        header = json.loads(fs.cat_file(path, start=8, end=8 + n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{shown} is not a safetensors file (its header is not JSON)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = (int(v) for v in info["data_offsets"])
            shape = tuple(int(v) for v in info["shape"])
            count = 1
            for v in shape:
                count *= v
            width = SAFETENSORS_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{shown}: the header's entry {name!r} is malformed") from None
        if not 0 <= lo <= hi or (width is not None and hi - lo != count * width):
            raise ValueError(f"{shown}: the header's entry {name!r} is malformed")
        if shapes is not None and name in shapes and shapes[name] != shape:
            raise ValueError(
                f"{shown}: {name} has shape {shape}, but {sub}/config.json builds "
                f"{shapes[name]} (weights of another network?)"
            )
        end = max(end, hi)
    if end != size - 8 - n:
        raise ValueError(
            f"{shown} is cut or corrupt: its header describes {end} bytes of tensors, the "
            f"file holds {size - 8 - n}"
        )


def _check_shards(fs, base: str, index: str, shown: str) -> None:
    """A sharded checkpoint's index names files that are there (``shown``: the
    component's folder as errors name it)."""
    try:
        weight_map = json.loads(fs.cat_file(f"{base}/{index}"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{shown}/{index} is not a checkpoint index (weight_map)") from None
    missing = [s for s in shards if not fs.isfile(f"{base}/{s}")]
    if missing:
        raise ValueError(f"{shown}/{index} names missing shards: {', '.join(missing[:3])}")
