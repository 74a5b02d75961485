"""Write the reference recipes ``recipes/{family}_{method}.toml``: the field's detectors (UnivFD,
NPR, CNNSpot, DINOv2 + LoRA as in DDA, CLIP + LoRA as in Effort), each with four inference
methods, all in GenImage's standard setting (train on SD1.4 = ``sdv4``, the other seven unseen).

Usage: ``python docs/gen_reference_recipes.py`` (rewrites the 20 files),
``python docs/gen_reference_recipes.py --check`` (exit 1 when one is stale).
``tests/test_reference_recipes.py`` runs the check, so edit this template, not the files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
METHODS = ("map", "bbb", "kflaplace", "ensemble")
HOLDOUT = '["midjourney", "sdv5", "adm", "glide", "wukong", "vqdm", "biggan"]'
CLIP_L14 = "vit_large_patch14_clip_quickgelu_224.openai"
DINOV2_B14 = "vit_base_patch14_dinov2.lvd142m"


@dataclass(frozen=True)
class Family:
    name: str
    what: str  # the description's detector part
    about: tuple[str, ...]  # the paper and what bnnkit's version changes (comment lines)
    model: str  # [model] ... [model.attention] tables
    train: str  # [train] keys after batch_size
    standin: str  # the smoke test's backbone overrides
    data_extra: str = ""  # further [data] tables (augmentation)
    batch_size: int = 64


def _pad(key_value: str, comment: str) -> str:
    return f"{key_value:<33} # {comment}" if comment else key_value


VIT_STANDIN = (
    "--set model.backbone.name=test_vit \\\n"
    "#     --set model.backbone.pretrained=false --set model.backbone.img_size=32 \\\n"
    "#     --set data.image_size=32 --set train.epochs=1"
)
CNN_STANDIN = (
    "--set model.backbone.name=test_resnet \\\n"
    "#     --set model.backbone.pretrained=false --set data.image_size=32 --set train.epochs=1"
)
LORA_TRAIN = "\n".join(
    [
        "lr = 1e-3",
        _pad("backbone_lr_scale = 0.1", "the adapters learn at 1e-4"),
        "weight_decay = 1e-4",
        _pad('backbone = "lora"', "peft LoRA adapters learn, the base stays frozen"),
        "",
        "[train.lora]",
        _pad("rank = 8", "bnnkit's defaults: every block's attn.qkv, attn.proj,"),
        _pad("alpha = 16.0", "mlp.fc1 and mlp.fc2 (not the patch embedding)"),
        "dropout = 0.0",
    ]
)
FINETUNE_TRAIN = "\n".join(
    [
        "lr = 1e-3",
        _pad("backbone_lr_scale = 0.1", "the pretrained backbone learns 10x slower than the head"),
        "weight_decay = 1e-4",
        _pad('backbone = "finetune"', "backbone and head learn jointly"),
    ]
)


def _clip_model(comment: str) -> str:
    return "\n".join(
        [
            "[model]",
            _pad('pool = "cls"', comment),
            "",
            "[model.backbone]",
            _pad(f'name = "{CLIP_L14}"', "OpenAI's weights, QuickGELU as trained"),
            _pad("pretrained = true", "timm hub weights; CLIP's normalisation comes with the tag"),
            "",
            "[model.attention]",
            _pad('name = "none"', "cls reads the token itself"),
        ]
    )


def _resnet_model(frontend: str, out_index: int | None = None) -> str:
    lines = []
    if frontend:
        lines += ["[model.frontend]", frontend, ""]
    lines += [
        "[model.backbone]",
        'name = "resnet50"',
        _pad("pretrained = true", "timm hub weights; or a local .safetensors/.pth file"),
        *(
            [_pad(f"out_index = {out_index}", f"cut after layer{out_index}, as the paper")]
            if out_index is not None
            else []
        ),
        "",
        "[model.attention]",
        _pad('name = "none"', "the paper's global average pool, no attention block"),
    ]
    return "\n".join(lines)


FAMILIES = (
    Family(
        name="univfd",
        what="UnivFD: frozen CLIP ViT-L/14 image embedding (cls, 768-d)",
        about=(
            "UnivFD (Ojha et al., CVPR 2023): a linear probe on the frozen CLIP ViT-L/14 image",
            "embedding (the CLS token after ln_post times CLIP's projection, 768-d), test images",
            "centre-cropped to 224 without resizing, CLIP's normalisation (from the timm tag).",
            "Published GenImage SD1.4 -> all average: 79.5 (Effort's re-run), 73.3 (AIDE's).",
            "What differs: trained on GenImage SD1.4, not ProGAN 4-class; a two-logit (Bayesian)",
            "head on standardised features, not a one-logit probe on raw ones; features cached",
            "once, un-augmented; temperature and abstention fitted on the calibration split.",
            "The QuickGELU tower is the activation OpenAI's weights were trained with (same",
            "weights file as vit_large_patch14_clip_224.openai, which uses exact GELU).",
        ),
        model=_clip_model("CLS after ln_post, times CLIP's projection: 768-d"),
        train="\n".join(
            [
                "lr = 1e-3",
                "weight_decay = 1e-4",
                _pad('backbone = "frozen"', "features extracted once (cached), the head learns"),
            ]
        ),
        standin=VIT_STANDIN,
    ),
    Family(
        name="npr",
        what="NPR: neighbouring-pixel residual + ResNet-50",
        about=(
            "NPR (Tan et al., CVPR 2024): a ResNet-50 reads (x - up(down(x))) * 2/3, nearest",
            "down/up-sampling by 2 ([model.frontend] npr). Published GenImage SD1.4 -> all",
            "average: 88.6 (Effort's re-run); 90.1 in the paper (mean of the 7 non-SD1.4 sets).",
            "The ResNet-50 is cut after layer2 as the paper's (out_index = 2: 512-d, stride 8).",
            "What differs: an ImageNet-pretrained start (the paper trains from scratch, with a",
            "3x3 first convolution where timm's resnet50 has 7x7; both stride 2, max pool kept);",
            "trained on GenImage SD1.4, not ProGAN 4-class; bnnkit's resnet50_* optimiser;",
            "calibration split.",
        ),
        model=_resnet_model(_pad('name = "npr"', "x - up(down(x)), times 2/3 as the paper"), 2),
        train=FINETUNE_TRAIN,
        standin=CNN_STANDIN,
    ),
    Family(
        name="cnnspot",
        what="CNNSpot: ResNet-50 fine-tuned with blur + JPEG augmentation",
        about=(
            "CNNSpot (Wang et al., CVPR 2020): an ImageNet ResNet-50 fine-tuned with Gaussian blur",
            "sigma ~ U[0, 3] and JPEG quality ~ U{30..100}, each with probability 0.5. No",
            "CNNSpot row for GenImage in REFERENCE.md: the nearest is GenImage's own ResNet-50",
            "(average 72.1, no blur/JPEG augmentation stated).",
            "What differs: trained on GenImage SD1.4, not ProGAN 20-class; torchvision's blur",
            "and JPEG instead of cv2/PIL; bnnkit's resnet50_* optimiser; calibration split.",
        ),
        model=_resnet_model(""),
        train=FINETUNE_TRAIN,
        standin=CNN_STANDIN,
        data_extra="\n".join(
            [
                "",
                "[data.augment]",
                _pad("blur_p = 0.5", "CNNSpot's Blur+JPEG (0.5) model"),
                _pad("blur_sigma = [0.0, 3.0]", "Gaussian blur sigma in pixels"),
                "jpeg_p = 0.5",
                _pad("jpeg_quality = [30, 100]", "JPEG re-encoding quality"),
                "",
            ]
        ),
    ),
    Family(
        name="dinov2_lora",
        what="DINOv2 ViT-B/14 adapted with LoRA (as DDA), CLS embedding",
        about=(
            "DINOv2 + LoRA, the adaptation DDA (NeurIPS 2025) uses: LoRA adapters on a frozen",
            "DINOv2 ViT-B/14, its CLS embedding after the final norm. REFERENCE.md has no DDA",
            "figure on standard GenImage SD1.4 -> all (only 91.7 on the jpeg96-controlled one).",
            "What differs: DDA's model size, rank and training data are not restated here, so",
            "bnnkit's LoRA defaults (rank 8) on ViT-B/14 at 224 px (position embeddings",
            "interpolated from 518); trained on GenImage SD1.4; calibration split.",
        ),
        model="\n".join(
            [
                "[model]",
                _pad('pool = "cls"', "DINOv2's CLS embedding (after the final norm)"),
                "",
                "[model.backbone]",
                f'name = "{DINOV2_B14}"',
                _pad("pretrained = true", "timm hub weights; or a local .safetensors file"),
                _pad("img_size = 224", "built for 518; position embeddings interpolated"),
                "",
                "[model.attention]",
                _pad('name = "none"', "cls reads the token itself"),
            ]
        ),
        train=LORA_TRAIN,
        standin=VIT_STANDIN,
    ),
    Family(
        name="clip_lora",
        what="CLIP ViT-L/14 adapted with LoRA (Effort-style), image embedding",
        about=(
            "CLIP ViT-L/14 adapted with a few trainable parameters, as Effort (Yan et al., ICML",
            "2025; GenImage SD1.4 -> all average 91.1, the best verified) does with SVD",
            "residuals. What differs: plain LoRA (rank 8 on every block's qkv, proj, fc1, fc2),",
            "not Effort's SVD-residual components with orthogonality constraints; a (Bayesian)",
            "head on the 768-d image embedding (cls); calibration split.",
        ),
        model=_clip_model("CLS after ln_post, times CLIP's projection: 768-d"),
        train=LORA_TRAIN,
        standin=VIT_STANDIN,
        batch_size=32,
    ),
)


@dataclass(frozen=True)
class Method:
    what: str
    remark: str
    head: str
    inference: str
    eval_comment: str = ""


_METHODS = {
    "map": Method(
        "MAP linear head",
        "The baseline every comparison table is read against: one deterministic pass.",
        'name = "linear"',
        'name = "map"',
    ),
    "bbb": Method(
        "Bayes-by-Backprop head",
        "A variational Gaussian posterior over the head, ELBO with KL weight 1/N.",
        "\n".join(
            [
                'name = "bbb"',
                "posterior_rho_init = -4.0",
                _pad('prior = "gaussian"', 'or "scale_mixture" or "laplace"'),
            ]
        ),
        "\n".join(
            [
                'name = "bbb"',
                _pad('kl_weight = "auto"', "1/N"),
                "elbo_samples = 1",
            ]
        ),
    ),
    "kflaplace": Method(
        "MAP head + last-layer KFAC Laplace",
        "A Laplace posterior over the MAP head, fitted on the training features.",
        _pad('name = "linear"', "Laplace needs a deterministic 2-logit linear head"),
        "\n".join(
            [
                'name = "kflaplace"',
                _pad('prior_precision = "marglik"', "tuned by marginal likelihood after the fit"),
            ]
        ),
    ),
    "ensemble": Method(
        "bootstrap ensemble of 5 MAP heads",
        "Five heads, each on its own bootstrap resample of the training images.",
        'name = "linear"',
        "\n".join(
            [
                'name = "ensemble"',
                _pad("members = 5", "M heads, trained at once"),
                _pad("bootstrap = true", "each head on its own resample"),
            ]
        ),
        "the ensemble averages its M members exactly",
    ),
}


def render(family: Family, method: str) -> str:
    m = _METHODS[method]
    name = f"{family.name}_{method}"
    title = f"{family.what} + {m.what}; GenImage SD1.4 -> all eight."
    header = [
        title,
        *family.about,
        m.remark,
        "Generated by docs/gen_reference_recipes.py (edit the template, not this file).",
        "The whole table, published rows beside ours:",
        f"  bnnkit protocol sdv4 --recipe {name} --set data.root=/data/genimage",
        "Smoke test on synthetic data (tiny random-init stand-in):",
        f"  bnnkit train {name} --set data.root=data/synth \\\n#     {family.standin}",
    ]
    samples = _pad("samples = 100", m.eval_comment)
    body = f"""\
name = "{name}"
description = "{title}"
seed = 0

[data]
root = "data/genimage"
train_generators = ["sdv4"]       # SD1.4, the paper's training set
holdout = {HOLDOUT}  # unseen
image_size = 224
preprocess = "crop"               # native pixels cropped to 224, never resized
train_limit = 0                   # 0 = every image; e.g. 2000 for a quicker study
{family.data_extra}
{family.model}

[model.head]
{m.head}

[inference]
{m.inference}

[train]
epochs = 10
batch_size = {family.batch_size}
{family.train}

[eval]
{samples}
batch_size = 128
"""
    body = body.replace("\n\n\n", "\n\n")
    return "\n".join("# " + line if line else "#" for line in header) + "\n" + body


def files() -> dict[Path, str]:
    """Every reference recipe's path and text."""
    return {RECIPES / f"{f.name}_{m}.toml": render(f, m) for f in FAMILIES for m in METHODS}


def main(argv: list[str]) -> int:
    wanted = files()
    if "--check" in argv:
        stale = [p.name for p, t in wanted.items() if not p.is_file() or p.read_text() != t]
        if stale:
            print(f"stale: {', '.join(stale)}; run python docs/gen_reference_recipes.py")
            return 1
        return 0
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
