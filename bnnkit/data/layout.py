"""The GenImage folder layout: ``<root>/<generator folder>/{train,val}/{ai,nature}/*``.

Generators are addressed by short name and found by folder-name suffix, so the official folder
names (``imagenet_ai_0508_adm``), the "tiny" copies and copies that nest each generator under an
extra folder (``stable_diffusion_v_1_4/imagenet_ai_0419_sdv4``) all work.
"""

from __future__ import annotations

# Short name -> folder name in the official GenImage release (see shared REFERENCE.md).
GENERATOR_FOLDERS: dict[str, str] = {
    "adm": "imagenet_ai_0508_adm",
    "biggan": "imagenet_ai_0419_biggan",
    "glide": "imagenet_glide",
    "midjourney": "imagenet_midjourney",
    "sdv4": "imagenet_ai_0419_sdv4",
    "sdv5": "imagenet_ai_0424_sdv5",
    "vqdm": "imagenet_ai_0419_vqdm",
    "wukong": "imagenet_ai_0424_wukong",
}
GENERATORS: tuple[str, ...] = tuple(GENERATOR_FOLDERS)
SPLITS: tuple[str, ...] = ("train", "val")
# Class folder -> label. 1 = fake (generated), 0 = real (ImageNet photo).
CLASS_FOLDERS: dict[str, int] = {"nature": 0, "ai": 1}
LABEL_NAMES: tuple[str, str] = ("real", "fake")
