"""Hessian-vector products and Hutchinson samples on graphs with ops that have no double
backward in PyTorch (hardsigmoid, the fused CPU attention behind scaled_dot_product_attention,
cdist), against exact products of the same loss written out by hand in float64
(tests/passes/test_hessian_models.py) by torch.autograd.functional.hvp."""
import math

import pytest
import torch
import torch.nn.functional as F

from lcpaq.ir import capture, find_layers
from lcpaq.passes.hutchinson import _rademacher, hessian_traces, hessian_vector_products
from lcpaq.passes.hvp_plan import DECOMPOSED, FINITE_DIFFERENCE, REPLACEMENTS, HvpPlan, plan_hvp
from tests.passes import test_hessian_models as models

CASES = {
    "squeeze-excite": (models.SqueezeExcite, {}, models.squeeze_excite_ref, (4, 3, 6, 6), ["hardsigmoid"]),
    "attention": (models.TinyAttention, {"mask": "none"}, models.tiny_attention_ref("none"), (3, 5, 8), ["scaled_dot_product_attention"]),
    "attention-causal": (models.TinyAttention, {"mask": "causal"}, models.tiny_attention_ref("causal"), (3, 5, 8), ["scaled_dot_product_attention"]),
    "attention-float-mask": (models.TinyAttention, {"mask": "float"}, models.tiny_attention_ref("float"), (3, 5, 8), ["scaled_dot_product_attention"]),
    "attention-bool-mask": (models.TinyAttention, {"mask": "bool"}, models.tiny_attention_ref("bool"), (3, 5, 8), ["scaled_dot_product_attention"]),
    "flash-attention-for-cpu": (models.FlashAttention, {}, models.tiny_attention_ref("causal"), (3, 5, 8), ["_scaled_dot_product_flash_attention_for_cpu"]),
    "llama-block": (models.LlamaBlock, {}, models.llama_block_ref, (2, 5, 8), ["scaled_dot_product_attention"]),
    "cdist": (models.Prototypes, {}, models.prototypes_ref, (6, 6), ["cdist"]),
}


def _setup(case: str):
    cls, kwargs, ref, shape, ops = CASES[case]
    torch.manual_seed(0)
    model = cls(**kwargs).eval()
    x = torch.randn(*shape)
    y = torch.randint(0, 3 if case in ("squeeze-excite", "cdist") else shape[-1], (shape[0],))
    gm = capture(model, (x,))
    layers = find_layers(gm)
    names = [str(layer.weight.target) for layer in layers]
    act_nodes = list(dict.fromkeys(a for layer in layers for a in layer.act_inputs))
    # each probed activation is the input of a layer: the reference adds its perturbation there
    first_reader = {node: next(layer.name for layer in layers if node in layer.act_inputs) for node in act_nodes}
    return model, gm, x, y, ref, ops, names, act_nodes, first_reader


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dim, averaged over every other position: curvature of the
    network itself, not only Gauss-Newton."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat_interleave(out[..., 0].numel() // len(y)))


def _reference_hvp(model, ref, x, y, names, readers, v_w, v_a):
    """Exact H v in float64 of the loss w.r.t. the named weights and the perturbations at the
    inputs of the layers ``readers`` (one v per tensor)."""
    params = {k: t.detach().double() for k, t in model.state_dict().items()}

    def f(*tensors):
        weights = dict(zip(names, tensors[: len(names)]))
        deltas = dict(zip(readers, tensors[len(names):]))
        return _loss(ref({**params, **weights}, deltas, x.double()), y)

    inputs = tuple(params[n] for n in names) + tuple(torch.zeros(v.shape, dtype=torch.float64) for v in v_a)
    _, hv = torch.autograd.functional.hvp(f, inputs, tuple(v.double() for v in (*v_w, *v_a)))
    return list(hv[: len(names)]), list(hv[len(names):])


def _close(got, want, rel: float) -> None:
    for g, w in zip(got, want, strict=True):
        assert g is not None and g.shape == w.shape
        assert float((g.double() - w).norm()) <= rel * float(w.norm()) + 1e-12


@pytest.mark.parametrize("case", [c for c in CASES if c != "cdist"])
def test_hvp_through_decomposed_ops_is_exact(case: str) -> None:
    model, gm, x, y, ref, ops, names, act_nodes, first_reader = _setup(case)
    weights = {n: getattr(model, n.split(".")[0]).weight.detach().clone().requires_grad_(True) for n in names}
    loss = lambda out: _loss(out, y)  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    v_w = [torch.randn(w.shape, generator=gen) for w in weights.values()]
    draw = lambda d: torch.randn(d.shape, generator=gen)  # noqa: E731
    with pytest.raises(RuntimeError, match="derivative for .* is not implemented"):
        hessian_vector_products(gm, weights, act_nodes, (x,), loss, v_w, draw)  # as captured: no double backward
    plan = plan_hvp(gm, weights, act_nodes, (x,))
    assert plan.method == DECOMPOSED and len(plan.notes) == len(plan.decomposed) >= 1
    assert all(any(op in note for op in ops) and "test_hessian_models.py:" in note for note in plan.notes)
    hv_w, probed, v_a, hv_a = hessian_vector_products(gm, weights, act_nodes, (x,), loss, v_w, draw, plan)
    assert probed == act_nodes
    want_w, want_a = _reference_hvp(model, ref, x, y, names, [first_reader[n] for n in probed], v_w, v_a)
    _close(hv_w, want_w, 1e-5)
    _close(hv_a, want_a, 1e-5)


def test_hvp_by_central_differences_where_no_decomposition_exists() -> None:
    """cdist has neither double backward nor a decomposition: the probe differences gradients.
    Its block products H_ww v_w and H_aa v_a match the exact ones to the step's accuracy."""
    model, gm, x, y, ref, ops, names, act_nodes, first_reader = _setup("cdist")
    weights = {n: getattr(model, n.split(".")[0]).weight.detach().clone().requires_grad_(True) for n in names}
    plan = plan_hvp(gm, weights, act_nodes, (x,))
    assert plan.method == FINITE_DIFFERENCE and len(plan.finite_difference) == 1
    assert "aten.cdist" in plan.notes[0] and "central differences" in plan.notes[0]
    assert "torch.cdist(torch.tanh(self.embed(x)), self.protos)" in plan.notes[0]
    gen = torch.Generator().manual_seed(1)
    v_w = [torch.randn(w.shape, generator=gen) for w in weights.values()]
    draw = lambda d: torch.randn(d.shape, generator=gen)  # noqa: E731
    hv_w, probed, v_a, hv_a = hessian_vector_products(gm, weights, act_nodes, (x,), lambda o: _loss(o, y), v_w, draw, plan)
    readers = [first_reader[n] for n in probed]
    want_w, _ = _reference_hvp(model, ref, x, y, names, readers, v_w, [torch.zeros_like(v) for v in v_a])
    _, want_a = _reference_hvp(model, ref, x, y, names, readers, [torch.zeros_like(v) for v in v_w], v_a)
    _close(hv_w, want_w, 1e-3)  # float32 gradients differenced at a step of FD_STEP x rms
    _close(hv_a, want_a, 1e-3)


def _reference_samples(model, ref, x, y, names, readers, act_shapes, probes: int, seed: int, blocks: bool):
    """v^T H v per tensor for each of ``probes`` Rademacher probes drawn as hessian_traces draws
    them (one batch): the weights' v, then each activation's."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(probes):
        v_w = [_rademacher(getattr(model, n.split(".")[0]).weight, gen) for n in names]
        v_a = [_rademacher(torch.empty(s), gen) for s in act_shapes]
        if blocks:  # finite differences: H_ww v_w and H_aa v_a
            hv_w, _ = _reference_hvp(model, ref, x, y, names, readers, v_w, [torch.zeros_like(v) for v in v_a])
            _, hv_a = _reference_hvp(model, ref, x, y, names, readers, [torch.zeros_like(v) for v in v_w], v_a)
        else:
            hv_w, hv_a = _reference_hvp(model, ref, x, y, names, readers, v_w, v_a)
        out.append([float((v * h).sum()) for v, h in zip((*v_w, *v_a), (*hv_w, *hv_a))])
    return out


@pytest.mark.parametrize(("case", "method", "rel"), [
    ("squeeze-excite", DECOMPOSED, 1e-5),
    ("llama-block", DECOMPOSED, 1e-5),
    ("cdist", FINITE_DIFFERENCE, 1e-3),
])
def test_hutchinson_samples_match_exact_products(case: str, method: str, rel: float) -> None:
    """hessian_traces on a graph as captured (its first probe fails, it plans and probes again)
    gives, probe by probe, the exact v^T H_ii v of the same Rademacher vectors, and says how."""
    model, gm, x, y, ref, ops, names, act_nodes, first_reader = _setup(case)
    with pytest.warns(UserWarning, match=ops[0]):
        w_est, a_est = hessian_traces(gm, names, act_nodes, ((x,),), lambda o, b: _loss(o, y), 3, 3, 0.0, seed=5)
    shapes = [tuple(n.meta["val"].shape[1:]) for n in act_nodes]
    shapes = [(x.shape[0], *s) for s in shapes]
    want = _reference_samples(model, ref, x, y, names, [first_reader[n] for n in act_nodes], shapes, 3, 5, method == FINITE_DIFFERENCE)
    got = [[w_est[n].samples[k] for n in names] + [a_est[n].samples[k] for n in act_nodes] for k in range(3)]
    scale = max(abs(s) for probe in want for s in probe)
    for g_probe, w_probe in zip(got, want):
        for g, w in zip(g_probe, w_probe):
            assert g == pytest.approx(w, rel=rel, abs=rel * scale)
    assert {est.hvp for est in (*w_est.values(), *a_est.values())} == {method}


@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float"])
def test_attention_replacements_give_the_fused_kernels_values(mask: str) -> None:
    """The stand-ins for the fused attention ops compute what the ops do (output and
    logsumexp), and can be differentiated twice where the ops cannot."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=gen) for _ in range(3))
    attn_mask = {"bool": torch.rand(5, 5, generator=gen) > 0.3, "float": torch.randn(5, 5, generator=gen)}.get(mask)
    attn_mask = None if attn_mask is None else attn_mask | torch.eye(5, dtype=torch.bool) if mask == "bool" else attn_mask
    causal = mask == "causal"
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    flash_mask = attn_mask  # the fused kernel takes an additive mask of the query's dtype only
    if mask == "bool":
        flash_mask = torch.zeros(5, 5).masked_fill(~attn_mask, -math.inf)
    want_out, want_lse = flash(q, k, v, 0.0, causal, attn_mask=flash_mask)
    got_out, got_lse = REPLACEMENTS[flash](q, k, v, 0.0, causal, attn_mask=flash_mask)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-6)
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    torch.testing.assert_close(REPLACEMENTS[sdpa](q, k, v, attn_mask, is_causal=causal),
                               sdpa(q, k, v, attn_mask, is_causal=causal), rtol=1e-5, atol=1e-6)
    gqa = (q, k[:, :1], v[:, :1])  # grouped-query: one key/value head for two query heads
    torch.testing.assert_close(REPLACEMENTS[sdpa](*gqa, attn_mask, is_causal=causal, enable_gqa=True),
                               sdpa(*gqa, attn_mask, is_causal=causal, enable_gqa=True), rtol=1e-5, atol=1e-6)
    qr = q.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(REPLACEMENTS[sdpa](qr, k, v, attn_mask, is_causal=causal).pow(2).sum(), qr, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), qr)
    assert h.isfinite().all() and h.abs().sum() > 0


def test_plan_summary_is_one_line_per_op() -> None:
    decomposed = "evaluated through its decomposition"
    plan = HvpPlan(frozenset({"hs", "hs_1"}), ("cd",), (
        ("aten.hardsigmoid.default", "node hs, m.py:3 (`F.hardsigmoid(s)`)", decomposed),
        ("aten.hardsigmoid.default", "node hs_1, m.py:9 (`F.hardsigmoid(t)`)", decomposed),
        ("aten.cdist.default", "node cd, m.py:5", "Hessian-vector products use central differences of gradients"),
    ))
    assert plan.method == FINITE_DIFFERENCE
    assert plan.summary() == (
        "aten.hardsigmoid.default (node hs, m.py:3 (`F.hardsigmoid(s)`), and 1 more node(s)) has no double backward; "
        "evaluated through its decomposition; aten.cdist.default (node cd, m.py:5) has no double backward; "
        "Hessian-vector products use central differences of gradients")
    assert plan.notes[1] == "aten.hardsigmoid.default (node hs_1, m.py:9 (`F.hardsigmoid(t)`)) has no double backward; " + decomposed
