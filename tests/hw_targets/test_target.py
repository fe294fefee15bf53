import pytest

from lcpaq.hw_targets import available_targets, load_target
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.meta import BitAssignment


STORAGE = (2, 3, 4, 5, 6, 7)
ALL_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def test_builtin_targets_load() -> None:
    assert available_targets() == ["arm-a76", "arm-neoverse-v2", "nvidia-sm75", "nvidia-sm90", "sim", "x86-host"]
    for name in available_targets():
        assert load_target(name).name == name


@pytest.mark.parametrize(("name", "backend", "device", "memory", "requires", "tvm"), [
    ("x86-host", "x86-vnni", "local", 25769803776, ("avx512f", "avx512_vnni"), {"kind": "llvm", "mcpu": "native"}),
    ("arm-a76", "arm-dotprod", "rpc", 4294967296, (),
     {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}),
    ("nvidia-sm90", "cuda-tensorcore", "cuda", 85899345920, (), {"kind": "cuda", "arch": "sm_90"}),
    ("nvidia-sm75", "cuda-tensorcore", "cuda", 17179869184, (), {"kind": "cuda", "arch": "sm_75"}),
    ("sim", None, "none", None, (), {}),
])
def test_target_fields_as_written(name, backend, device, memory, requires, tvm) -> None:
    t = load_target(name)
    assert t.backend == backend
    assert (t.device, t.memory_bytes, t.required_features) == (device, memory, requires)
    assert t.tvm_target == tvm  # as written: "native" is left for the backend to resolve


@pytest.mark.parametrize(("name", "weights", "acts"), [
    ("x86-host", (*STORAGE, 8, 16), (8, 16)),
    ("arm-a76", (*STORAGE, 8), (8,)),
    ("nvidia-sm90", (4, 8), (8,)),
    ("sim", ALL_BITS, ALL_BITS),
])
def test_target_precisions(name, weights, acts) -> None:
    t = load_target(name)
    for kind in ("conv", "linear", "embedding"):  # embedding: linear's widths
        assert t.weight_bits(kind) == weights
    assert t.act_bits == acts
    assert t.candidates("conv") == tuple(BitAssignment(w, a) for w in weights for a in acts)
    assert t.candidates("matmul") == tuple(BitAssignment(a, a) for a in acts)
    assert t.candidates("embedding") == tuple(BitAssignment(w, 32) for w in weights)


def test_x86_host_precisions() -> None:
    t = load_target("x86-host")
    assert t.native_weight_bits == {"conv": (8, 16), "linear": (8, 16), "matmul": (8, 16)}
    assert t.storage_weight_bits == STORAGE
    assert t.act_bits == (8, 16)  # int8 on vpdpbusd, int16 on vpdpwssd
    assert t.candidates("linear") == tuple(BitAssignment(w, a) for w in (2, 3, 4, 5, 6, 7, 8, 16) for a in (8, 16))
    assert t.candidates("matmul") == (BitAssignment(8, 8), BitAssignment(16, 16))
    t.check("conv", BitAssignment(4, 8))
    t.check("linear", BitAssignment(32, 32))
    t.check("conv", BitAssignment(16, 8))
    with pytest.raises(ConfigError, match=r"^target 'x86-host' has no 4-bit activations; it offers 8, 16 \(or 32 = float\)$"):
        t.check("linear", BitAssignment(8, 4))
    arm = load_target("arm-a76")
    with pytest.raises(ConfigError, match=r"^target 'arm-a76' has no 16-bit weights for conv; it offers 2, 3, 4, 5, 6, 7, 8 \(or 32 = float\)$"):
        arm.check("conv", BitAssignment(16, 8))
    with pytest.raises(ConfigError, match="no 6-bit activations"):
        t.check("matmul", BitAssignment(6, 6))


def test_check_refuses_what_target_lacks() -> None:
    arm = load_target("arm-a76")
    arm.check("conv", BitAssignment(4, 8))
    arm.check("conv", BitAssignment(32, 32))  # float is always allowed
    with pytest.raises(ConfigError, match="target 'arm-a76' has no 16-bit weights for conv; it offers 2, 3, 4, 5, 6, 7, 8"):
        arm.check("conv", BitAssignment(16, 8))
    with pytest.raises(ConfigError, match="no 16-bit activations"):
        arm.check("linear", BitAssignment(8, 16))


def test_unknown_target_lists_the_known() -> None:
    with pytest.raises(ConfigError, match="unknown target 'tpu'; built-in targets: arm-a76, arm-neoverse-v2, nvidia-sm75, nvidia-sm90, sim, x86-host"):
        load_target("tpu")


def test_target_from_file_and_corrupt_file(tmp_path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text(
        'name = "mine"\n[precisions]\nnative_weight_bits = { conv = [8], linear = [8], matmul = [8] }\nact_bits = [8]\n'
    )
    mine = load_target(str(good))
    assert (mine.name, mine.weight_bits("conv"), mine.backend, mine.device, mine.tvm_target) == ("mine", (8,), None, "local", {})
    assert mine.source == str(good)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[precisions\n')
    with pytest.raises(CorruptFileError, match=f"target file {bad} is invalid"):
        load_target(str(bad))
    odd = tmp_path / "odd.toml"
    odd.write_text('name = "odd"\n[precisions]\nnative_weight_bits = { conv = [9], linear = [8], matmul = [8] }\nact_bits = [8]\n')
    with pytest.raises(CorruptFileError, match="unsupported bit-width 9"):
        load_target(str(odd))
