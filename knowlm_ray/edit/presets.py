"""Which modules an edit touches, per architecture, and which layers by default.

Every LLaMA-family model in transformers (llama, mistral, qwen2, baichuan, internlm, ...) names
its decoder layers ``model.layers.N`` and their MLP output projection ``mlp.down_proj``, the
matrix ROME, MEMIT and FT-L rewrite (the LoRA and merge code name the same ``down_proj``).

EasyEdit's presets name layers of 32-layer models (LLaMA-7B): ROME layer 5, MEMIT layers 4-8,
FT-L layer 21. ``default_layers`` scales those to the model's depth, so a 6-layer model edits
layer 1 with ROME and layers 1-2 with MEMIT.
"""

from __future__ import annotations

from dataclasses import dataclass

from knowlm_ray.errors import InputError

REFERENCE_DEPTH = 32
EASYEDIT_LAYERS = {"rome": (5,), "memit": (4, 5, 6, 7, 8), "ft": (21,)}
# LLaMA-7B's MLP width, the size EasyEdit's mom2_update_weight (15000) was tuned at.
REFERENCE_KEY_DIM = 11008


@dataclass(frozen=True)
class EditPreset:
    layer: str = "model.layers.{}"  # a decoder layer: its output is the residual stream
    mlp_out: str = "model.layers.{}.mlp.down_proj"  # the edited matrix; its input is the key

    def weight(self, layer: int) -> str:
        return self.mlp_out.format(layer) + ".weight"


LLAMA = EditPreset()
PRESETS = {name: LLAMA for name in ("llama", "mistral", "qwen2", "qwen3", "baichuan", "internlm", "internlm2")}


def preset_for(config) -> EditPreset:
    """The preset of a transformers model config (by ``model_type``)."""
    kind = getattr(config, "model_type", None)
    if kind not in PRESETS:
        raise InputError(
            f"knowledge editing knows the LLaMA family ({', '.join(sorted(PRESETS))}); "
            f"this model's model_type is {kind!r}"
        )
    return PRESETS[kind]


def scale_layer(layer: int, depth: int) -> int:
    return min(depth - 1, max(0, int(layer * depth / REFERENCE_DEPTH + 0.5)))


def default_layers(method: str, depth: int) -> list[int]:
    """EasyEdit's LLaMA-7B layers for ``method`` scaled from 32 layers to ``depth``."""
    return sorted({scale_layer(x, depth) for x in EASYEDIT_LAYERS[method]})


def check_layers(layers: list[int], depth: int, key: str) -> list[int]:
    """Refuse a layer the model lacks, naming the config key."""
    bad = [x for x in layers if not 0 <= x < depth]
    if bad:
        raise InputError(f"{key}: layer {bad[0]} is not in this model (it has layers 0-{depth - 1})")
    if not layers:
        raise InputError(f"{key}: no layers given")
    return sorted(set(layers))
