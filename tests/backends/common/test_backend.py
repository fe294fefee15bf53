"""Backends are chosen by the target's data, and what a target file says it executes natively is
what its backend really executes at that precision."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lcpaq.backends.common.backend import Backend, available_backends, backend_for, runs_here
from lcpaq.backends.common.build import build_model
from lcpaq.backends.arm.backend import ArmDotprodBackend
from lcpaq.backends.x86.backend import X86VnniBackend
from lcpaq.hw_targets import available_targets, load_target
from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import BitAssignment
from lcpaq.ir.metrics import first_output
from tests.backends._nets import TinyResNet, quantized

def test_registry_finds_each_family_by_name() -> None:
    assert available_backends() == ["arm-dotprod", "cuda-tensorcore", "x86-vnni"]
    assert isinstance(backend_for(load_target("x86-host")), X86VnniBackend)
    assert isinstance(backend_for(load_target("arm-a76")), ArmDotprodBackend)


@pytest.mark.parametrize("name", available_targets())
def test_every_native_precision_of_a_target_file_executes_at_that_precision(name: str) -> None:
    target = load_target(name)
    if target.backend is None:  # simulation only: nothing is built, and building says so
        with pytest.raises(ConfigError, match="simulation only"):
            backend_for(target)
        return
    backend: Backend = backend_for(target)
    for kind, widths in target.native_weight_bits.items():
        for w in widths:
            for a in target.act_bits:
                bits = BitAssignment(a, a) if kind == "matmul" else BitAssignment(w, a)
                assert backend.executes(kind, bits), f"{name}: {kind} {bits} is listed native but has no integer kernel"


def test_x86_executes_int8_and_int16() -> None:
    x86 = X86VnniBackend()
    assert x86.executes("conv", BitAssignment(8, 8)) and x86.executes("conv", BitAssignment(4, 8))  # int4 unpacked to int8
    for w, a in ((16, 16), (8, 16), (16, 8), (4, 16)):  # the vpdpwssd kernels
        assert x86.executes("conv", BitAssignment(w, a)) and x86.executes("linear", BitAssignment(w, a))
    assert x86.executes("matmul", BitAssignment(16, 16))
    assert not x86.executes("conv", BitAssignment(32, 16)) and not x86.executes("linear", BitAssignment(8, 32))
    assert not x86.executes("embedding", BitAssignment(8, 32))  # a lookup: weights dequantized, no kernel
    assert not x86.executes("linear", BitAssignment(32, 32))


def test_x86_sixteen_bit_kernels_skip_depthwise_convs() -> None:
    """A depthwise conv gets the 8-bit precisions only: the wide kernels compute groups = 1."""
    from lcpaq.ir import capture, find_layers
    from lcpaq.passes import Pipeline
    from tests.backends._nets import TinyMobile
    from tests.conftest import make_ctx

    target = load_target("x86-host")
    backend, x = backend_for(target), torch.randn(1, 3, 12, 12)
    gm = Pipeline.from_spec("shape-prop,cost")(capture(TinyMobile().eval(), (x,)), make_ctx(target, x)).graph_module
    widest = {layer.name: max(max(b.w_bits, b.a_bits) for b in backend.layer_precisions(gm, layer, target).bits if b.w_bits < 32)
              for layer in find_layers(gm)}
    assert widest == {"stem": 16, "expand": 16, "dw": 8, "project": 16, "dw2": 8, "fc": 16}


def test_a_new_x86_target_is_a_data_file_alone(tmp_path) -> None:
    """A throwaway target of the x86 family, written as TOML only, builds and runs a model."""
    toml = tmp_path / "my-x86.toml"
    toml.write_text(
        'name = "my-x86"\nbackend = "x86-vnni"\ndescription = "a throwaway x86 target"\n'
        '[tvm]\nkind = "llvm"\nmcpu = "native"\n'
        '[precisions]\nnative_weight_bits = { conv = [8], linear = [8], matmul = [8] }\nstorage_weight_bits = [4]\nact_bits = [8]\n'
        '[device]\nkind = "local"\nrequires = ["avx512_vnni"]\n'
    )
    target = load_target(str(toml))
    assert runs_here(target)
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    gm = quantized(model, x, "uniform{w=4,a=8},fake-quant", target=str(toml))
    built = build_model(gm, (x[:1],), target)
    assert built.target == "my-x86" and "vpdpbusd" in built.asm
    with torch.no_grad():
        assert np.array_equal(built.run(x[:1]), first_output(built.integer_graph(x[:1])).numpy())


def test_a_board_target_without_a_board_says_how_to_give_one(tmp_path) -> None:
    toml = tmp_path / "far.toml"
    toml.write_text(open(load_target("x86-host").source).read().replace('kind = "local"', 'kind = "rpc"'))
    far = load_target(str(toml))
    assert not runs_here(far)
    with pytest.raises(ConfigError, match=r"target 'x86-host' runs on a board reached over RPC: give --rpc HOST:PORT or --tracker"):
        backend_for(far).check_available(far)
    with pytest.raises(ConfigError, match="runs on this machine; --rpc and --tracker are for targets reached over RPC"):
        load_target("x86-host").reached_over(RemoteDevice(rpc="127.0.0.1:9090"))


def test_a_board_that_does_not_answer_is_one_line_naming_it() -> None:
    target = load_target("arm-a76").reached_over(RemoteDevice(rpc="127.0.0.1:1"))
    assert runs_here(target)  # given: tried when used
    with pytest.raises(ConfigError, match=r"cannot reach the RPC server 127.0.0.1:1: .*\(an emulated board on this machine: `make arm-board`\)"):
        backend_for(target).device(target)


def test_layer_precisions_are_what_the_backend_executes_and_the_target_offers() -> None:
    """The per-layer answer the assignment reads (``executable``) never promises more than the
    backend's kernels run at, or than the target lists; float is always among it."""
    from lcpaq.ir import capture, find_layers
    from lcpaq.passes import Pipeline
    from tests.conftest import make_ctx

    target = load_target("x86-host")
    backend = backend_for(target)
    x = torch.randn(1, 3, 16, 16)
    gm = Pipeline.from_spec("shape-prop,cost")(capture(TinyResNet().eval(), (x,)), make_ctx(target, x)).graph_module
    for layer in find_layers(gm):
        answer = backend.layer_precisions(gm, layer, target)
        assert BitAssignment(32, 32) in answer.bits and answer.integer  # every TinyResNet layer has a kernel
        integer = [b for b in answer.bits if b != BitAssignment(32, 32)]
        assert integer == [c for c in target.candidates(layer.kind) if backend.layer_executes(gm, layer, c)]
