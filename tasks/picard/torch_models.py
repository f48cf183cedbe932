"""PyTorch networks as diffusion models: the adapter the samplers call, and diffusers'
pipeline directories.

The samplers keep their samples in NumPy or CuPy arrays; :class:`TorchDenoiser` hands
them to the network through DLPack (no host copy of a CuPy array on the GPU, none of a
NumPy array on the CPU), evaluates under ``torch.inference_mode`` in the network's own
dtype (float32, float16 or bfloat16) and converts what the network predicts
(``epsilon``, ``v_prediction`` or ``sample``, diffusers' ``prediction_type``) into the
noise prediction ``eps``, returned in the samples' namespace and dtype.

torch and diffusers (and ``transformers``, for prompts) are imported only when a model
is built (the ``torch`` extra).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
from array_api_compat import array_namespace

#: diffusers' ``prediction_type`` values.
PREDICTIONS = ("epsilon", "v_prediction", "sample")

#: Model precisions (``torch`` dtype names).
TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _to_torch(a, device):
    import torch

    try:
        out = torch.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError):  # read-only or odd NumPy arrays
        out = torch.as_tensor(np.ascontiguousarray(a))
    return out.to(device)


class TorchDenoiser:
    """A PyTorch network ``net(x, t)`` as a :class:`~.models.DiffusionModel`.

    Parameters
    ----------
    net : callable
        A ``torch.nn.Module`` (or any callable on torch tensors) mapping noised samples
        ``(N, *sample_shape)`` and integer timesteps ``(N,)`` to its prediction of the
        same shape; a diffusers output object (``.sample``) or a tuple (first entry) is
        unpacked.
    abar : numpy.ndarray, shape (T_train,)
        ``alphas_cumprod`` of the training schedule (converts ``v`` and ``x0``
        predictions into noise predictions).
    sample_shape : tuple of int
    prediction_type : {"epsilon", "v_prediction", "sample"}
    dtype : str
        Precision the network evaluates in (a copy of the module is cast to it, and set
        to evaluation mode, when it is not already so).
    device : str
        torch device of the network (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
    guidance_scale : float
        Classifier-free guidance of a class-conditional network (``net(x, t,
        class_labels=...)``): with ``labels`` and a scale other than 1, the
        conditional and the unconditional (``null_class``) rows go into the same batched
        call and ``eps = eps_u + scale (eps_c - eps_u)``; 1: the conditional prediction.
    null_class : int or None
        The class the network was trained with as "no class" (for guidance).
    cond, uncond : numpy.ndarray, optional
        A cross-attention network's conditioning (``net(x, t,
        encoder_hidden_states=...)``, a ``UNet2DConditionModel``): ``cond`` (K, seq,
        dim), of which row ``labels[r]`` conditions row ``r``; ``uncond`` (seq, dim) the
        unconditional embedding that guidance needs.
    """

    def __init__(
        self,
        net: Callable,
        abar: np.ndarray,
        sample_shape: tuple[int, ...],
        prediction_type: str = "epsilon",
        dtype: str = "float32",
        device: str = "cpu",
        guidance_scale: float = 1.0,
        null_class: int | None = None,
        cond=None,
        uncond=None,
    ):
        import torch

        if prediction_type not in PREDICTIONS:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTIONS)} "
                f"(got {prediction_type!r})"
            )
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(TORCH_DTYPES)} (got {dtype!r})")
        self.dtype = getattr(torch, dtype)
        self.device = _torch_device(device)
        if isinstance(net, torch.nn.Module):  # a copy: the caller's module stays as it is
            net = _placed(net, self.dtype, self.device, copy_first=True)
        self.net = net
        self.abar = np.array(abar, dtype=np.float64)
        self.sample_shape = tuple(int(n) for n in sample_shape)
        self.prediction_type = prediction_type
        self.guidance_scale = float(guidance_scale)
        self.null_class = null_class
        self.cond = (
            None
            if cond is None
            else torch.as_tensor(np.asarray(cond)).to(device=self.device, dtype=self.dtype)
        )
        self.uncond = (
            None
            if uncond is None
            else torch.as_tensor(np.asarray(uncond)).to(device=self.device, dtype=self.dtype)
        )
        if self.guidance_scale != 1.0 and null_class is None and self.uncond is None:
            raise ValueError("guidance_scale other than 1 needs null_class (or uncond)")

    def _guided(self, xt, tt, key: str, cond, uncond):
        """The network on ``key=cond``; with guidance, the conditional and the
        unconditional halves in one call, ``u + scale (c - u)``."""
        import torch

        if self.guidance_scale == 1.0:
            return _sample(self.net(xt, tt, **{key: cond}))
        n = xt.shape[0]
        both = _sample(
            self.net(torch.cat([xt, xt]), torch.cat([tt, tt]), **{key: torch.cat([cond, uncond])})
        )
        return both[n:] + self.guidance_scale * (both[:n] - both[n:])

    def eps(self, x, t, labels=None):
        """Predicted noise of ``x`` (N, *sample_shape) at timesteps ``t`` (N,), in the
        namespace and dtype of ``x``; ``labels`` (N,) int: the rows' classes for a
        class-conditional network (guided by ``guidance_scale``)."""
        import torch

        xp = array_namespace(x)
        xt = _to_torch(x, self.device).to(self.dtype)
        tt = _to_torch(t, self.device).to(torch.int64)
        if labels is not None:  # classes, or rows of cond
            lt = torch.as_tensor(np.asarray(_host(labels), dtype=np.int64), device=self.device)
        with torch.inference_mode():
            if labels is None:
                out = _sample(self.net(xt, tt))
            elif self.cond is not None:  # cross-attention: rows of cond, against uncond
                ehs = self.cond[lt]
                un = None if self.uncond is None else self.uncond[None].expand_as(ehs)
                out = self._guided(xt, tt, "encoder_hidden_states", ehs, un)
            else:  # class embeddings, against the null class
                null = None if self.null_class is None else torch.full_like(lt, self.null_class)
                out = self._guided(xt, tt, "class_labels", lt, null)
            out = out.to(_torch_dtype(x.dtype)).contiguous()
            if type(x).__module__.split(".")[0] == "numpy":  # host samples, a GPU network
                out = out.cpu()
        pred = xp.from_dlpack(out)
        if self.prediction_type == "epsilon":
            return pred
        ab = np.asarray(self.abar[np.asarray(_host(t), dtype=np.int64)])
        shape = (-1,) + (1,) * (x.ndim - 1)
        sa = xp.reshape(xp.asarray(np.sqrt(ab), dtype=x.dtype), shape)
        sb = xp.reshape(xp.asarray(np.sqrt(1.0 - ab), dtype=x.dtype), shape)
        if self.prediction_type == "v_prediction":
            return sa * pred + sb * x
        return (x - sa * pred) / sb  # "sample": the network predicts x0


def _torch_device(device: str):
    """``torch.device(device)``, with a bare ``"cuda"`` resolved to the current GPU (so
    that comparing it with a parameter's device means what it says)."""
    import torch

    out = torch.device(device)
    if out.type == "cuda" and out.index is None:
        out = torch.device("cuda", torch.cuda.current_device())
    return out


def _placed(net, dtype, device, copy_first: bool):
    """``net`` on ``device`` in ``dtype`` and in evaluation mode: ``net`` itself where it
    is so already, else moved and cast (a copy first with ``copy_first``). Only where
    needed: diffusers warns on every cast to a dtype, and the float32 parameters of
    modules diffusers keeps in float32 (loaded with ``torch_dtype``) make no cast."""
    keep = tuple(getattr(net, "_keep_in_fp32_modules", None) or ())
    named = [*net.named_parameters(), *net.named_buffers()]
    recast = any(
        p.is_floating_point() and p.dtype != dtype and not any(k in n.split(".") for k in keep)
        for n, p in named
    )
    moved = any(p.device != device for _, p in named)
    if net.training or recast or moved:
        net = (copy.deepcopy(net) if copy_first else net).to(device=device)
        if recast:
            net = net.to(dtype=dtype)
    return net.eval()


def _sample(out):
    """The tensor of a network's output (diffusers' ``.sample``, a tuple's first)."""
    out = getattr(out, "sample", out)
    return out[0] if isinstance(out, tuple) else out


def _host(t):
    return t.get() if hasattr(t, "get") else np.asarray(t)


def _torch_dtype(dtype):
    """The torch dtype of a NumPy/CuPy dtype."""
    import torch

    return getattr(torch, np.dtype(dtype).name)


def load_component(path: str, subfolder: str, class_name: str, dtype: str | None = None):
    """A network of a local diffusers pipeline directory (``unet/``, ``vae/``, ...), on
    the CPU, in ``dtype`` (a ``torch`` dtype name; default: as stored), cast while
    loading as diffusers recommends (modules it keeps in float32 stay so)."""
    import importlib.util

    import diffusers
    import torch

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(
            f"{subfolder}/config.json names {class_name!r}, which diffusers does not have"
        )
    kw = {} if dtype is None else {"torch_dtype": getattr(torch, dtype)}
    # without accelerate, diffusers' default (True) only warns and falls back to False
    lean = importlib.util.find_spec("accelerate") is not None
    return cls.from_pretrained(str(path), subfolder=subfolder, low_cpu_mem_usage=lean, **kw)


def load_unet(path: str, class_name: str, dtype: str | None = None):
    """The network of a local diffusers pipeline directory (``unet/``): see
    :func:`load_component`."""
    return load_component(path, "unet", class_name, dtype)


def encode_prompts(
    path: str,
    prompts: list[str],
    negative_prompt: str | None = "",
    text_encoder: str = "CLIPTextModel",
    tokenizer: str = "CLIPTokenizer",
) -> tuple[np.ndarray, np.ndarray | None]:
    """The text encoder's states of ``prompts`` (and of ``negative_prompt`` for guidance)
    as diffusers' Stable Diffusion pipeline computes them (``encode_prompt``): each text
    tokenized and padded to the tokenizer's ``model_max_length`` (truncated there), the
    encoder's last hidden states, with the attention mask only where the encoder's config
    asks for it (``use_attention_mask``), in float32 on the CPU.

    Parameters
    ----------
    path : str
        A local pipeline directory with ``text_encoder/`` and ``tokenizer/``.
    prompts : list of str
        ``K`` texts.
    negative_prompt : str or None
        The unconditional text (``""``: diffusers' default); None: no unconditional
        states.
    text_encoder, tokenizer : str
        The ``transformers`` classes the directory's ``model_index.json`` names.

    Returns
    -------
    cond : numpy.ndarray, shape (K, seq, hidden)
    uncond : numpy.ndarray, shape (seq, hidden), or None
    truncated : list of int
        The prompts (indices; ``-1``: the negative prompt) longer than the tokenizer's
        ``model_max_length`` tokens, whose end the encoder did not see (diffusers warns).
    """
    import torch
    import transformers

    tok = getattr(transformers, tokenizer).from_pretrained(str(path), subfolder="tokenizer")
    enc = getattr(transformers, text_encoder).from_pretrained(
        str(path), subfolder="text_encoder", torch_dtype=torch.float32
    )
    enc.eval()
    use_mask = bool(getattr(enc.config, "use_attention_mask", False))

    def states(texts: list[str]) -> np.ndarray:
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            out = enc(ids.input_ids, attention_mask=ids.attention_mask if use_mask else None)
        return out[0].float().numpy()

    texts = list(prompts) + ([] if negative_prompt is None else [negative_prompt])
    lengths = [len(ids) for ids in tok(texts).input_ids]
    truncated = [i if i < len(prompts) else -1
                 for i, n in enumerate(lengths) if n > tok.model_max_length]  # fmt: skip
    cond = states(list(prompts))
    uncond = None if negative_prompt is None else states([negative_prompt])[0]
    return cond, uncond, truncated


class LatentDecoder:
    """A diffusers autoencoder (``AutoencoderKL`` or ``VQModel``) that turns a
    latent-diffusion sampler's latents into images, as diffusers' pipelines do:
    ``vae.decode(z / scaling_factor + shift_factor)`` (with per-channel statistics,
    ``vae.decode(z * latents_std / scaling_factor + latents_mean)``), then ``x / 2 + 0.5``
    clipped to [0, 1].

    Parameters
    ----------
    net : torch.nn.Module
        The autoencoder (its ``decode`` method is called); moved to ``device`` and cast to
        ``dtype`` in place where it is not there already (it becomes the decoder's own:
        no copy of a large VAE).
    scaling_factor : float
        The autoencoder config's ``scaling_factor`` (latents were scaled by it in training).
    shift_factor : float, optional
        The config's ``shift_factor`` (Stable Diffusion 3's VAE), added after unscaling.
    latents_mean, latents_std : sequence of float, optional
        The config's per-channel latent statistics (both or neither).
    dtype, device : str
        As for :class:`TorchDenoiser`.
    """

    def __init__(self, net, scaling_factor: float, shift_factor: float | None = None,
                 dtype: str = "float32", device: str = "cpu", latents_mean=None,
                 latents_std=None):  # fmt: skip
        import torch

        self.dtype = getattr(torch, dtype)
        self.device = _torch_device(device)
        self.net = _placed(net, self.dtype, self.device, copy_first=False)
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = None if shift_factor is None else float(shift_factor)
        self.stats = None
        if latents_mean is not None and latents_std is not None:
            self.stats = tuple(
                torch.tensor(v, dtype=self.dtype, device=self.device).reshape(1, -1, 1, 1)
                for v in (latents_mean, latents_std)
            )

    def __call__(self, z):
        """Images ``(N, C_img, H, W)`` in [0, 1] of latents ``z`` ``(N, C, h, w)``, in
        the namespace and dtype of ``z``."""
        import torch

        xp = array_namespace(z)
        zt = _to_torch(z, self.device).to(self.dtype)
        if self.stats is not None:
            zt = zt * self.stats[1] / self.scaling_factor + self.stats[0]
        else:
            zt = zt / self.scaling_factor
            if self.shift_factor is not None:
                zt = zt + self.shift_factor
        with torch.inference_mode():
            img = _sample(self.net.decode(zt))
            img = (img / 2 + 0.5).clamp(0, 1).to(_torch_dtype(z.dtype)).contiguous()
            if type(z).__module__.split(".")[0] == "numpy":
                img = img.cpu()
        return xp.from_dlpack(img)
