"""The recipe schema: the pydantic models of a recipe's sections (``data``, ``model``,
``inference``, ``train``, ``eval``) and what validation asks of them (the model and the keys
allowed at a key path). Validation, messages and I/O are :mod:`bnnkit.recipe`."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class DataConfig(_Strict):
    root: str = "data/synth"
    train_generators: list[str] = Field(
        default_factory=lambda: [g for g in GENERATORS if g != "midjourney"]
    )
    holdout: list[str] = Field(default_factory=lambda: ["midjourney"])
    image_size: int = Field(64, ge=16, le=2048)
    preprocess: Literal["crop", "resize"] = "crop"
    train_limit: int = Field(0, ge=0, description="images per generator and class; 0 = all")
    val_limit: int = Field(0, ge=0)
    balance: bool = True
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
    pool: Literal["avg", "max", "cls"] = Field(
        "avg",
        description="global pooling of the feature map; cls = a ViT-style backbone's CLS "
        "embedding after its final norm (needs model.attention.name = 'none')",
    )
    input_filter: Literal["none", "laplacian"] | None = Field(
        None,
        description='deprecated: [model.frontend] name = "laplacian" (or "none") instead; '
        "still read as that frontend",
    )
    standardise: Literal["auto"] | bool = Field(
        "auto",
        description="standardise pooled features (mean/std of the training features) before "
        'the head in the head phase; auto = on with train.backbone = "frozen"',
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


class TrainConfig(_Strict):
    epochs: int = Field(3, ge=0, description="0 for (and only for) training-free methods")
    head_epochs: int = Field(0, ge=0, description="head-only phase epochs; 0 = train.epochs")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_scale: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    backbone: Literal["finetune", "frozen"] = "finetune"
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


class EvalConfig(_Strict):
    samples: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=1)
    coverage: float = Field(0.95, gt=0, le=1)


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    inference: PluginRef = Field(default_factory=lambda: PluginRef(name="map"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

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
