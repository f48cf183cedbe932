"""The model of a ``picard`` run as a picklable spec for the worker replicas.

``gmm`` is built from the config. ``digits`` is trained by the run itself (the
``train`` step, one task on the executor) on scikit-learn's 8x8 digits; its weights go
to the run store as Zarr arrays ``model/w{i}``, ``model/b{i}`` and the replicas load
them from there. A later run can reuse them with ``digits.weights_from=<run path>``.
"""

from __future__ import annotations

import numpy as np
from tilegraph import storage
from tilegraph.tasks.picard.models import DiffusionModel, GaussianMixture
from tilegraph.tasks.picard.training import train_denoiser
from tilegraph.tasks.picard.unet_training import train_unet

from .config import PicardConfig
from .worker import build_model

N_FREQ = 8
DIGITS_SHAPE = (8, 8)


def digits_data() -> np.ndarray:
    """scikit-learn's 8x8 digits scaled from [0, 16] to [-1, 1], shape (1797, 64)."""
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float64) / 8.0 - 1.0


def gmm_model(cfg: PicardConfig, abar: np.ndarray) -> GaussianMixture:
    """The exact mixture model the config describes."""
    g = cfg.gmm
    w = None if g.weights is None else np.asarray(g.weights, dtype=np.float64)
    return GaussianMixture.random(
        g.dim,
        g.components,
        g.spread,
        abar,
        mean_scale=g.mean_scale,
        seed=g.seed,
        weights=None if w is None else w / w.sum(),
    )


def _train(data, abar, hidden, epochs, repeats, seed):
    model, losses = train_denoiser(
        data, abar, hidden, epochs, repeats, seed, sample_shape=DIGITS_SHAPE, n_freq=N_FREQ
    )
    return model.weights, model.biases, losses


def _mlp_spec(attrs: dict, store_like, abar) -> dict:
    """The replicas' spec of the MLP whose weights ``store_like`` holds under ``model/``
    (``attrs``: that group's attributes)."""
    n = int(attrs["layers"])
    return {
        "kind": "mlp",
        "layers": n,
        "refs": {f"{k}{i}": store_like.array(f"model/{k}{i}") for i in range(n) for k in "wb"},
        "train_steps": int(attrs["train_steps"]),
        "sample_shape": tuple(attrs["sample_shape"]),
        "n_freq": int(attrs["n_freq"]),
    }


def _unet_refs(attrs: dict, store_like, abar, dtype: str) -> dict:
    """The replicas' spec of the UNet whose weights ``store_like`` holds under
    ``model/`` (``attrs``: that group's attributes)."""
    names = list(attrs["names"])
    return {
        "kind": "digits-unet",
        "config": dict(attrs["config"]),
        "names": names,
        "shapes": [tuple(sh) for sh in attrs["shapes"]],
        "refs": [store_like.array(f"model/p{i}") for i in range(len(names))],
        "abar": abar,
        "dtype": dtype,
    }


def _unet_spec(cfg: PicardConfig, abar: np.ndarray, ctx) -> tuple[dict, dict]:
    """``digits-unet``: trains (one task on the executor) unless the run store, or
    ``digits_unet.weights_from``, already holds the trained UNet; the weights go to
    ``model/p{i}`` (float32 Zarr arrays, names in the group's attributes)."""
    u, dtype = cfg.digits_unet, "float32"
    info = {"sample_shape": [1, 8, 8]}
    if u.weights_from:
        src = storage.RunStore(u.weights_from)
        attrs = src.node_attrs("model")
        if not attrs.get("complete") or attrs.get("kind") != "unet":
            raise ValueError(f"digits_unet.weights_from: no trained UNet in {src.url}")
        if int(attrs["train_steps"]) != cfg.train_steps:
            raise ValueError("digits_unet.weights_from: trained with another train_steps")
        return _unet_refs(attrs, src, abar, dtype), {**info, "train_loss": attrs["final_loss"]}
    store = ctx.store
    attrs = store.node_attrs("model")
    if attrs.get("complete") and attrs.get("kind") == "unet":
        return _unet_refs(attrs, store, abar, dtype), {**info, "train_loss": attrs["final_loss"]}
    fut = ctx.executor.submit(
        train_unet, digits_data(), abar, tuple(u.channels), u.iterations, u.batch, u.lr, u.seed
    )
    config, weights, losses = ctx.executor.gather(fut)
    names = list(weights)
    for i, name in enumerate(names):
        w = np.asarray(weights[name], dtype=np.float32)
        shape = w.shape if w.ndim else (1,)
        store.create_array(
            f"model/p{i}", shape, shape, dtype="float32", overwrite=True,
            dimension_names=tuple(f"d{k}" for k in range(len(shape))),
        ).write((slice(None),) * len(shape), w.reshape(shape))  # fmt: skip
    store.set_node_attrs(
        "model",
        {
            "kind": "unet",
            "config": config,
            "names": names,
            "shapes": [list(np.shape(weights[n])) for n in names],
            "train_steps": cfg.train_steps,
            "losses": losses,
            "final_loss": losses[-1],
            "complete": True,  # the very last write: the weights are usable
        },
    )
    attrs = store.node_attrs("model")
    return _unet_refs(attrs, store, abar, dtype), {**info, "train_loss": losses[-1]}


def _prompt_states(cfg: PicardConfig, ctx) -> tuple:
    """model=diffusers with ``prompts``: the text encoder's states of the prompts and of
    the negative prompt, computed once on a worker and kept in the run store (a resumed
    run reads them back); ``(cond ref, uncond ref or None)`` for the replicas."""
    from .diffusers_dir import prompt_encoder

    store = ctx.store
    guided = cfg.guidance_scale != 1.0
    negative = cfg.negative_prompt if guided else None
    kept = {"prompts": list(cfg.prompts), "negative_prompt": negative, "complete": True}
    if store.node_attrs("prompts") != kept:
        encoder, tokenizer, _ = prompt_encoder(cfg.diffusers.path)
        fut = ctx.executor.submit(
            _encode, str(cfg.diffusers.path), list(cfg.prompts), negative, encoder, tokenizer
        )
        *states, truncated = ctx.executor.gather(fut)
        if truncated:
            which = ", ".join("negative_prompt" if i < 0 else f"prompts[{i}]" for i in truncated)
            ctx.warn(f"{which}: longer than the text encoder's tokens, cut there (as diffusers)")
        for name, a in zip(("cond", "uncond"), states, strict=True):
            if a is None:
                continue
            dims = ("prompt", "token", "feature")[-a.ndim :]
            store.create_array(f"prompts/{name}", a.shape, a.shape, dtype="float32",
                               overwrite=True, dimension_names=dims,
                               ).write((slice(None),) * a.ndim, a)  # fmt: skip
        store.set_node_attrs("prompts", kept)
    uncond = store.array("prompts/uncond") if guided else None
    return store.array("prompts/cond"), uncond


def _encode(path, prompts, negative, encoder, tokenizer):
    """:func:`~tilegraph.tasks.picard.torch_models.encode_prompts` on a worker, from its
    copy of the directory."""
    from tilegraph.storage.files import local_copy
    from tilegraph.tasks.picard.torch_models import encode_prompts

    return encode_prompts(local_copy(path), prompts, negative, encoder, tokenizer)


def _decoder_spec(cfg: PicardConfig) -> dict | None:
    """model=diffusers: the autoencoder that decodes the samples, for the replicas (None:
    the samples are the images)."""
    found = cfg.decoder()
    if found is None:
        return None
    from .diffusers_dir import decoded_shape, read_component

    sub, cls = found
    ae = read_component(cfg.diffusers.path, sub)
    dtype = cfg.diffusers.dtype
    # as diffusers' SDXL pipeline does: a VAE that overflows in float16 decodes in float32
    # (its StableDiffusionPipeline decodes in the VAE's own dtype)
    if dtype == "float16" and ae.get("force_upcast", cls == "AutoencoderKL"):
        dtype = "float32"
    shift = ae.get("shift_factor")
    # per-channel statistics (SDXL-style VAEs have them), both or neither
    stats = [ae.get("latents_mean"), ae.get("latents_std")]
    mean, std = [None, None] if None in stats else [[float(v) for v in s] for s in stats]
    return {
        "subfolder": sub,
        "class_name": cls,
        "scaling_factor": float(ae.get("scaling_factor", 0.18215)),
        "shift_factor": None if shift is None else float(shift),
        "latents_mean": mean,
        "latents_std": std,
        "dtype": dtype,
        "image_shape": decoded_shape(cfg.diffusers.path, sub),
    }


def model_spec(cfg: PicardConfig, abar: np.ndarray, ctx) -> tuple[dict, dict]:
    """``(spec, info)``: the replicas' model spec and facts for the metrics.

    For ``digits`` this trains (unless the run store already holds complete weights,
    e.g. on resume, or ``digits.weights_from`` names a run that does) and writes the
    weights into ``model/``.
    """
    if cfg.model == "gmm":
        g = gmm_model(cfg, abar)
        spec = {
            "kind": "gmm",
            "means": g.means,
            "weights": g.weights,
            "spread": g.spread,
            "abar": abar,
        }
        return spec, {}
    if cfg.model == "diffusers":
        from .diffusers_dir import read_pipeline_dir, sample_shape

        unet = read_pipeline_dir(cfg.diffusers.path)["unet"]  # checked with the config
        classes = unet.get("num_class_embeds")
        if cfg.conditioning is not None or cfg.prompts is not None:
            classes = None  # rows of cond, not class embeddings
        spec = {
            "kind": "diffusers",
            "conditioning": cfg.conditioning,
            "prompt_states": _prompt_states(cfg, ctx) if cfg.prompts is not None else None,
            "guidance_scale": cfg.guidance_scale,
            "null_class": (classes - 1 if cfg.null_class is None else cfg.null_class)
            if classes
            else None,
            "path": str(cfg.diffusers.path),
            "class_name": unet["_class_name"],
            "abar": abar,
            "sample_shape": sample_shape(unet),
            "prediction_type": cfg.scheduler_config().get("prediction_type", "epsilon"),
            "dtype": cfg.diffusers.dtype,
            "decoder": _decoder_spec(cfg),
        }
        return spec, {"sample_shape": list(spec["sample_shape"])}
    if cfg.model == "custom":
        spec = {
            "kind": "custom",
            "target": cfg.custom,
            "abar": abar,
            "guidance_scale": cfg.guidance_scale,
            "null_class": cfg.null_class,
        }
        model = build_model(spec)
        if not isinstance(model, DiffusionModel) or not hasattr(model, "sample_shape"):
            raise TypeError(f"{cfg.custom} did not return a model with eps() and sample_shape")
        return spec, {"sample_shape": [int(n) for n in model.sample_shape]}
    if cfg.model == "digits-unet":
        return _unet_spec(cfg, abar, ctx)
    store = ctx.store
    if cfg.digits.weights_from:
        src = storage.RunStore(cfg.digits.weights_from)
        attrs = src.node_attrs("model")
        if not attrs.get("complete"):
            raise ValueError(f"digits.weights_from: no trained weights in {src.url}")
        if int(attrs["train_steps"]) != cfg.train_steps:
            raise ValueError("digits.weights_from: trained with another train_steps")
        return _mlp_spec(attrs, src, abar), {"train_loss": attrs.get("final_loss")}
    attrs = store.node_attrs("model")
    if attrs.get("complete"):
        return _mlp_spec(attrs, store, abar), {"train_loss": attrs.get("final_loss")}
    d = cfg.digits
    fut = ctx.executor.submit(_train, digits_data(), abar, d.hidden, d.epochs, d.repeats, d.seed)
    weights, biases, losses = ctx.executor.gather(fut)
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        store.create_array(
            f"model/w{i}", w.shape, w.shape, dimension_names=("in", "out"), overwrite=True
        ).write((slice(None),) * 2, w)
        store.create_array(
            f"model/b{i}", b.shape, b.shape, dimension_names=("out",), overwrite=True
        ).write((slice(None),), b)
    # the very last write: the marker that makes the weights usable (and resumable)
    store.set_node_attrs(
        "model",
        {
            "layers": len(weights),
            "train_steps": cfg.train_steps,
            "sample_shape": list(DIGITS_SHAPE),
            "n_freq": N_FREQ,
            "losses": losses,
            "final_loss": losses[-1],
            "complete": True,
        },
    )
    return _mlp_spec(store.node_attrs("model"), store, abar), {"train_loss": losses[-1]}
