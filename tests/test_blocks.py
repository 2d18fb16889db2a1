"""Generic decoder-block discovery and block I/O conventions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ltv_control.adapters._blocks import (  # noqa: E402
    LayerDiscoveryError,
    find_decoder_layers,
    get_block_input,
    get_block_output,
    replace_block_input,
    replace_block_output,
)

from ltv_control import ArgumentError, ControlError  # noqa: E402


class _Config:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Expert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)


class _Layer(torch.nn.Module):
    def __init__(self, experts):
        super().__init__()
        self.attn = torch.nn.Linear(4, 4)
        self.experts = torch.nn.ModuleList([_Expert() for _ in range(experts)])


class _Model(torch.nn.Module):
    """Three candidate lists: heterogeneous 'misc', per-layer 'experts' and the layer list."""

    def __init__(self, n_layers=3, experts=3, config=True):
        super().__init__()
        if config:
            self.config = _Config(num_hidden_layers=n_layers, hidden_size=4)
        self.misc = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.ReLU()])
        self.body = torch.nn.Module()
        self.body.blocks = torch.nn.ModuleList([_Layer(experts) for _ in range(n_layers)])


def test_generic_search_prefers_config_length_and_parameter_mass():
    model = _Model(n_layers=3, experts=3)  # experts lists have the same length as the layer list
    blocks, path = find_decoder_layers(model)
    assert path == "body.blocks"
    assert blocks == list(model.body.blocks)


def test_generic_search_without_config_takes_the_longest_list():
    model = _Model(n_layers=5, experts=2, config=False)
    blocks, path = find_decoder_layers(model)
    assert path == "body.blocks" and len(blocks) == 5


def test_override_by_path_list_and_modulelist():
    model = _Model()
    assert find_decoder_layers(model, "body.blocks")[1] == "body.blocks"
    blocks, path = find_decoder_layers(model, list(model.body.blocks)[:2])
    assert path is None and len(blocks) == 2
    blocks, path = find_decoder_layers(model, model.body.blocks)
    assert path is None and len(blocks) == 3
    first_experts, _ = find_decoder_layers(model, "body.blocks.0.experts")
    assert first_experts == list(model.body.blocks[0].experts)


def test_discovery_errors_name_the_fix():
    with pytest.raises(LayerDiscoveryError, match="layers="):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert issubclass(LayerDiscoveryError, ControlError) and issubclass(LayerDiscoveryError, ValueError)
    with pytest.raises(LayerDiscoveryError, match="no attribute path"):
        find_decoder_layers(_Model(), "body.nothing")
    with pytest.raises(ArgumentError, match="single"):
        find_decoder_layers(_Model(), "body")
    with pytest.raises(ArgumentError):
        find_decoder_layers(_Model(), 3)
    with pytest.raises(ArgumentError, match="item 1"):
        find_decoder_layers(_Model(), [torch.nn.Linear(2, 2), "x"])


def test_transformers_families_found():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50)
    blocks, path = find_decoder_layers(transformers.GPT2LMHeadModel(config))
    assert path == "transformer.h" and len(blocks) == 2


def test_block_input_positional_and_keyword():
    h = torch.randn(2, 3, 4)
    assert get_block_input((h, None), {}) is h
    assert get_block_input((), {"hidden_states": h}) is h
    g = torch.zeros_like(h)
    args, kwargs = replace_block_input((h, 1), {"a": 2}, g)
    assert args[0] is g and args[1] == 1 and kwargs == {"a": 2}
    args, kwargs = replace_block_input((), {"hidden_states": h, "a": 2}, g)
    assert args == () and kwargs["hidden_states"] is g and kwargs["a"] == 2
    with pytest.raises(ArgumentError, match="hidden_states"):
        get_block_input((None,), {})


def test_block_output_conventions_round_trip():
    from transformers.modeling_outputs import BaseModelOutputWithPast

    h, g = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    extra = torch.ones(1)
    cases = [h, (h, extra), [h, extra], BaseModelOutputWithPast(last_hidden_state=h),
             {"hidden_states": h, "other": extra}]
    for output in cases:
        assert get_block_output(output) is h
        replaced = replace_block_output(output, g)
        assert type(replaced) is type(output)
        assert get_block_output(replaced) is g
        assert get_block_output(output) is h  # the original is untouched
    assert replace_block_output((h, extra), g)[1] is extra
    with pytest.raises(ArgumentError, match="block output"):
        get_block_output("nope")
