from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import host_cpu_name, host_features, host_support

SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
"""
OLD = "processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse avx2\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0b\n"


def test_features_from_fake_cpuinfo() -> None:
    f = host_features(SPR)
    assert {"avx512f", "avx512_vnni", "amx_int8"} <= f and "avx512_fp16" not in f
    assert host_features(ARM) == frozenset({"fp", "asimd", "asimddp"})
    assert host_features("") == frozenset()


def test_cpu_name() -> None:
    assert host_cpu_name(SPR) == "Intel(R) Xeon(R) Platinum 8480+"
    assert host_cpu_name(ARM) == "unknown CPU"


def test_x86_host_needs_vnni() -> None:
    t = load_target("x86-host")
    assert "avx512_vnni" in t.required_features
    assert host_support(t, host_features(SPR)).ok
    old = host_support(t, host_features(OLD))
    assert not old.ok and "avx512_vnni" in old.missing and "lacks" in str(old)


def test_real_host_is_readable() -> None:
    assert isinstance(host_features(), frozenset)  # whatever this machine is, no exception
