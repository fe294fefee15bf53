"""The ``hessian`` pass, ``lcpaq quantize --budget`` and the proxy search on graphs with ops that
have no double backward (hardsigmoid/hardswish squeeze-excite, scaled_dot_product_attention with
and without a causal mask, a Llama-style block, cdist), and one clear error for an op with no
gradient at all."""
import dataclasses
import inspect
import json
import math

import pytest
import torch
from torch import nn

from lcpaq.ir import capture, find_layers
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import SENSITIVITY
from lcpaq.passes import Pipeline
from lcpaq.tools.cli import main
from tests.conftest import make_ctx
from tests.passes import test_hessian_models as models

PIPELINE = "fold-bn,shape-prop,cost,quant-scheme,calibrate,hessian{probes=8}"

CASES = {
    "squeeze-excite": (lambda: models.SqueezeExcite(), (1, 3, 6, 6), "hardsigmoid", "y = y * F.hardsigmoid(s)"),
    "attention": (lambda: models.TinyAttention("none"), (1, 5, 8), "scaled_dot_product_attention", "is_causal=self.mask"),
    "attention-causal": (lambda: models.TinyAttention("causal"), (1, 5, 8), "scaled_dot_product_attention", "is_causal=self.mask"),
    "llama-block": (lambda: models.LlamaBlock(), (1, 5, 8), "scaled_dot_product_attention", "is_causal=True"),
    "cdist": (lambda: models.Prototypes(), (1, 6), "cdist", "torch.cdist("),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hessian_pass_gives_every_layer_a_finite_sensitivity(x86, case: str) -> None:
    build, shape, op, code = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    example = torch.randn(*shape)
    gm = capture(model, (example,))
    with pytest.warns(UserWarning, match=op) as caught:
        Pipeline.from_spec(PIPELINE)(gm, make_ctx(x86, example))
    note = next(str(w.message) for w in caught if op in str(w.message))
    assert "test_hessian_models.py:" in note and code in note  # where in the model, for the user
    layers = find_layers(gm)
    assert len(layers) >= 2
    sens = [SENSITIVITY.get(layer.node) for layer in layers]
    for s in sens:
        assert s.probes == 8 and [b for b, _ in s.weight] == [2, 3, 4, 5, 6, 7, 8, 16] and [b for b, _ in s.act] == [8, 16]
        assert all(math.isfinite(v) and v >= 0 for v in (s.weight_trace, s.act_trace, *dict(s.weight).values(), *dict(s.act).values()))
    # 8 joint probes leave a layer whose trace is tiny beside the others at noise (a mean below
    # 0 counts as 0), but the model as a whole is sensitive
    assert sum(s.weight_trace for s in sens) > 0 and sum(dict(s.weight)[2] for s in sens) > 0


def test_cached_sensitivities_still_say_how_they_were_measured(x86, tmp_path) -> None:
    torch.manual_seed(0)
    model, (example,) = models.build_squeeze_excite()
    ctx = dataclasses.replace(make_ctx(x86, example), cache_dir=tmp_path)
    first = capture(model, (example,))
    with pytest.warns(UserWarning, match="hardsigmoid"):
        Pipeline.from_spec(PIPELINE)(first, ctx)
    [entry] = list((tmp_path / "hessian").iterdir())
    assert json.loads(entry.read_text())["__hvp__"] == "decomposed"
    second = capture(model, (example,))
    with pytest.warns(UserWarning, match=f"cached sensitivities {entry} were measured with decomposed"):
        Pipeline.from_spec(PIPELINE)(second, ctx)
    for a, b in zip(find_layers(first), find_layers(second), strict=True):
        assert SENSITIVITY.get(a.node) == SENSITIVITY.get(b.node)


@torch.library.custom_op("lcpaq_test_hessian::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    """A user's op registered without any autograd formula."""
    return torch.tanh(x)


@opaque.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(opaque(self.a(x)))


def test_op_without_a_gradient_is_one_config_error_naming_it(x86) -> None:
    example = torch.randn(1, 4)
    gm = capture(Opaque().eval(), (example,))
    with pytest.raises(ConfigError) as info:
        Pipeline.from_spec(PIPELINE)(gm, make_ctx(x86, example))
    lines, start = inspect.getsourcelines(Opaque.forward)
    line = start + next(i for i, text in enumerate(lines) if "opaque(self.a(x))" in text)
    message = str(info.value)
    assert message.startswith("pass 'hessian': cannot differentiate the loss through lcpaq_test_hessian.opaque.default")
    assert f"{__file__}:{line} (`return self.b(opaque(self.a(x)))`)" in message
    assert "no autograd formula was registered" in message and "\n" not in message


def _model_file(tmp_path, builder: str):
    path = tmp_path / "model.py"
    path.write_text(inspect.getsource(models) + f"\n\ndef build():\n    return {builder}()\n")
    return path


@pytest.mark.parametrize("builder", ["build_squeeze_excite", "build_llama_block"])
def test_cli_quantize_with_a_size_budget(capsys, tmp_path, builder: str) -> None:
    path, out_dir = _model_file(tmp_path, builder), tmp_path / "out"
    probes = ["--probes", "8"] if builder == "build_llama_block" else []  # the first: the command exactly as a user types it
    code = main(["quantize", "--model", f"{path}:build", "--budget", "size=0.3x", "--no-build",
                 "--out", str(out_dir), "--no-progress", *probes])
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["layers"] and all(row["sensitivity"] is not None and math.isfinite(row["sensitivity"]) for row in report["layers"])
    assert all(row["weight_trace"] > 0 for row in report["layers"])
    sizes = {c["label"]: c["size_bytes"] for c in report["configs"]}
    assert sizes["ILP(size=0.3x)"] <= 0.3 * sizes["fp32"] * (1 + 1e-6)


def test_cli_proxy_search_on_a_hardswish_model(capsys, tmp_path) -> None:
    path, out_dir = _model_file(tmp_path, "build_squeeze_excite"), tmp_path / "out"
    code = main(["quantize", "--model", f"{path}:build", "--search", "proxy", "--budget", "size=0.3x",
                 "--trials", "3", "--no-build", "--out", str(out_dir), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["search"]["mode"] == "proxy" and report["search"]["trials"] == 3
    assert all(row["sensitivity"] is not None and math.isfinite(row["sensitivity"]) for row in report["layers"])


def test_cli_search_on_an_op_without_a_gradient_is_one_line(capsys, tmp_path) -> None:
    path = tmp_path / "opaque_model.py"
    path.write_text(inspect.cleandoc('''
        import torch
        from torch import nn

        @torch.library.custom_op("lcpaq_test_hessian_cli::opaque", mutates_args=())
        def opaque(x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x)

        @opaque.register_fake
        def _(x):
            return torch.empty_like(x)

        class Opaque(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

            def forward(self, x):
                return self.b(opaque(self.a(x)))

        def build():
            torch.manual_seed(0)
            return Opaque().eval(), (torch.randn(1, 4),)
    ''') + "\n")
    code = main(["quantize", "--model", f"{path}:build", "--search", "proxy", "--budget", "size=0.3x",
                 "--trials", "2", "--no-build", "--out", str(tmp_path / "out"), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("lcpaq: error: cannot differentiate the loss through lcpaq_test_hessian_cli.opaque.default")
    assert f"{path}:18 (`return self.b(opaque(self.a(x)))`)" in err
