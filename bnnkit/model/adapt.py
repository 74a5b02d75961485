"""Parameter-efficient fine-tuning of a detector's backbone: ``train.backbone = "lora"`` and
``"partial"``.

- ``lora``: peft's LoRA adapters (``LoraConfig`` injected into the timm model in place with
  ``peft.inject_adapter_in_model``, so it stays a timm model: ``forward_features``, the CLS
  token, the data config are unchanged) on ``[train.lora] target_modules``; the base weights are
  frozen. Default targets: a ViT-style model's ``blocks.<i>.attn.qkv``, ``attn.proj``,
  ``mlp.fc1``, ``mlp.fc2`` (not ``patch_embed.proj``); a ResNet's ``conv1``/``conv2``/``conv3``
  of the residual blocks of ``layer3`` and ``layer4`` (the 3x3/1x1 convolutions of the last two
  stages; peft adapts ``nn.Conv2d`` too; of a ResNet cut with ``out_index``, its last two
  stages). Other models need ``target_modules``.
- ``partial``: the last ``train.partial_blocks`` blocks learn, the rest is frozen. Blocks: a
  ViT-style model's ``blocks`` (then its final ``norm``/``fc_norm`` learn too), a ResNet's
  residual blocks of ``layer1``..``layer4`` counted from the end, or the blocks of ``stages``
  (ConvNeXt-style, then ``norm_pre``).

In both, the frontend, the attention block and the head learn as with ``finetune``. What is
saved (:func:`saved_keys`): the parameters that learn and every buffer (BatchNorm statistics
and the feature standardiser change during training); the frozen rest is the *base*, rebuilt
from its reference (:func:`base_reference`: the timm name and ``pretrained``: the init seed for
``false``, the file and its sha256 for a path) and checked against the digest recorded at
training time (:func:`bnnkit.run.partial.frozen_digest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bnnkit.errors import UsageError
from bnnkit.run.fileio import file_sha256

#: ``train.backbone`` values that adapt part of the backbone (and save only what learns)
ADAPTING = ("lora", "partial")
#: default LoRA targets (regexes on the full module name inside the timm model)
VIT_TARGETS = r"(.*\.)?blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
RESNET_TARGETS = r"(.*\.)?layer[34]\.\d+\.conv[123]"
#: modules after a ViT's blocks / before a ConvNeXt's head that learn with ``partial``
_FINAL_NORMS = ("norm", "fc_norm", "norm_pre")


def timm_model(backbone: nn.Module) -> nn.Module:
    """The module to adapt: a timm backbone plugin's ``.model``, else the backbone itself; for
    a ViT cut with ``out_index`` (timm's ``FeatureGetterNet``), the pruned ViT inside it."""
    model = getattr(backbone, "model", backbone)
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "patch_embed") else model


def resnet_layers(model: nn.Module) -> list[str]:
    """The names of a ResNet's stages ``layer1``.. that ``model`` has, in order: all four, or
    the first few of a ResNet cut with ``out_index``; ``[]`` for any other model."""
    names = []
    for i in range(1, 5):
        if not isinstance(getattr(model, f"layer{i}", None), nn.Module):
            break
        names.append(f"layer{i}")
    return names if hasattr(model, "conv1") else []


def default_targets(model: nn.Module) -> str:
    """The default LoRA targets of ``model`` (see the module docstring)."""
    if isinstance(getattr(model, "blocks", None), nn.Module) and hasattr(model, "patch_embed"):
        return VIT_TARGETS
    if layers := resnet_layers(model):  # its last two stages (layer3, layer4 when uncut)
        last = "".join(name[-1] for name in layers[-2:])
        return RESNET_TARGETS.replace("[34]", f"[{last}]")
    raise UsageError(
        f'train.backbone = "lora": no default adapter targets for a {type(model).__name__} '
        "(defaults exist for ViT-style and ResNet-style timm models)",
        hint="name its Linear/Conv2d modules: [train.lora] target_modules = [...] (name "
        "suffixes) or a regex on the full module name",
    )


def apply_lora(model: nn.Module, settings: Any) -> nn.Module:
    """LoRA adapters into ``model`` in place (peft), base frozen; returns ``model``."""
    from peft import LoraConfig, inject_adapter_in_model  # a dependency; imported when used

    targets = settings.target_modules or default_targets(model)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
    )
    try:
        inject_adapter_in_model(config, model)
    except ValueError as exc:  # no module matched, or one peft cannot adapt
        raise UsageError(f"[train.lora] target_modules {targets!r}: {exc}") from None
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def _blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the model's blocks in order, the modules after them that learn with ``partial``)."""
    after = [m for n in _FINAL_NORMS if isinstance(m := getattr(model, n, None), nn.Module)]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and hasattr(model, "patch_embed"):
        return list(blocks), [m for m in after if m is not getattr(model, "norm_pre", None)]
    if layers := resnet_layers(model):
        return [b for name in layers for b in getattr(model, name)], []
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential | nn.ModuleList):
        flat = [b for s in stages for b in getattr(s, "blocks", [s])]
        return flat, [m for m in after if m is getattr(model, "norm_pre", None)]
    raise UsageError(
        f'train.backbone = "partial": cannot tell the blocks of a {type(model).__name__} '
        "(known: ViT-style `blocks`, ResNet `layer1`..`layer4`, ConvNeXt-style `stages`)",
        hint='use train.backbone = "lora" with [train.lora] target_modules, or "finetune"',
    )


def apply_partial(model: nn.Module, n: int) -> nn.Module:
    """Freeze ``model`` except its last ``n`` blocks (and its final norm); returns ``model``."""
    blocks, after = _blocks(model)
    if n > len(blocks):
        raise UsageError(
            f"train.partial_blocks = {n}, but this backbone has {len(blocks)} blocks",
            hint=f'choose 1..{len(blocks)}, or train.backbone = "finetune"',
        )
    model.requires_grad_(False)
    for m in [*blocks[len(blocks) - n :], *after]:
        m.requires_grad_(True)
    return model


def adapt(detector: nn.Module, recipe: Any) -> None:
    """Apply ``recipe.train.backbone`` (``lora`` / ``partial``) to ``detector`` in place and
    record on it (``detector.adaptation``) the base reference the checkpoint will carry."""
    from bnnkit.run.partial import frozen_digest

    train = recipe.train
    if train.backbone not in ADAPTING:
        return
    if hasattr(detector, "members"):  # whole-detector ensembles: members' bases differ
        raise UsageError(
            f'train.backbone = "{train.backbone}" is not supported with whole-detector '
            'ensembles (inference.members = "detectors") yet',
            hint='use members = <int> (head ensembles), or train.backbone = "finetune"',
        )
    model = timm_model(detector.backbone)
    if train.backbone == "lora":
        apply_lora(model, train.lora)
    else:
        apply_partial(model, train.partial_blocks)
    bb = recipe.model.backbone
    ref: dict[str, Any] = {"mode": train.backbone, "backbone": bb.name, "pretrained": bb.pretrained}
    if bb.pretrained is False:
        ref["init_seed"] = int(recipe.seed)
    elif isinstance(bb.pretrained, str):
        ref["sha256"] = file_sha256(Path(bb.pretrained).expanduser())
    saved = saved_keys(detector)
    ref["digest"] = frozen_digest(detector, saved)
    detector.adaptation = ref
    # fixed now: a later head phase freezes the adapters too, and they are still saved
    detector.adaptation_keys = saved


def saved_keys(detector: nn.Module) -> set[str]:
    """The state-dict keys an adapted detector's checkpoint holds: parameters that learn (names
    under their every alias) and every buffer."""
    learn = {id(p) for p in detector.parameters() if p.requires_grad}
    params = dict(detector.named_parameters(remove_duplicate=False))
    keys = set()
    for k, v in detector.state_dict(keep_vars=True).items():
        if k not in params or id(v) in learn:
            keys.add(k)
    return keys


def checkpoint_keys(detector: nn.Module) -> set[str] | None:
    """What :func:`bnnkit.run.checkpoint.save_checkpoint` saves: :func:`saved_keys` for an
    adapted detector, None (everything) otherwise."""
    return set(detector.adaptation_keys) if getattr(detector, "adaptation", None) else None


def base_reference(detector: nn.Module) -> dict[str, Any] | None:
    """The checkpoint's ``base`` entry (None: the checkpoint holds the whole detector)."""
    return dict(detector.adaptation) if getattr(detector, "adaptation", None) else None


def check_base_file(reference: dict[str, Any]) -> None:
    """Refuse a run whose base weights file is gone or changed since training."""
    path, want = reference.get("pretrained"), reference.get("sha256")
    if not isinstance(path, str) or not want:
        return
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(
            f"this {reference['mode']} run's checkpoint holds only what it trained; its base "
            f"weights file {path} is missing",
            hint="put the file back where it was (sha256 " + want[:12] + "...)",
        )
    got = file_sha256(file)
    if got != want:
        raise UsageError(
            f"the base weights file {path} changed since the run was trained (sha256 {got[:12]}"
            f"... now, {want[:12]}... then); the run's adapters belong to the old weights",
            hint="restore the original file, or train the run again",
        )


def trainable(params: list[nn.Parameter], detector: nn.Module) -> list[nn.Parameter]:
    """``params`` that learn, for an adapted detector; all of them otherwise (as before)."""
    if not getattr(detector, "adaptation", None):
        return params
    return [p for p in params if p.requires_grad]
