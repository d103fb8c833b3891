from __future__ import annotations

import pytest

from knowlm_ray.edit.presets import check_layers, default_layers, preset_for
from knowlm_ray.errors import InputError


def test_layers_scaled_from_easyedit_32_layer_presets():
    assert default_layers("rome", 32) == [5]
    assert default_layers("memit", 32) == [4, 5, 6, 7, 8]
    assert default_layers("ft", 32) == [21]
    assert default_layers("rome", 40) == [6]  # LLaMA-13B / ZhiXi
    assert default_layers("memit", 16) == [2, 3, 4]
    assert default_layers("rome", 4) == [1] and default_layers("ft", 4) == [3]


def test_refusals():
    with pytest.raises(InputError, match=r"rome.layers: layer 9 is not in this model \(it has layers 0-3\)"):
        check_layers([9], 4, "rome.layers")

    class Cfg:
        model_type = "gpt2"

    with pytest.raises(InputError, match="model_type is 'gpt2'"):
        preset_for(Cfg())
