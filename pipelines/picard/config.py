"""Config and presets of the ``picard`` pipeline."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tilegraph.tasks.devices import Device

from ..base import PipelineConfig
from ..config import paired
from ..imports import ExternalURL, ImportPath

#: Samplers whose step uses earlier steps' clean-sample predictions (diffusers'
#: DPM-Solver++(2M) and UniPC): plain Picard, noise levels down to 0.
MULTISTEP_SAMPLERS = ("dpmpp2m", "unipc")

#: Per multistep sampler: the diffusers scheduler class it is, and the values of that
#: class's solver settings that run what tilegraph runs (diffusers' own aliases
#: included: it maps them on construction); a directory's config of that class with
#: another value exits 2.
SOLVER_SETTINGS = {
    "dpmpp2m": (
        "DPMSolverMultistepScheduler",
        {"solver_order": (2,), "algorithm_type": ("dpmsolver++",),
         "solver_type": ("midpoint", "logrho", "bh1", "bh2")},
    ),
    "unipc": (
        "UniPCMultistepScheduler",
        {"solver_order": (2,), "solver_type": ("bh2", "midpoint", "heun", "logrho"),
         "predict_x0": (True,), "lower_order_final": (True,), "disable_corrector": ([],),
         "solver_p": (None,)},
    ),
}  # fmt: skip

#: diffusers' default ``timestep_spacing`` of the scheduler classes whose default is
#: not ``leading`` (a hand-written config may leave it out).
LINSPACE_SCHEDULERS = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


class GMMConfig(BaseModel):
    """The exact Gaussian-mixture model: ``K`` components ``N(mu_k, spread^2 I)`` in
    ``dim`` dimensions, means drawn from ``N(0, mean_scale^2 I)`` with ``seed``, weights
    ``weights`` (normalised) or proportional to ``1, 2, .., K``."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(default=64, ge=1, le=4096, description="sample dimension D")
    components: int = Field(default=4, ge=1, le=1024, description="mixture components K")
    # the diffusion's noise has unit scale: data 10^4 times larger is a typo (and its
    # squares overflow beyond ~1e150)
    spread: float = Field(default=0.15, gt=0, le=1e4, description="component standard deviation")
    mean_scale: float = Field(default=1.0, ge=0, le=1e4, description="scale of the random means")
    seed: int = Field(default=0, ge=0, description="seed of the means")
    weights: list[float] | None = Field(
        default=None,
        description="component weights (K positive numbers, normalised); default "
        "proportional to 1, 2, .., K",
    )

    @model_validator(mode="after")
    def _weights(self):
        w = self.weights
        if w is not None and (len(w) != self.components or min(w) <= 0):
            raise ValueError(
                f"weights must list components={self.components} positive numbers (got {w})"
            )
        return self


class DigitsConfig(BaseModel):
    """The learned denoiser, trained by the run on scikit-learn's 8x8 digits."""

    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default=[256, 256], description="hidden layer widths")
    epochs: int = Field(default=20, ge=1, description="training epochs (fresh noise each)")
    repeats: int = Field(default=4, ge=1, description="noised copies of the data per epoch")
    seed: int = Field(default=0, ge=0, description="seed of the training noise and weights")
    weights_from: ExternalURL | None = Field(
        default=None,
        description="run store (path/URL) whose trained weights to load instead of training",
    )

    @model_validator(mode="after")
    def _widths(self):
        if not self.hidden or any(h < 1 or h > 8192 for h in self.hidden):
            raise ValueError(f"hidden must list 1 to 8192 units per layer (got {self.hidden})")
        return self


class DigitsUNetConfig(BaseModel):
    """A small diffusers UNet2DModel trained by the run on scikit-learn's 8x8 digits."""

    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field(default=[16, 32], description="UNet channels per level")
    iterations: int = Field(default=2000, ge=1, description="Adam steps")
    batch: int = Field(default=64, ge=1, description="images per Adam step")
    lr: float = Field(default=2e-3, gt=0, description="initial learning rate")
    seed: int = Field(default=0, ge=0, description="seed of the weights and the noise")
    weights_from: ExternalURL | None = Field(
        default=None,
        description="run store (path/URL) whose trained UNet to load instead of training",
    )

    @model_validator(mode="after")
    def _channels(self):
        if not 1 <= len(self.channels) <= 3 or any(c < 1 or c > 512 for c in self.channels):
            raise ValueError(
                f"channels must list 1 to 3 levels of 1 to 512 channels (got {self.channels})"
            )
        return self


class DiffusersConfig(BaseModel):
    """A diffusers pipeline directory (``DDPMPipeline(unet, scheduler).save_pretrained``)."""

    model_config = ConfigDict(extra="forbid")

    path: ExternalURL | None = Field(
        default=None,
        description="model=diffusers: the directory (model_index.json, unet/, scheduler/); "
        "never a hub name",
    )
    dtype: Literal["float32", "float16", "bfloat16", "float64"] = Field(
        default="float32", description="precision the network evaluates in"
    )
    decode: bool | None = Field(
        default=None,
        description="decode the samples (latents) with the directory's autoencoder (vae/ "
        "AutoencoderKL or vqvae/ VQModel) into result/image; unset: where it has one",
    )


#: Schedule fields a diffusers directory's scheduler_config.json decides.
FROM_SCHEDULER = (
    "schedule",
    "train_steps",
    "beta_start",
    "beta_end",
    "timestep_spacing",
    "steps_offset",
    "clip_sample",
)


class PicardConfig(PipelineConfig):
    """Parallel diffusion sampling by sliding-window Picard iteration.

    Fields are listed by ``tilegraph run picard --set FIELD=VALUE``.
    """

    model_config = ConfigDict(extra="forbid")

    #: The model each model's section applies to (see ``check_user_fields_apply``).
    APPLIES: ClassVar[dict] = {
        "gmm": ("model", ("gmm",)),
        "digits": ("model", ("digits",)),
        "digits_unet": ("model", ("digits-unet",)),
        "diffusers": ("model", ("diffusers",)),
    }

    model: Literal["gmm", "digits", "digits-unet", "custom", "diffusers"] = "gmm"
    custom: ImportPath | None = Field(
        default=None,
        description="model=custom: 'package.module:factory', factory(abar) -> an object "
        "with eps(x, t) and sample_shape",
    )
    gmm: GMMConfig = Field(default_factory=GMMConfig)
    digits: DigitsConfig = Field(default_factory=DigitsConfig)
    digits_unet: DigitsUNetConfig = Field(default_factory=DigitsUNetConfig)
    diffusers: DiffusersConfig = Field(default_factory=DiffusersConfig)
    schedule: Literal["linear", "scaled_linear", "cosine", "squaredcos_cap_v2"] = "linear"
    train_steps: int = Field(default=1000, ge=2, le=100_000, description="T of training")
    beta_start: float = Field(default=1e-4, gt=0, lt=1)
    beta_end: float = Field(default=0.02, gt=0, lt=1)
    timestep_spacing: Literal["leading", "trailing", "linspace"] = Field(
        default="leading", description="how the sampler's timesteps are spaced (as diffusers)"
    )
    steps_offset: int = Field(default=0, ge=0, description="added to leading timesteps")
    clip_sample: float | None = Field(
        default=None, gt=0, description="clip the clean-sample prediction to [-v, v]"
    )
    sampler: Literal["ddpm", "ddim", "dpmpp2m", "unipc"] = Field(
        default="ddpm",
        description="ddpm, ddim, dpmpp2m (DPM-Solver++(2M), diffusers' default sampler) or "
        "unipc (UniPC-2 with its corrector, diffusers' UniPCMultistepScheduler); the "
        "multistep ones run plain Picard (no accelerate/anderson)",
    )
    karras_sigmas: bool = Field(
        default=False,
        description="sampler=dpmpp2m or unipc: Karras et al.'s noise levels ('DPM++ 2M "
        "Karras', diffusers' use_karras_sigmas; model=diffusers: the directory's unless set)",
    )
    steps: int = Field(default=1000, ge=1, description="sampling steps T")
    eta: float = Field(default=0.0, ge=0, le=1, description="DDIM noise (0: deterministic)")
    window: int = Field(default=96, ge=1, description="Picard window p")
    tol: float = Field(
        default=0.1,
        gt=0,
        description="tolerance relative to the noise scale (DDIM with window <= 32: <= 0.02, "
        "accelerated <= 0.01; 20-100 steps: dpmpp2m/unipc <= 0.02, DDIM <= 0.005; "
        "docs/picard.md)",
    )
    accelerate: bool = Field(
        default=False,
        description="secant-linearised window sweep + extrapolated window starts (not ParaDiGMS)",
    )
    guard: bool = Field(
        default=True,
        description="scale each step's change by the amplification the steps ahead may "
        "give it before the tol test (false: ParaDiGMS's test, which can return another "
        "sample; see docs/picard.md, Error control)",
    )
    anderson_memory: int = Field(
        default=0, ge=0, le=20, description="triangular Anderson mixing history (0: off)"
    )
    n_samples: int = Field(default=64, ge=1, description="samples in all")
    batch_size: int = Field(default=64, ge=1, description="samples per batch (one Zarr chunk)")
    seed: int = Field(default=0, ge=0, description="seed of the start points and the noise")
    parallel: Literal["window", "batch"] = Field(
        default="window",
        description="split each window's model call over the workers, or one batch per task",
    )
    eval_parts: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="pieces each window's model call is split into (spread over the workers)",
    )
    class_labels: list[int] | None = Field(
        default=None,
        description="class of each sample for a class-conditional network (cycled over "
        "the samples; model=diffusers or a custom torch module)",
    )
    guidance_scale: float = Field(
        default=1.0,
        ge=0,
        description="classifier-free guidance with class_labels (1: none; the network's "
        "null_class is the unconditional one)",
    )
    null_class: int | None = Field(
        default=None, ge=0, description="the 'no class' label (default: the last class)"
    )
    conditioning: ExternalURL | None = Field(
        default=None,
        description="a UNet2DConditionModel's conditioning: a Zarr group with cond "
        "(K, seq, dim) and, for guidance, uncond (seq, dim); sample i uses row "
        "class_labels[i] of cond (default i mod K)",
    )
    prompts: list[str] | None = Field(
        default=None,
        min_length=1,
        description="texts a Stable Diffusion directory's text encoder turns into the "
        "UNet2DConditionModel's conditioning (instead of conditioning=URL; the transformers "
        "package); sample i uses prompt class_labels[i] (default i mod K)",
    )
    negative_prompt: str = Field(
        default="",
        description="with prompts and guidance_scale != 1: the unconditional text "
        "(diffusers' negative_prompt; default empty)",
    )
    compare_sequential: bool = Field(
        default=True, description="also run the sequential sampler on the same noise"
    )
    device: Device = Field(
        default="cpu",
        description="where the model replicas run (cuda: CuPy, one GPU each); "
        "array-api-strict is not offered",
    )
    dtype: Literal["float64", "float32"] = Field(
        default="float64",
        description="precision of the samples and of the model evaluations (float32: half "
        "the bytes per window call, a GPU's usual precision)",
    )

    @field_validator("device")
    @classmethod
    def _replica_device(cls, v: str) -> str:
        if v == "array-api-strict":
            raise ValueError(
                "picard's model replicas run on NumPy or CuPy: use cpu or cuda "
                "(got 'array-api-strict')"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.model == "diffusers":
            self._from_directory()
        if self.beta_end <= self.beta_start:
            raise ValueError(
                f"beta_end must be > beta_start (got {self.beta_start}, {self.beta_end})"
            )
        if self.steps > self.train_steps:
            where = (
                f" (num_train_timesteps of {self.diffusers.path}/scheduler/scheduler_config.json)"
                if self.model == "diffusers"
                else ""
            )
            raise ValueError(
                f"steps must be <= train_steps={self.train_steps}{where} (got {self.steps})"
            )
        if self.window > self.steps:
            raise ValueError(f"window must be <= steps={self.steps} (got {self.window})")
        if self.batch_size > self.n_samples:
            raise ValueError(
                f"batch_size must be <= n_samples={self.n_samples} (got {self.batch_size})"
            )
        paired("model", self.model, "custom", "custom", self.custom or None, "'module:factory'")
        if self.diffusers.path is not None and self.model != "diffusers":
            paired("model", self.model, "diffusers", "diffusers.path", self.diffusers.path, "")
        if self.conditioning is not None and self.model != "diffusers":
            raise ValueError("conditioning applies to model=diffusers (a UNet2DConditionModel)")
        if self.prompts is not None and self.model != "diffusers":
            raise ValueError("prompts applies to model=diffusers (a UNet2DConditionModel)")
        if self.prompts is not None and self.conditioning is not None:
            raise ValueError("prompts: give prompts or conditioning, not both")
        if self.negative_prompt and (self.prompts is None or self.guidance_scale == 1.0):
            raise ValueError("negative_prompt applies with prompts and guidance_scale != 1")
        if self.null_class is not None and self.class_labels is None:
            raise ValueError("null_class applies with class_labels (the unconditional class)")
        if self.eta and self.sampler != "ddim":
            raise ValueError("eta applies to sampler=ddim only (set eta=0 for ddpm)")
        if self.class_labels is not None and self.model not in ("diffusers", "custom"):
            raise ValueError("class_labels applies to model=diffusers or custom")
        if self.guidance_scale != 1.0 and self.class_labels is None:
            raise ValueError("guidance_scale needs class_labels (or conditioning, or prompts)")
        if self.karras_sigmas and self.sampler not in MULTISTEP_SAMPLERS:
            raise ValueError("karras_sigmas applies to sampler=dpmpp2m or unipc")
        if self.karras_sigmas and self.schedule in ("cosine", "squaredcos_cap_v2"):
            # its largest levels share the last few timesteps, and diffusers' own loop
            # stops with an IndexError on such a schedule
            raise ValueError(
                "karras_sigmas: not with the cosine schedule (its largest Karras levels "
                "share the last few training timesteps)"
            )
        if self.sampler in MULTISTEP_SAMPLERS:
            s = self.sampler
            if self.accelerate or self.anderson_memory:
                raise ValueError(
                    f"sampler={s} runs plain Picard: set accelerate=false and anderson_memory=0"
                )
            if self.clip_sample is not None and self.model != "diffusers":
                raise ValueError(f"clip_sample does not apply to sampler={s}")
            if self.steps >= self.train_steps:
                raise ValueError(f"steps must be < train_steps={self.train_steps} for {s}")
        return self

    def _from_directory(self) -> None:
        """model=diffusers: the schedule fields from the directory's scheduler config."""
        from tilegraph.tasks.picard.schedules import SCHEDULES, SPACINGS
        from tilegraph.tasks.picard.torch_models import PREDICTIONS

        from .diffusers_dir import NETWORKS, read_pipeline_dir

        if self.diffusers.path is None:
            raise ValueError("model=diffusers needs diffusers.path=DIR (a pipeline directory)")
        try:
            found_dir = read_pipeline_dir(self.diffusers.path)
        except ValueError as err:
            raise ValueError(f"diffusers.path: {err}") from None
        sc, unet = found_dir["scheduler"], found_dir["unet"]
        if unet.get("_class_name") not in NETWORKS:
            raise ValueError(
                f"diffusers.path: unet/ holds a {unet.get('_class_name')}; tilegraph samples "
                f"{' and '.join(NETWORKS)} pipelines"
            )
        if unet.get("time_cond_proj_dim") is not None:
            raise ValueError(
                f"diffusers.path: unet/config.json has time_cond_proj_dim="
                f"{unet['time_cond_proj_dim']} (a guidance-distilled network, e.g. LCM, "
                "that takes a timestep_cond), which tilegraph does not pass"
            )
        added = unet.get("addition_embed_type")
        if added:
            raise ValueError(
                f"diffusers.path: unet/config.json has addition_embed_type={added!r} (added "
                "conditioning such as SDXL's text_embeds and time_ids), which tilegraph does "
                "not pass; it samples networks conditioned by class labels or cross-attention"
            )
        self._check_decoder(unet)
        classes = unet.get("num_class_embeds")
        conditional = self.conditioning is not None or self.prompts is not None
        if unet.get("_class_name") == "UNet2DConditionModel" or conditional:
            classes = self._check_conditioning(unet)
        if self.class_labels is not None:
            if not classes:
                raise ValueError(
                    "class_labels: the network in diffusers.path is not class-conditional "
                    "(unet/config.json has no num_class_embeds)"
                )
            bad = [c for c in [*self.class_labels, self.null_class or 0] if not 0 <= c < classes]
            if bad:
                raise ValueError(f"class_labels: classes must be in 0..{classes - 1} (got {bad})")
        checks = {
            "beta_schedule": SCHEDULES,
            "timestep_spacing": SPACINGS,
            "prediction_type": PREDICTIONS,
        }
        for key, allowed in checks.items():
            if sc.get(key, allowed[0]) not in allowed:
                raise ValueError(
                    f"diffusers.path: scheduler {key}={sc[key]!r} is not supported "
                    f"(tilegraph has {', '.join(allowed)})"
                )
        if sc.get("thresholding") or sc.get("trained_betas") is not None:
            raise ValueError(
                "diffusers.path: scheduler thresholding / trained_betas are not supported"
            )
        if sc.get("rescale_betas_zero_snr"):
            raise ValueError(
                "diffusers.path: scheduler rescale_betas_zero_snr is not supported (tilegraph "
                "samples the schedule's own betas)"
            )
        variance = sc.get("variance_type") or "fixed_small"
        if self.sampler == "ddpm" and variance not in ("fixed_small", "fixed_small_log"):
            raise ValueError(
                f"diffusers.path: scheduler variance_type={variance!r} is not supported with "
                "sampler=ddpm (tilegraph's DDPM step adds the posterior variance, "
                "fixed_small)"
            )
        found = dict(
            schedule=sc.get("beta_schedule", "linear"),
            train_steps=self._scheduler_value(sc, "num_train_timesteps", 1000, "train_steps"),
            beta_start=self._scheduler_value(sc, "beta_start", 1e-4, "beta_start"),
            beta_end=self._scheduler_value(sc, "beta_end", 0.02, "beta_end"),
            timestep_spacing=sc.get(
                "timestep_spacing",
                "linspace" if sc.get("_class_name") in LINSPACE_SCHEDULERS else "leading",
            ),
            steps_offset=self._scheduler_value(sc, "steps_offset", 0, "steps_offset"),
            clip_sample=self._scheduler_value(sc, "clip_sample_range", 1.0, "clip_sample")
            if sc.get("clip_sample")
            else None,
        )
        if found["beta_end"] <= found["beta_start"]:
            raise ValueError(
                f"diffusers.path: {self.diffusers.path}/scheduler/scheduler_config.json has "
                f"beta_end={found['beta_end']} <= beta_start={found['beta_start']}"
            )
        # a field set to another value than the directory's (a resumed run's saved
        # config repeats the directory's values)
        given = self.model_fields_set
        clash = [k for k in FROM_SCHEDULER if k in given and getattr(self, k) != found[k]]
        if clash:
            raise ValueError(
                f"{', '.join(clash)}: with model=diffusers the schedule comes from "
                f"{self.diffusers.path}/scheduler/scheduler_config.json "
                f"({', '.join(f'{k}={found[k]!r}' for k in clash)}); do not set it"
            )
        self.__dict__.update(found)
        if self.sampler in MULTISTEP_SAMPLERS:
            self._multistep_settings(sc)

    def _multistep_settings(self, sc: dict) -> None:
        """sampler=dpmpp2m or unipc on a directory: its ``use_karras_sigmas`` (unless
        ``karras_sigmas`` is set); the noise-level options of diffusers' multistep
        solvers that tilegraph does not have, and a config of the named solver's own
        class whose solver settings are not the ones tilegraph runs, refused rather
        than ignored."""
        own, runs = SOLVER_SETTINGS[self.sampler]
        if sc.get("_class_name") == own:
            off = [f"{k}={sc[k]!r}" for k, v in runs.items() if k in sc and sc[k] not in v]
            if off:
                raise ValueError(
                    f"diffusers.path: scheduler {', '.join(off)} is not supported "
                    f"(sampler={self.sampler} is {own} with "
                    f"{', '.join(f'{k}={v[0]!r}' for k, v in runs.items())})"
                )
        if "karras_sigmas" not in self.model_fields_set:
            self.__dict__["karras_sigmas"] = bool(sc.get("use_karras_sigmas", False))
        other = [k for k in ("use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas",
                             "use_flow_sigmas") if sc.get(k)]  # fmt: skip
        if sc.get("final_sigmas_type", "zero") != "zero":
            other.append(f"final_sigmas_type={sc['final_sigmas_type']!r}")
        if self.karras_sigmas:  # Karras end points other than the schedule's own
            other += [f"{k}={sc[k]!r}" for k in ("sigma_min", "sigma_max") if sc.get(k)]
        else:  # (diffusers ignores it with Karras levels)
            clipped = sc.get("lambda_min_clipped", float("-inf"))
            if isinstance(clipped, (int, float)) and clipped > -1e30:
                other.append(f"lambda_min_clipped={clipped!r}")
        if other:
            raise ValueError(
                f"diffusers.path: scheduler {', '.join(other)} is not supported with "
                f"sampler={self.sampler} (tilegraph has the schedule's own or Karras noise "
                "levels, down to 0)"
            )
        pred = sc.get("prediction_type", "epsilon")
        if self.karras_sigmas and pred != "epsilon":
            raise ValueError(
                f"karras_sigmas: the network in diffusers.path predicts {pred}, which "
                "diffusers converts at the Karras noise level and tilegraph at the training "
                "timestep's; Karras levels need an epsilon network (set karras_sigmas=false)"
            )

    def _check_decoder(self, unet: dict) -> None:
        """The autoencoder that decodes the samples, where there is one to use: a class
        tilegraph decodes with, whose latents are the network's samples."""
        from .diffusers_dir import (
            AUTOENCODERS,
            autoencoder,
            latent_channels,
            read_component,
            sample_shape,
        )

        path, decode = self.diffusers.path, self.diffusers.decode
        found = autoencoder(path)
        if found is None:
            if decode:
                raise ValueError(
                    f"diffusers.decode: {path}/model_index.json lists no autoencoder "
                    f"({' or '.join(AUTOENCODERS)}); its samples are images already"
                )
            return
        if decode is False:
            return
        sub, cls = found
        if cls not in AUTOENCODERS.values():
            raise ValueError(
                f"diffusers.decode: {path}/{sub} holds a {cls}; tilegraph decodes with "
                f"{' or '.join(AUTOENCODERS.values())} (diffusers.decode=false keeps the "
                "latents)"
            )
        try:
            ae = read_component(path, sub)
            got, want = latent_channels(ae), sample_shape(unet)[0]
        except (ValueError, TypeError) as err:
            raise ValueError(f"diffusers.path: {err}") from None
        if got != want:
            raise ValueError(
                f"diffusers.path: {sub}/config.json decodes latents of {got} channels, but "
                f"the network's samples have {want} (unet/config.json in_channels)"
            )

    def decoder(self) -> tuple[str, str] | None:
        """model=diffusers: ``(subfolder, class name)`` of the autoencoder that decodes
        the samples into ``result/image``, or None (none there, or ``diffusers.decode``
        is false)."""
        if self.model != "diffusers" or self.diffusers.decode is False:
            return None
        from .diffusers_dir import autoencoder

        return autoencoder(self.diffusers.path)

    def _scheduler_value(self, sc: dict, key: str, default, field: str):
        """``sc[key]`` (or ``default``) validated as config field ``field`` takes it;
        otherwise an error naming the directory's scheduler config and ``key``."""
        from pydantic import TypeAdapter, ValidationError

        info = type(self).model_fields[field]
        kind = int if field in ("train_steps", "steps_offset") else float
        value = sc.get(key, default)
        try:
            return TypeAdapter(Annotated[kind, *info.metadata]).validate_python(value)
        except ValidationError as err:
            msg = err.errors()[0]["msg"]
            raise ValueError(
                f"diffusers.path: {self.diffusers.path}/scheduler/scheduler_config.json has "
                f"{key}={value!r:.60}: {msg[0].lower()}{msg[1:]}"
            ) from None

    def _check_conditioning(self, unet: dict) -> int:
        """A conditional network's ``conditioning`` group: its rows ``K`` (and the labels
        default to ``0, 1, .., K-1`` cycled)."""
        from tilegraph.storage.groups import array_shapes

        given = self.conditioning is not None or self.prompts is not None
        if unet.get("_class_name") != "UNet2DConditionModel" or not given:
            field = "prompts" if self.prompts is not None else "conditioning"
            raise ValueError(
                f"{field}: conditioning (a Zarr group) or prompts are needed by a "
                "UNet2DConditionModel in diffusers.path, and only by one"
            )
        if self.prompts is not None:
            return self._check_prompts(unet)
        try:
            shapes = array_shapes(self.conditioning)
        except Exception as err:  # noqa: BLE001 - any reason the group cannot be read
            raise ValueError(f"conditioning: cannot read a Zarr group there ({err})") from None
        dim = int(unet.get("cross_attention_dim", 0))
        cond = shapes.get("cond", ())
        if len(cond) != 3 or cond[2] != dim:
            raise ValueError(f"conditioning: cond must be (K, seq, {dim}) (got {cond or 'none'})")
        if self.guidance_scale != 1.0 and shapes.get("uncond") != cond[1:]:
            raise ValueError(
                f"conditioning: guidance_scale needs uncond of shape {cond[1:]} "
                f"(got {shapes.get('uncond', 'none')})"
            )
        if self.class_labels is None:
            self.__dict__["class_labels"] = list(range(cond[0]))
        return int(cond[0])

    def _check_prompts(self, unet: dict) -> int:
        """``prompts``: the directory has a text encoder tilegraph encodes with, whose
        states are as wide as the network's cross-attention, and transformers is
        installed; the labels default to ``0, 1, .., K-1`` cycled."""
        import importlib.util

        from .diffusers_dir import prompt_encoder

        try:
            _, _, hidden = prompt_encoder(self.diffusers.path)
        except ValueError as err:
            raise ValueError(f"prompts: {err}") from None
        dim = int(unet.get("cross_attention_dim", 0))
        if hidden != dim:
            raise ValueError(
                f"prompts: the text encoder's states have {hidden} features, the network's "
                f"cross_attention_dim is {dim}"
            )
        if importlib.util.find_spec("transformers") is None:
            raise ValueError(
                "prompts: needs the transformers package (pip install 'tilegraph[torch]'), "
                "or give conditioning=URL"
            )
        if self.class_labels is None:
            self.__dict__["class_labels"] = list(range(len(self.prompts)))
        return len(self.prompts)

    def scheduler_config(self) -> dict:
        """model=diffusers: the directory's ``scheduler_config.json`` (else empty)."""
        if self.model != "diffusers":
            return {}
        from .diffusers_dir import read_pipeline_dir

        return read_pipeline_dir(self.diffusers.path)["scheduler"]

    def sampler_steps(self):
        """``(abar, steps)``: the training schedule's ``alphas_cumprod`` and the
        sampler's :class:`~tilegraph.tasks.picard.schedules.SamplerSteps`."""
        from tilegraph.tasks.picard.schedules import make_schedule, make_steps

        abar = make_schedule(self.schedule, self.train_steps, self.beta_start, self.beta_end)
        kw = {"spacing": self.timestep_spacing, "offset": self.steps_offset}
        if self.model == "diffusers" and self.sampler == "ddim":
            kw["final_one"] = bool(self.scheduler_config().get("set_alpha_to_one", True))
        # diffusers' multistep solvers have no clip_sample (a DDPM directory's clipping
        # is dropped)
        clip = None if self.sampler in MULTISTEP_SAMPLERS else self.clip_sample
        if self.sampler in MULTISTEP_SAMPLERS:
            kw["karras"] = self.karras_sigmas
        steps = make_steps(self.sampler, abar, self.steps, self.eta, clip=clip, **kw)
        return abar, steps

    def batch_labels(self, i: int):
        """The classes of batch ``i``'s samples, shape (n,) int64, or None."""
        if self.class_labels is None:
            return None
        import numpy as np

        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n_samples)
        return np.resize(np.asarray(self.class_labels, dtype=np.int64), self.n_samples)[lo:hi]

    @property
    def n_batches(self) -> int:
        """Number of sample batches (the last one may be smaller)."""
        return -(-self.n_samples // self.batch_size)


PRESETS: dict[str, dict] = {
    # the published GMM setting: 64-D, 4 components, DDPM-1000, p = 96, tol = 0.1
    "quick": {
        "model": "gmm",
        "sampler": "ddpm",
        "steps": 1000,
        "window": 96,
        "tol": 0.1,
        "n_samples": 64,
        "batch_size": 16,
    },
    # tol = 0.1 lets one of 64 samples end in another mixture component (max diff 4.3)
    # for the same 18 iterations that tol = 0.01 takes (max diff 5e-3)
    "ddim": {"model": "gmm", "sampler": "ddim", "steps": 200, "window": 96, "tol": 0.01},
    # a UNet2DModel trained on the digits (torch extra), sampled with DDIM-100
    "digits-unet": {
        "model": "digits-unet",
        "sampler": "ddim",
        "steps": 100,
        "window": 32,
        "tol": 0.1,
        "n_samples": 32,
        "batch_size": 16,
        "dtype": "float32",
    },
    "digits": {
        "model": "digits",
        "sampler": "ddpm",
        "steps": 1000,
        "window": 96,
        "tol": 0.1,
        "n_samples": 64,
        "batch_size": 32,
    },
}
