"""What compute does with the inputs users bring: dtypes, devices, non-tensor outputs (issue 14)."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import genmeasures as gm

#: Measures that use the logits, the weights and a search: one of each kind of computation.
MEASURES = ["cross-entropy", "inverse-margin", "param-norm", "prod-of-spec", "path-norm"]


def mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    return gm.build_model("mlp", (5,), 3, depth=2, width=4, seed=0).to(dtype)


def data(dtype: torch.dtype = torch.float32, m: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(m, 5, generator=generator, dtype=torch.float64).to(dtype)
    with torch.no_grad():  # labels the model fits, so that the margin is positive
        labels = mlp(torch.float64)(inputs.double()).argmax(dim=1)
    return inputs, labels


def values(model: nn.Module, pair: tuple[torch.Tensor, torch.Tensor], **kwargs) -> list[float]:
    results = gm.compute(model, pair, measures=MEASURES, **kwargs)
    return [results[name].value for name in MEASURES]


class Wrapped(nn.Module):
    """A network whose forward returns ``shape(logits)`` instead of the logits."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.inner = mlp()
        self.input_shape = (5,)
        self.shape = shape

    def forward(self, x: torch.Tensor):
        return self.shape(self.inner(x))


def test_inputs_of_another_dtype_are_computed_in_the_models_dtype():
    assert values(mlp(), data(torch.float64)) == values(mlp(), data(torch.float32))
    float64 = values(mlp(torch.float64), data(torch.float32))
    assert float64 == pytest.approx(values(mlp(), data()), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_computed_in_float32_with_a_warning(dtype):
    with pytest.warns(gm.GenMeasuresWarning, match=rf"{dtype}.*float32 copy"):
        half = values(mlp(dtype), data())
    reference = values(mlp(dtype).float(), data())
    assert half == reference
    assert all(math.isfinite(v) for v in half)


@pytest.mark.parametrize(
    ("shape", "name"),
    [
        (lambda logits: (logits, logits.sum()), "tuple"),
        (lambda logits: [logits], "list"),
        (lambda logits: {"logits": logits, "hidden": None}, "dict"),
        (lambda logits: OrderedDict(loss=None, logits=logits), "ModelOutput-like"),
    ],
)
def test_outputs_holding_the_logits_are_read(shape, name):
    wrapped = Wrapped(shape)
    plain = wrapped.inner
    assert values(wrapped, data()) == values(plain, data()), name
    results = gm.compute(wrapped, data(), measures="prod-of-spec")
    assert list(results["prod-of-spec"].per_layer["layer"]) == [
        f"network.inner.{layer}" for layer in ("fc1", "fc2", "out")
    ]


def test_an_output_without_logits_names_what_it_is_and_output_fn():
    wrapped = Wrapped(lambda logits: {"scores": logits})
    with pytest.raises(gm.ModelError, match=r"returned a dict with keys \['scores'\].*output_fn="):
        gm.compute(wrapped, data(), measures="cross-entropy")
    chosen = gm.compute(wrapped, data(), measures=MEASURES, output_fn=lambda out: out["scores"])
    assert [chosen[name].value for name in MEASURES] == values(wrapped.inner, data())


def test_a_model_on_the_meta_device_is_a_named_error():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(gm.ModelError, match=r"'meta' device.*load or initialize its weights"):
        gm.compute(model, data(), measures="param-norm")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:7", r"device 'cuda:7' is not available"),
        ("no-such-device", r"device expected a torch device"),
    ],
)
def test_an_unavailable_device_is_a_named_error(device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(gm.MeasureError, match=message):
        gm.compute(mlp(), data(), measures="param-norm", device=device)


def test_measures_none_is_a_named_error():
    with pytest.raises(gm.MeasureError, match=r"measures must be 'all', a name.*got None"):
        gm.compute(mlp(), data(), measures=None)


@pytest.mark.parametrize("m", [0, 1])
def test_fewer_than_two_examples_is_a_named_error(m):
    with pytest.raises(gm.MeasureError, match=rf"data holds {m} example\(s\).*at least 2"):
        gm.compute(mlp(), data(m=m), measures="cross-entropy")


class TokenClassifier(nn.Module):
    """Token ids → mean embedding → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).mean(dim=1))


def test_integer_inputs_make_the_input_gradient_norm_unsupported_with_a_reason():
    ids = torch.randint(0, 11, (8, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 3
    results = gm.compute(TokenClassifier(), (ids, labels), measures=["*entropy*", "input-*"])
    assert results["cross-entropy"].status == "ok"
    grad = results["input-grad-norm"]
    assert grad.status == "unsupported" and math.isnan(grad.value)
    assert "token ids" in grad.message
    with pytest.raises(gm.UnsupportedInputError, match=r"'input-grad-norm'.*real-valued inputs"):
        gm.compute(TokenClassifier(), (ids, labels), measures="input-grad-norm")


def test_numpy_arrays_and_lists_of_samples_give_the_values_of_tensors():
    inputs, labels = data(torch.float64)
    expected = values(mlp(), (inputs, labels))
    assert values(mlp(), (inputs.numpy(), labels.numpy())) == expected
    assert values(mlp(), (list(inputs.numpy()), labels.tolist())) == expected
    assert values(mlp(), (list(inputs), [int(y) for y in labels])) == expected
    int32 = labels.numpy().astype("int32")
    assert values(mlp(), (inputs.numpy(), int32)) == expected


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (
            (["a", "b"], [0, 1]),
            r"inputs must be .* numpy array of numbers .*got a numpy array of <U1",
        ),
        (({"x": 1}, [0, 1]), r"inputs must be a tensor, a numpy array .*got dict"),
        (([[1.0, 2.0], [3.0]], [0, 1]), r"inputs: samples of different shapes"),
        (([], []), r"inputs must be .*non-empty list of samples, got NoneType"),
    ],
)
def test_inputs_that_are_not_numbers_are_named_errors(pair, message):
    with pytest.raises(gm.MeasureError, match=message):
        gm.compute(mlp(), pair, measures="param-norm")


def test_float_labels_from_numpy_are_refused_like_tensors():
    inputs, labels = data()
    with pytest.raises(gm.MeasureError, match=r"labels must be non-negative integer class indices"):
        gm.compute(mlp(), (inputs.numpy(), labels.numpy().astype("float32")), measures=MEASURES)


def test_measures_missing_their_inputs_are_one_warning_naming_what_to_pass():
    # Selected by patterns: a measure named explicitly raises instead (MissingInputError).
    with pytest.warns(gm.GenMeasuresWarning) as caught:
        results = gm.compute(mlp(), data(), measures=["param-norm", "spec-init*", "frob*"])
    missing = [name for name in results if results[name].status == "missing"]
    assert missing == [name for name in results if name != "param-norm"]
    assert "spec-init" in missing and "frob-distance" in missing
    (line,) = [str(w.message) for w in caught if "are missing" in str(w.message)]
    count = len(missing)
    assert line.startswith(f"{count} of {count + 1} measures are missing: {count} because this ")
    assert "pass init_model=" in line
    assert f"({', '.join(missing)})" in line
    assert {w.filename for w in caught if "are missing" in str(w.message)} == {__file__}


def test_no_missing_warning_when_every_input_is_given():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm.compute(mlp(), data(), measures=["param-norm", "frob-distance"], init_model=mlp())
    assert not [w for w in caught if "are missing" in str(w.message)]
