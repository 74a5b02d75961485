"""The recipe schema: the pydantic models of a recipe's sections (``data``, ``model``,
``inference``, ``train``, ``eval``) and what validation asks of them (the model and the keys
allowed at a key path). Validation, messages and I/O are :mod:`bnnkit.recipe`."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bnnkit.data.layout import GENERATORS


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def resolve_head(head: str | None, method: Any) -> str:
    """The head a recipe uses: ``[model.head] name``, else the method entry's default."""
    return head if head is not None else method.obj.default_head


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PluginRef(BaseModel):
    """A plugin by ``name`` plus its options as further keys of the same table."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BackboneRef(PluginRef):
    pretrained: bool | str = False


def _range(value: list[Any], lo: float, hi: float, *, positive: bool = False) -> list[Any]:
    """``value`` as a [low, high] pair within [lo, hi], low <= high (and > 0 with positive)."""
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"expected [low, high] with low <= high, got {value}")
    if value[0] < lo or value[1] > hi or (positive and value[0] <= 0):
        bound = f"({lo}, {hi}]" if positive else f"[{lo}, {hi}]"
        raise ValueError(f"both ends must lie in {bound}, got {value}")
    return value


#: each [low, high] range of ``[data.augment]``: (lowest, highest, low end must be > 0)
_AUGMENT_RANGES: dict[str, tuple[float, float, bool]] = {
    "blur_sigma": (0.0, 10.0, False),
    "jpeg_quality": (1, 100, False),
    "noise_sigma": (0.0, 1.0, False),
    "resize_scale": (0.0, 1.0, True),
}


class AugmentConfig(_Strict):
    """Training augmentation (``[data.augment]``, :mod:`bnnkit.data.augment`): each operation is
    applied with its probability ``*_p`` (0 = off, the default) and its strength drawn uniformly
    from its [low, high] range; only the images of backbone training are augmented."""

    hflip: bool = Field(True, description="random horizontal flip (p 0.5)")
    vflip: bool = Field(False, description="random vertical flip (p 0.5)")
    blur_p: float = Field(0.0, ge=0, le=1, description="Gaussian blur probability")
    blur_sigma: list[float] = Field(
        default_factory=lambda: [0.0, 3.0], description="blur sigma range in pixels (CNNDetection)"
    )
    jpeg_p: float = Field(0.0, ge=0, le=1, description="JPEG re-encoding probability")
    jpeg_quality: list[int] = Field(
        default_factory=lambda: [30, 100], description="JPEG quality range (CNNDetection)"
    )
    noise_p: float = Field(0.0, ge=0, le=1, description="additive Gaussian noise probability")
    noise_sigma: list[float] = Field(
        default_factory=lambda: [0.015, 0.075],
        description="noise sigma range on the 0-1 pixel scale (AI-GenBench's)",
    )
    resize_p: float = Field(0.0, ge=0, le=1, description="downscale-then-upscale probability")
    resize_scale: list[float] = Field(
        default_factory=lambda: [0.5, 1.0], description="downscale factor range, in (0, 1]"
    )
    grayscale_p: float = Field(0.0, ge=0, le=1, description="grayscale probability")

    @field_validator(*_AUGMENT_RANGES)
    @classmethod
    def _in_range(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        lo, hi, positive = _AUGMENT_RANGES[info.field_name]
        return _range(v, lo, hi, positive=positive)


class DataConfig(_Strict):
    root: str = "data/synth"
    layout: Literal["auto", "genimage", "binary", "manifest"] = Field(
        "auto",
        description="how data.root is laid out: genimage (<generator>/{train,val}/{ai,nature}), "
        "binary ({0_real,1_fake} trees), manifest (CSV/Parquet path,label[,generator,family,"
        "split]; data.root = the file); auto = detect (README: Layouts)",
    )
    train_generators: list[str] = Field(
        default_factory=lambda: [g for g in GENERATORS if g != "midjourney"]
    )
    holdout: list[str] = Field(default_factory=lambda: ["midjourney"])
    image_size: int = Field(64, ge=16, le=2048)
    preprocess: Literal["crop", "resize"] = "crop"
    train_limit: int = Field(0, ge=0, description="images per generator and class; 0 = all")
    val_limit: int = Field(0, ge=0)
    balance: bool = True
    labels: Literal["binary", "generator"] = Field(
        "binary",
        description="training targets: binary (real / fake), or generator = a (1 + G)-class head "
        "(class 0 real, class 1 + g the g-th of data.train_generators' fakes) for open-set "
        "attribution; p(fake) stays 1 - p(real)",
    )
    calibration: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="share of each training generator's images per class (after balance and "
        "train_limit) kept out of training as the calibration split: temperature, abstention "
        "thresholds and seen-fitted scores are fitted on it; 0 = none (fit on seen val)",
    )
    num_workers: int | Literal["auto"] = "auto"
    mean: list[float] | None = Field(
        None, description="input normalisation mean (R, G, B; 0-1 scale); default: the backbone's"
    )
    std: list[float] | None = Field(
        None, description="input normalisation std (R, G, B; 0-1 scale); default: the backbone's"
    )
    jpeg_draft: bool = Field(
        False,
        description='preprocess = "resize": decode JPEGs at reduced scale (>= image_size) first; '
        "faster on large photos, pixels within a few levels of a full decode",
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(
        None, description='resize interpolation (preprocess = "resize"); default: the backbone\'s'
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig,
        description="training augmentation (blur, JPEG, noise, downscale, grayscale, flips); "
        "off by default",
    )
    debias: list[Literal["jpeg96", "size_matched"]] = Field(
        default_factory=list,
        description="bias controls of GenImage's format/size shortcut, on train, calibration and "
        "evaluation images alike: jpeg96 = fakes re-encoded as JPEG quality 96 at load time, "
        "size_matched = reals restricted to their generator's fakes' size band "
        "(bnnkit.data.debias)",
    )


def input_filter_frontend(model: dict[str, Any]) -> dict[str, Any]:
    """``model`` with the deprecated ``input_filter = NAME`` as ``frontend = {name = NAME}`` (an
    unknown name or one beside a ``[model.frontend]`` is left for validation to report)."""
    name = model.get("input_filter")
    if name not in ("none", "laplacian") or model.get("frontend", {"name": name}) != {"name": name}:
        return model  # nothing to map, or validation's to report
    return {**{k: v for k, v in model.items() if k != "input_filter"}, "frontend": {"name": name}}


class ModelConfig(_Strict):
    frontend: PluginRef = Field(
        default_factory=lambda: PluginRef(name="none"),
        description="the module in front of the backbone (image -> image-like tensor): none, "
        "laplacian, npr, srm, dct, fft or a plugin's; options as further keys",
    )
    backbone: BackboneRef
    attention: PluginRef = Field(default_factory=lambda: PluginRef(name="none"))
    head: PluginRef | None = None
    pool: Literal["avg", "max", "gem", "cls"] = Field(
        "avg",
        description="global pooling of the feature map; gem = generalised mean (p = 3, for "
        "post-ReLU CNN maps); cls = a ViT-style backbone's CLS embedding after its final norm, "
        "times the projection for a CLIP image tower (needs model.attention.name = 'none')",
    )
    input_filter: Literal["none", "laplacian"] | None = Field(
        None,
        description='deprecated: [model.frontend] name = "laplacian" (or "none") instead; '
        "still read as that frontend",
    )
    standardise: Literal["auto"] | bool = Field(
        "auto",
        description="standardise pooled features (mean/std of the training features) before "
        'the head in the head phase; auto = on with train.backbone = "frozen" (off with a '
        "released head: model.head.init)",
    )

    @model_validator(mode="before")
    @classmethod
    def _input_filter_is_a_frontend(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("input_filter") is None:
            return data
        name = data["input_filter"]
        if data.get("frontend", {"name": name}) != {"name": name}:
            raise ValueError(
                f"model.input_filter (deprecated) and [model.frontend] both given: drop "
                f'input_filter and keep [model.frontend] (input_filter = "{name}" is '
                f'[model.frontend] name = "{name}")'
            )
        mapped = input_filter_frontend(data)
        if mapped is not data:
            warnings.warn(
                f'model.input_filter is deprecated: write [model.frontend] name = "{name}" '
                f"(read as that frontend now)",
                FutureWarning,
                stacklevel=2,
            )
        return mapped


class LoraSettings(_Strict):
    """``[train.lora]``: the LoRA adapters of ``train.backbone = "lora"`` (peft's LoraConfig)."""

    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (the update is alpha/r BA)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | str | None = Field(
        None,
        description="modules that get adapters: a list of module-name suffixes (peft's rule) or "
        "one regex on the full name; default: a ViT's blocks' attn.qkv, attn.proj, mlp.fc1, "
        "mlp.fc2, a ResNet's conv1-3 of layer3 and layer4",
    )


class TrainConfig(_Strict):
    epochs: int = Field(3, ge=0, description="0 for (and only for) training-free methods")
    head_epochs: int = Field(0, ge=0, description="head-only phase epochs; 0 = train.epochs")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_scale: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    backbone: Literal["finetune", "frozen", "lora", "partial"] = Field(
        "finetune",
        description="finetune: all of it learns; frozen: cached features, the head learns; lora: "
        "peft LoRA adapters ([train.lora]) learn, the base is frozen; partial: the last "
        "train.partial_blocks blocks learn",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    partial_blocks: int = Field(
        1, ge=1, description='train.backbone = "partial": how many of the last blocks learn'
    )
    feature_dtype: Literal["float32", "float16"] = Field(
        "float32", description="stored dtype of the frozen-feature cache (computed in float32)"
    )
    device: str = "auto"
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    log: list[Literal["tensorboard"]] = Field(
        default_factory=list, description="extra loggers beside history.csv"
    )

    @model_validator(mode="after")
    def _adapting_needs_epochs(self) -> TrainConfig:
        if self.backbone in ("lora", "partial") and self.epochs == 0:
            raise ValueError(
                f'train.backbone = "{self.backbone}" adapts the backbone, which needs '
                'train.epochs >= 1 (a training-free method: train.backbone = "frozen")'
            )
        return self


class EvalConfig(_Strict):
    samples: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=1)
    coverage: float = Field(0.95, gt=0, le=1)
    guarantee: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="abstention threshold by split conformal on the calibration split: a new "
        "seen image is kept with probability >= guarantee (replaces coverage)",
    )
    max_false_alarm: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="verdict threshold (Neyman-Pearson, split conformal on the calibration "
        "reals): at most this share of real images is called fake; predict applies it",
    )


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    inference: PluginRef = Field(default_factory=lambda: PluginRef(name="map"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _adapting_whole_detector_ensembles(self) -> Recipe:
        if self.train.backbone in ("lora", "partial") and (
            self.inference.options().get("members") == "detectors"
        ):
            raise ValueError(
                f'train.backbone = "{self.train.backbone}" is not supported with whole-detector '
                'ensembles (inference.members = "detectors") yet: use members = <int> (head '
                'ensembles on one adapted backbone) or train.backbone = "finetune"'
            )
        return self

    def head_name(self, registry: Any) -> str:
        head = self.model.head.name if self.model.head is not None else None
        return resolve_head(head, registry.get("method", self.inference.name))

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(self.model_dump(mode="json"))


# --------------------------------------------------------------------------------------------
def model_at(loc: tuple[Any, ...]) -> Any:
    """The schema model at a location (``("data",)`` -> DataConfig), or None."""
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return model


def fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at a location in the schema (for did-you-mean on unknown keys)."""
    model = model_at(loc)
    return list(model.model_fields) if model is not None else []
