import re
from pathlib import Path

import pytest

from lcpaq.hw_targets import load_target
from lcpaq.hw_targets import target as target_module
from lcpaq.hw_targets.host import default_target_name, host_cpu_name, host_features, host_support

# An Intel Sapphire Rapids excerpt: two processors, and a "vmx flags" line that is not the flags.
SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer posted_intr
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8 second_cpu_only
"""
SPR_FLAGS = frozenset({"fpu", "sse", "avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8"})
SKX = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
OLD = "processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse avx2\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0b\n"
BLANK_NAME = "processor\t: 0\nmodel name\t:   \nflags\t\t: fpu\n"
X86_REQUIRES = ("avx512f", "avx512_vnni")


@pytest.mark.parametrize(("text", "expected"), [
    (SPR, SPR_FLAGS),  # the first processor's "flags" line only: not "vmx flags", not processor 1
    (SKX, frozenset({"fpu", "sse", "avx2", "avx512f", "avx512bw"})),
    (ARM, frozenset({"fp", "asimd", "asimddp"})),
    ("", frozenset()),
    ("processor\t: 0\nmodel name\t: No flags\n", frozenset()),
])
def test_features_from_fixed_cpuinfo(text: str, expected: frozenset[str]) -> None:
    assert host_features(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (SPR, "Intel(R) Xeon(R) Platinum 8480+"),
    (SKX, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"),  # a ":" inside the value is kept
    (ARM, "unknown CPU"),
    ("", "unknown CPU"),
    (BLANK_NAME, "unknown CPU"),
])
def test_cpu_name_from_fixed_cpuinfo(text: str, expected: str) -> None:
    assert host_cpu_name(text) == expected


@pytest.mark.parametrize(("text", "missing", "message"), [
    (SPR, (), "this host has avx512f, avx512_vnni"),
    (SKX, ("avx512_vnni",), "this host lacks avx512_vnni (needs avx512f, avx512_vnni)"),
    (OLD, X86_REQUIRES, "this host lacks avx512f, avx512_vnni (needs avx512f, avx512_vnni)"),
    (ARM, X86_REQUIRES, "this host lacks avx512f, avx512_vnni (needs avx512f, avx512_vnni)"),
    ("", X86_REQUIRES, "this host lacks avx512f, avx512_vnni (needs avx512f, avx512_vnni)"),
])
def test_x86_host_support(text: str, missing: tuple[str, ...], message: str) -> None:
    support = host_support(load_target("x86-host"), host_features(text))
    assert (support.target, support.required, support.missing) == ("x86-host", X86_REQUIRES, missing)
    assert support.ok is (missing == ())
    assert str(support) == message


def test_target_without_requirements_is_supported_anywhere() -> None:
    support = host_support(load_target("arm-a76"), frozenset())
    assert (support.required, support.missing, support.ok, str(support)) == ((), (), True, "no CPU features required")


@pytest.mark.parametrize(("features", "expected"), [
    (frozenset({"avx512f", "avx512_vnni"}), "x86-host"),
    (SPR_FLAGS, "x86-host"),
    (frozenset({"avx512f", "avx512bw"}), "sim"),  # no VNNI: x86-host cannot run here
    (frozenset({"fp", "asimd", "asimddp"}), "sim"),  # arm-a76 is reached over RPC, not local
    (frozenset(), "sim"),
])
def test_default_target_name_for_fixed_features(features: frozenset[str], expected: str) -> None:
    assert default_target_name(features) == expected


def test_default_target_name_is_first_by_name_that_is_local_built_and_supported(tmp_path: Path, monkeypatch) -> None:
    def write(name: str, backend: str | None, kind: str, requires: list[str]) -> None:
        lines = [f'name = "{name}"']
        if backend is not None:
            lines.append(f'backend = "{backend}"')
        lines += [
            "[precisions]", "native_weight_bits = { conv = [8], linear = [8], matmul = [8] }", "act_bits = [8]",
            "[device]", f'kind = "{kind}"', f"requires = {requires!r}".replace("'", '"'),
        ]
        (tmp_path / f"{name}.toml").write_text("\n".join(lines) + "\n")

    write("a-remote", "be", "rpc", [])
    write("b-no-backend", None, "local", [])
    write("c-needs-foo", "be", "local", ["foo"])
    write("d-needs-bar", "be", "local", ["bar"])
    write("e-plain", "be", "local", [])
    monkeypatch.setattr(target_module, "TARGET_DIR", tmp_path)
    assert default_target_name(frozenset({"foo", "bar"})) == "c-needs-foo"
    assert default_target_name(frozenset({"bar"})) == "d-needs-bar"
    assert default_target_name(frozenset()) == "e-plain"
    (tmp_path / "e-plain.toml").unlink()
    assert default_target_name(frozenset()) == "sim"


# --- this machine, read independently with regular expressions --------------------------------

def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _regex_flags(text: str) -> frozenset[str]:
    m = re.search(r"^(?:flags|Features)[ \t]*:[ \t]*(.*)$", text, re.MULTILINE | re.IGNORECASE)
    return frozenset(re.findall(r"\S+", m.group(1))) if m else frozenset()


def _regex_name(text: str) -> str:
    m = re.search(r"^model name[ \t]*:[ \t]*(\S.*?)[ \t]*$", text, re.MULTILINE | re.IGNORECASE)
    return m.group(1) if m else "unknown CPU"


def test_regex_reference_agrees_with_fixed_texts() -> None:
    """The reference parsers below must themselves be right before they judge this host."""
    assert _regex_flags(SPR) == SPR_FLAGS and _regex_flags(ARM) == {"fp", "asimd", "asimddp"} and _regex_flags("") == set()
    assert _regex_name(SPR) == "Intel(R) Xeon(R) Platinum 8480+" and _regex_name(ARM) == "unknown CPU"


def test_this_host_matches_an_independent_parse() -> None:
    text = _cpuinfo()
    assert host_features() == _regex_flags(text)
    assert host_cpu_name() == _regex_name(text)
    if Path("/proc/cpuinfo").exists():
        assert host_features(), "/proc/cpuinfo exists but no flags were read from it"
    have = _regex_flags(text)
    support = host_support(load_target("x86-host"))
    assert support.missing == tuple(f for f in X86_REQUIRES if f not in have)
    assert default_target_name() == ("x86-host" if set(X86_REQUIRES) <= have else "sim")
