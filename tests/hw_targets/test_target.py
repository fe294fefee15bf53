import pytest

from lcpaq.hw_targets import available_targets, load_target
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.meta import BitAssignment


def test_builtin_targets_load() -> None:
    names = available_targets()
    assert {"x86-host", "arm-a76", "nvidia-sm90", "sim"} <= set(names)
    for name in names:
        target = load_target(name)
        assert target.name == name
        assert target.candidates("conv")


def test_x86_host_precisions() -> None:
    t = load_target("x86-host")
    from tvm.target import codegen

    assert t.tvm_target == {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}  # "native", resolved
    assert t.weight_bits("conv") == (2, 3, 4, 5, 6, 7, 8, 16)
    assert t.act_bits == (8, 16)
    assert BitAssignment(4, 8) in t.candidates("linear")
    assert all(c.a_bits in (8, 16) for c in t.candidates("linear"))
    assert t.candidates("matmul") == (BitAssignment(8, 8), BitAssignment(16, 16))


def test_check_refuses_what_target_lacks() -> None:
    arm = load_target("arm-a76")
    arm.check("conv", BitAssignment(4, 8))
    arm.check("conv", BitAssignment(32, 32))  # float is always allowed
    with pytest.raises(ConfigError, match="target 'arm-a76' has no 16-bit weights for conv; it offers 2, 3, 4, 5, 6, 7, 8"):
        arm.check("conv", BitAssignment(16, 8))
    with pytest.raises(ConfigError, match="no 16-bit activations"):
        arm.check("linear", BitAssignment(8, 16))


def test_unknown_target_lists_the_known() -> None:
    with pytest.raises(ConfigError, match="unknown target 'tpu'; built-in targets: arm-a76, nvidia-sm90, sim, x86-host"):
        load_target("tpu")


def test_target_from_file_and_corrupt_file(tmp_path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text(
        'name = "mine"\n[precisions]\nnative_weight_bits = { conv = [8], linear = [8], matmul = [8] }\nact_bits = [8]\n'
    )
    assert load_target(str(good)).weight_bits("conv") == (8,)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[precisions\n')
    with pytest.raises(CorruptFileError, match=f"target file {bad} is invalid"):
        load_target(str(bad))
    odd = tmp_path / "odd.toml"
    odd.write_text('name = "odd"\n[precisions]\nnative_weight_bits = { conv = [9], linear = [8], matmul = [8] }\nact_bits = [8]\n')
    with pytest.raises(CorruptFileError, match="unsupported bit-width 9"):
        load_target(str(odd))
