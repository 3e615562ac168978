"""The continual and spectral merges (opcm, iso_c, iso_cts, tsv_m, lines): each rule pinned on hand-made
tensors against numpy computations written here, then each method end to end through `recall merge`."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import run_cli
from test_merge import make_adapter, tensors
from transformers import AutoModelForCausalLM

from recall.merge import kernels
from recall.merge.methods import METHODS

NEW = ["opcm", "iso_c", "iso_cts", "tsv_m", "lines"]


def orthogonal_tasks(m=12, n=10, tasks=3, rank=2, seed=0):
    """Task vectors whose column spaces, and row spaces, are mutually orthogonal (disjoint blocks of
    two random orthogonal bases), with distinct singular values."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(m, m)))
    p, _ = np.linalg.qr(rng.normal(size=(n, n)))
    out = []
    for t in range(tasks):
        cols = slice(t * rank, (t + 1) * rank)
        sigma = np.diag(rng.uniform(0.5, 2.0, rank))
        out.append(q[:, cols] @ sigma @ p[:, cols].T)
    return out


def low_rank_tasks(m=12, n=10, tasks=3, rank=2, seed=1):
    """Overlapping low-rank task vectors (as LoRA deltas are)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n)) for _ in range(tasks)]


def run_kernel(name, deltas, base, weights=None, **params):
    """The method's kernel on models base + delta_q (float32), its merged delta back as float64."""
    method = METHODS[name]
    params = method.kernel_params(method.resolve(params))
    base_t = torch.tensor(base, dtype=torch.float32)
    models = [base_t + torch.tensor(d, dtype=torch.float32) for d in deltas]
    w = torch.ones(len(deltas)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    return (method.kernel(models, w, base_t, **params) - base_t).double().numpy()


def singular_values(matrix):
    s = np.linalg.svd(matrix, compute_uv=False)
    return s[s > 1e-4 * s[0]]


def projector(matrix):
    """Orthogonal projector onto the column space of `matrix` (numerical rank)."""
    u, s, _ = np.linalg.svd(matrix)
    u = u[:, : int((s > 1e-4 * s[0]).sum())]
    return u @ u.T


# ---- the rules on hand-made tensors -----------------------------------------------------------


def test_iso_c_gives_the_sum_one_flat_spectrum_over_its_row_and_column_spaces():
    deltas, base = low_rank_tasks(), np.random.default_rng(2).normal(size=(12, 10))
    merged = run_kernel("iso_c", deltas, base, scale=0.7)
    total = sum(deltas)
    s_sum, s_merged = singular_values(total), singular_values(merged)
    assert len(s_sum) == 6  # three rank-2 tasks in general position
    np.testing.assert_allclose(s_merged, np.full(6, 0.7 * s_sum.mean()), rtol=1e-4)
    np.testing.assert_allclose(projector(merged), projector(total), atol=1e-4)  # column space
    np.testing.assert_allclose(projector(merged.T), projector(total.T), atol=1e-4)  # row space


def test_iso_c_averages_vectors():
    deltas, base = [np.array([1.0, 2.0]), np.array([3.0, -2.0])], np.array([0.5, 0.5])
    np.testing.assert_allclose(run_kernel("iso_c", deltas, base), [2.0, 0.0], atol=1e-6)


def test_tsv_m_on_mutually_orthogonal_tasks_is_the_plain_sum():
    """Each task's singular vectors are already orthogonal to the others': nothing to decorrelate."""
    deltas = orthogonal_tasks()
    np.testing.assert_allclose(run_kernel("tsv_m", deltas, np.zeros((12, 10)), scale=0.5), 0.5 * sum(deltas), atol=1e-5)


def test_iso_cts_is_iso_c_with_an_all_common_subspace_and_stays_flat_inside_the_tasks_spaces():
    deltas, base = low_rank_tasks(), np.zeros((12, 10))
    all_common = run_kernel("iso_cts", deltas, base, common=1.0)
    np.testing.assert_allclose(all_common, run_kernel("iso_c", deltas, base), atol=1e-5)
    deltas = orthogonal_tasks()  # the tasks' own directions are then the sum's
    merged, total = run_kernel("iso_cts", deltas, base), sum(deltas)
    s = singular_values(merged)
    np.testing.assert_allclose(s, np.full(len(s), s.mean()), rtol=1e-4)
    np.testing.assert_allclose(projector(total) @ merged, merged, atol=1e-5)
    np.testing.assert_allclose(merged @ projector(total.T), merged, atol=1e-5)


def test_tsv_m_decorrelates_overlapping_tasks():
    """Two tasks along the same direction: the stacked singular vectors are made orthonormal, so the
    merge is not their sum; each task's singular values survive as the merge's spectrum."""
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=(12, 1)), rng.normal(size=(10, 1))
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    deltas = [2.0 * u @ v.T, 1.0 * u @ v.T + 0.5 * np.outer(np.eye(12)[0], np.eye(10)[0])]
    merged = run_kernel("tsv_m", deltas, np.zeros((12, 10)))
    top = [singular_values(d)[0] for d in deltas]
    np.testing.assert_allclose(np.sort(singular_values(merged))[::-1][:2], np.sort(top)[::-1], rtol=1e-4)
    assert np.linalg.norm(merged - sum(deltas)) > 0.1


def test_opcm_on_mutually_orthogonal_tasks_is_the_sum_at_the_mean_norm():
    deltas, base = orthogonal_tasks(), np.random.default_rng(4).normal(size=(12, 10))
    total = sum(deltas)
    expected = total * np.mean([np.linalg.norm(d) for d in deltas]) / np.linalg.norm(total)
    np.testing.assert_allclose(run_kernel("opcm", deltas, base), expected, atol=1e-5)


def test_opcm_removes_a_task_vector_inside_the_running_merges_leading_direction():
    """The second task repeats the first's leading singular pair: projected away, the merge is the first
    task alone, rescaled to the two task vectors' mean norm."""
    first = orthogonal_tasks(tasks=1)[0]
    u, s, vh = np.linalg.svd(first)
    second = 3.0 * np.outer(u[:, 0], vh[0])
    expected = first * (np.linalg.norm(first) + 3.0) / 2 / np.linalg.norm(first)
    np.testing.assert_allclose(run_kernel("opcm", [first, second], np.zeros((12, 10))), expected, atol=1e-5)


def test_opcm_removes_the_block_of_leading_directions_and_keeps_the_rest():
    """Singular values 2, 1.9, 1.8, 1.7, 1.6: half their sum is first exceeded at the third, so the block
    of the first two directions goes (u0 v1^T), a cross term beyond it stays (u0 v3^T)."""
    rng = np.random.default_rng(7)
    u, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    v, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    first = u[:, :5] @ np.diag([2.0, 1.9, 1.8, 1.7, 1.6]) @ v[:, :5].T
    inside, beyond = np.outer(u[:, 0], v[:, 1]), np.outer(u[:, 0], v[:, 3])
    for second, kept in ((inside, np.zeros((12, 10))), (beyond, beyond)):
        total = first + kept
        expected = total * (np.linalg.norm(first) + 1.0) / 2 / np.linalg.norm(total)
        np.testing.assert_allclose(run_kernel("opcm", [first, second], np.zeros((12, 10))), expected, atol=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_chain_task_vectors_are_each_models_own_step(name):
    """With chain, models [base + t1, base + t1 + t2] (each fine-tuned from the one before) merge like
    independent models [base + t1, base + t2] merged without it."""
    t1, t2 = low_rank_tasks(tasks=2, seed=5)
    base = np.random.default_rng(6).normal(size=(12, 10))
    weights = [0.5, 0.8]  # lines: the running merge keeps its scale in a chain, so compare with it at 1
    independent = run_kernel(name, [t1, t2], base, weights=[1.0, 0.8] if name == "lines" else weights)
    chained = run_kernel(name, [t1, t1 + t2], base, weights=weights, chain=True)
    np.testing.assert_allclose(chained, independent, atol=1e-4)


def test_lines_scales_each_layer_groups_task_vector_by_alpha_plus_beta_times_depth(make_model, tmp_path):
    base = make_model("base", layers=3)
    a, b = make_adapter(base, tmp_path / "a", 1), make_adapter(base, tmp_path / "b", 2)
    out = tmp_path / "out"
    args = ["--method", "lines", "--models", a[0], b[0], "--alpha", 0.2, "--beta", 0.6, "--weights", 1.0, 0.5]
    assert run_cli("merge", *args, "--out", out) == 0
    theta0, merged = tensors(base), tensors(out)
    for name, value in merged.items():
        block = re.search(r"layers\.(\d+)\.", name)
        scale = 0.2 + 0.6 * int(block.group(1)) / 2 if block else 0.2 if "embed" in name else 0.8
        expected = theta0[name] + scale * ((a[1][name] - theta0[name]) + 0.5 * (b[1][name] - theta0[name]))
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=name)
    record = json.loads((out / "merge_weights.json").read_text())
    np.testing.assert_allclose(np.array(record["layers"])[:, 0], [0.2, 0.2, 0.5, 0.8])
    assert record["params"] == {"alpha": 0.2, "beta": 0.6, "chain": False}


# ---- end to end --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("inputs", ["adapters", "folders"])
def test_cli_merges_lora_adapters_and_model_folders(make_model, tmp_path, name, inputs):
    """`recall merge --method X` streams each tensor through the kernel: LoRA adapters as their exact
    B A scale deltas, HF folders as they are (the rules themselves are pinned above)."""
    base = make_model("base")
    adapters = [make_adapter(base, tmp_path / f"lora{i}", i) for i in (1, 2)]
    if inputs == "adapters":
        models, states = [p for p, _ in adapters], [s for _, s in adapters]
    else:
        models = []
        for i, (_, state) in enumerate(adapters):
            model = AutoModelForCausalLM.from_pretrained(base)
            model.load_state_dict(state)
            model.save_pretrained(tmp_path / f"full{i}")
            models.append(tmp_path / f"full{i}")
        states = [tensors(m) for m in models]
    out = tmp_path / "out"
    assert run_cli("merge", "--method", name, "--models", *models, "--base", base, "--out", out) == 0
    theta0, merged = tensors(base), tensors(out)
    record = json.loads((out / "merge_weights.json").read_text())
    method = METHODS[name]
    params = method.kernel_params(record["params"])
    changed = 0
    for k, value in merged.items():
        w = torch.tensor(record["layers"][record["tensor_groups"][k]], dtype=torch.float32)
        expected = method.kernel([s[k].float() for s in states], w, theta0[k], **params)
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5, msg=k)
        changed += not torch.equal(value, theta0[k])
    assert changed == 2 * 3  # q_proj, v_proj, down_proj in both layers; the adapters leave the rest alone
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_merge_help_lists_the_new_methods(capsys):
    with pytest.raises(SystemExit):
        run_cli("merge", "--help")
    listing = capsys.readouterr().out.split("methods:")[-1]
    for name in NEW:
        assert re.search(rf"^  {name} ", listing, re.M), name


def test_kernel_helpers_cut_spectra_at_the_numerical_rank():
    u, s, vh = kernels.ranked_svd(torch.tensor(low_rank_tasks(tasks=1)[0], dtype=torch.float32))
    assert s.numel() == 2 and u.shape == (12, 2) and vh.shape == (2, 10)


# ---- in the pipeline -----------------------------------------------------------------------------


def test_each_new_method_is_its_own_chain_in_the_plan(tmp_path):
    from test_pipeline import tiny_params, write_params

    from recall.pipeline import layout, plan
    from recall.pipeline.params import load_params

    methods = {"opcm": {}, "iso_c": {"scale": 0.5}, "iso_cts": {}, "tsv_m": {}, "lines": {"alpha": 0.3}}
    params = load_params(write_params(tmp_path, tiny_params(methods=methods)))
    dag = {s.name: s for s in plan.plan(params)}
    first, second = [s.task for s in params.steps]
    for m in methods:
        merge = dag[f"merge-{m}-{second}"]
        assert merge.params == [f"methods.{m}"]
        assert merge.deps == [
            layout.chain_dir(params, m, first) / "model",
            layout.chain_dir(params, m, second) / "sft",
            layout.base_model(params),
        ]
    with pytest.raises(Exception, match="methods.opcm: --energy must be in"):
        load_params(write_params(tmp_path, tiny_params(methods={"opcm": {"energy": 1.5}})))


def test_a_sequential_lines_step_scales_only_the_steps_own_task_vector(tmp_path):
    """The step merges [previous merge, its fine-tune] as a chain: previous + lambda(depth) (new - previous)."""
    from helpers import tiny_model
    from test_pipeline import tiny_params, write_params

    from recall.pipeline import layout, stages
    from recall.pipeline.params import load_params

    params = load_params(write_params(tmp_path, tiny_params(methods={"lines": {"alpha": 0.2, "beta": 0.6}})))
    first, second = [s.task for s in params.steps]
    tiny_model(layout.base_model(params), layers=3, seed=0)
    previous = tiny_model(layout.chain_dir(params, "lines", first) / "model", layers=3, seed=1)
    new = tiny_model(layout.new_model(params, "lines", second), layers=3, seed=2)
    out = stages.merge_step(params, second, "lines")
    before, after, merged = tensors(previous), tensors(new), tensors(out)
    for name, value in merged.items():
        block = re.search(r"layers\.(\d+)\.", name)
        scale = 0.2 + 0.6 * int(block.group(1)) / 2 if block else 0.2 if "embed" in name else 0.8
        torch.testing.assert_close(value, before[name] + scale * (after[name] - before[name]), msg=name)
    assert json.loads((out / "merge_weights.json").read_text())["params"]["chain"] is True


def test_an_svd_that_fails_to_converge_in_float32_is_done_in_float64(monkeypatch):
    """LAPACK's divide and conquer can fail on matrices with many repeated singular values (seen on Iso-CTS's
    stacked orthonormal blocks of ~1 GB checkpoints); the kernels then take the SVD in float64."""
    from recall.merge import kernels

    svd = torch.linalg.svd
    failed = []

    def float32_fails(m, full_matrices=True):
        if m.dtype == torch.float32:
            failed.append(m.shape)
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return svd(m, full_matrices=full_matrices)

    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 8, generator=g)
    tensors = [base + torch.randn(12, 8, generator=g) for _ in range(2)]
    weights = torch.ones(2)
    expected = kernels.iso_cts(tensors, weights, base)
    monkeypatch.setattr(torch.linalg, "svd", float32_fails)
    got = kernels.iso_cts(tensors, weights, base)
    assert failed and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
