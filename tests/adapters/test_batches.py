"""The batch and output adapters: how a model is called and which output is the prediction."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Any

import pytest
import torch
from torch import nn

from bayesdrop.adapters import (
    batch_size,
    call_model,
    check_batch,
    map_batched,
    prediction,
    slice_batch,
    tensors,
    tile_batch,
)


class FakeModelOutput(OrderedDict):  # type: ignore[type-arg]
    """The shape of a Hugging Face ``ModelOutput``: an OrderedDict whose entries are attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class Recorder(nn.Module):
    """Returns how it was called."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args, kwargs


# --------------------------------------------------------------------------- call_model
def test_call_model_tensor_mapping_sequence() -> None:
    x = torch.zeros(2, 3)
    args, kwargs = call_model(Recorder(), x)
    assert len(args) == 1 and args[0] is x and kwargs == {}
    args, kwargs = call_model(Recorder(), {"input_ids": x, "return_dict": True})
    assert args == () and kwargs["input_ids"] is x and kwargs["return_dict"] is True
    y = torch.ones(2)
    args, kwargs = call_model(Recorder(), (x, y))
    assert args[0] is x and args[1] is y and kwargs == {}
    args, kwargs = call_model(Recorder(), [x, y])
    assert args[0] is x and args[1] is y


@pytest.mark.parametrize("bad", [3, "ids", None, 2.5, {1, 2}])
def test_call_model_rejects_other_types(bad: Any) -> None:
    with pytest.raises(TypeError, match="inputs must be a Tensor"):
        call_model(Recorder(), bad)


def test_check_batch_names_the_argument() -> None:
    with pytest.raises(TypeError, match="^x must be a Tensor"):
        check_batch(3, "x")
    with pytest.raises(TypeError, match="x must not be an empty tuple"):
        check_batch((), "x")
    with pytest.raises(TypeError, match="keys must be strings"):
        check_batch({0: torch.zeros(2)}, "x")
    with pytest.raises(TypeError, match="holds no tensor"):
        check_batch({"flag": True}, "x")
    check_batch({"ids": torch.zeros(2), "flag": True}, "x")


# --------------------------------------------------------------------------- prediction
def test_prediction_of_a_tensor_is_itself() -> None:
    t = torch.randn(3, 2)
    assert prediction(t) is t
    with pytest.raises(ValueError, match="returned a Tensor"):
        prediction(t, "logits")


def test_prediction_of_a_mapping_reads_logits_by_default() -> None:
    logits, hidden = torch.randn(3, 2), torch.randn(3, 4)
    out = FakeModelOutput(logits=logits, hidden_states=hidden)
    assert prediction(out) is logits
    assert prediction(out, "hidden_states") is hidden
    assert prediction({"logits": logits}) is logits


def test_prediction_missing_key_lists_the_entries() -> None:
    out = FakeModelOutput(last_hidden_state=torch.zeros(1), pooler_output=torch.zeros(1))
    with pytest.raises(ValueError, match=r"without an entry 'logits'.*'last_hidden_state', "):
        prediction(out)
    with pytest.raises(ValueError, match="pooler_output"):
        prediction(out, "scores")


def test_prediction_of_a_sequence_is_its_first_element() -> None:
    a, b = torch.randn(2), torch.randn(3)
    assert prediction((a, b)) is a
    assert prediction([a]) is a
    with pytest.raises(ValueError, match="first element"):
        prediction((a, b), "logits")
    with pytest.raises(TypeError, match="empty tuple"):
        prediction(())


def test_prediction_bad_types() -> None:
    with pytest.raises(TypeError, match="but it returned int"):
        prediction(3)
    with pytest.raises(TypeError, match="output_key must be a string"):
        prediction({"logits": torch.zeros(1)}, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\['logits'\] must be a Tensor"):
        prediction({"logits": [1.0]})


# --------------------------------------------------------------------------- batch dimension
def test_batch_size_is_the_first_tensor_with_the_dimension() -> None:
    batch = {"flag": True, "scalar": torch.tensor(2.0), "ids": torch.zeros(5, 7)}
    assert batch_size(batch) == 5
    assert batch_size(batch, 1) == 7
    assert batch_size((torch.zeros(4, 3), torch.zeros(4))) == 4
    assert batch_size(torch.zeros(6, 2), 1) == 2
    with pytest.raises(ValueError, match="no batch dimension batch_dim=2"):
        batch_size({"ids": torch.zeros(5, 7)}, 2)


def test_tensors_depth_first() -> None:
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    assert [t.numel() for t in tensors({"a": a, "n": [b, {"c": c}], "f": 1})] == [1, 2, 3]


def test_map_batched_touches_only_batched_entries() -> None:
    ids = torch.arange(6).view(3, 2)
    bias = torch.ones(4)  # no dimension of the batch size
    other = torch.ones(2, 3)  # dimension 0 is not the batch size
    batch = {"ids": ids, "bias": bias, "other": other, "flag": True, "none": None}
    out = map_batched(batch, lambda t: t * 10, batch=3)
    assert type(out) is dict and list(out) == list(batch)
    assert torch.equal(out["ids"], ids * 10)
    assert out["bias"] is bias and out["other"] is other
    assert out["flag"] is True and out["none"] is None


def test_map_batched_keeps_sequence_types() -> None:
    Pair = namedtuple("Pair", "x y")
    x = torch.zeros(2, 3)
    out = map_batched(Pair(x, 5), lambda t: t + 1, batch=2)
    assert isinstance(out, Pair) and torch.equal(out.x, x + 1) and out.y == 5
    out = map_batched([x, x], lambda t: t + 1, batch=2)
    assert isinstance(out, list) and len(out) == 2


def test_tile_batch_repeats_sample_major() -> None:
    ids = torch.tensor([[1, 2], [3, 4]])
    mask = torch.tensor([[1, 0], [1, 1]])
    pos = torch.arange(2)  # shape (2,) here has the batch size and is tiled too (documented)
    tiled = tile_batch({"input_ids": ids, "attention_mask": mask, "scale": 0.5}, 3)
    assert torch.equal(tiled["input_ids"], torch.cat([ids, ids, ids]))
    assert torch.equal(tiled["attention_mask"], torch.cat([mask, mask, mask]))
    assert tiled["scale"] == 0.5
    assert tile_batch(pos, 2).tolist() == [0, 1, 0, 1]
    # along another batch dimension
    seq = torch.arange(6).view(3, 2)  # (T, B)
    assert torch.equal(tile_batch((seq,), 2, batch_dim=1)[0], torch.cat([seq, seq], 1))
    assert tile_batch(ids, 1) is ids


def test_slice_batch() -> None:
    ids = torch.arange(10).view(5, 2)
    out = slice_batch({"ids": ids, "table": torch.zeros(3, 3)}, 1, 3)
    assert torch.equal(out["ids"], ids[1:3]) and out["table"].shape == (3, 3)


# --------------------------------------------------------------------------- transformers
def test_real_model_output_and_batch_encoding() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import SequenceClassifierOutput

    logits = torch.randn(2, 3)
    out = SequenceClassifierOutput(logits=logits)
    assert prediction(out) is logits
    with pytest.raises(ValueError, match=r"entries are \['logits'\]"):
        prediction(out, "loss")  # None fields are not entries of a ModelOutput
    tupled = out.to_tuple()
    assert prediction(tupled) is logits

    enc = transformers.BatchEncoding(
        {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)}
    )
    assert batch_size(enc) == 1
    tiled = tile_batch(enc, 4)
    assert tiled["input_ids"].shape == (4, 3) and tiled["attention_mask"].shape == (4, 3)
    args, kwargs = call_model(Recorder(), enc)
    assert args == () and set(kwargs) == {"input_ids", "attention_mask"}
