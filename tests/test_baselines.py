"""Baseline merge methods: cross-checked against mergekit and against references written here.

mergekit is a test extra (`pip install -e ".[mergekit]"`); without it the mergekit cross-checks skip and
the in-test references (numpy, written independently of recall's kernels) still check every method.
"""

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from helpers import run_cli, tiny_model
from test_merge import make_adapter, tensors
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.data import chat_prompt, read_examples, render
from recall.merge import kernels


def mergekit_merge(tmp_path, config: dict) -> dict:
    """Run mergekit in-process on `config` (dtype float32) and return the merged tensors."""
    pytest.importorskip("mergekit", reason='mergekit is a test extra: pip install -e ".[mergekit]"')
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    out = tmp_path / "mergekit"
    run_merge(MergeConfiguration.model_validate({**config, "dtype": "float32"}), str(out), MergeOptions(quiet=True))
    return tensors(out)


def assert_same_tensors(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for name in ours:
        rel = (ours[name] - theirs[name]).norm() / theirs[name].norm().clamp_min(1e-12)
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6)


def ties_reference(
    thetas: list[np.ndarray], base: np.ndarray, weights, density: float, scale=1.0, normalize=True, keep_ties=False
):
    """TIES as the paper writes it, with sorting and stacking (float64). `keep_ties` also keeps the
    entries whose magnitude equals the k-th largest (as recall does; real task vectors have such ties)."""
    deltas = []
    for theta, w in zip(thetas, weights):
        d = (theta - base).astype(np.float64).ravel()
        k = max(1, int(density * d.size))
        trimmed = np.zeros_like(d)
        top = np.argsort(-np.abs(d), kind="stable")[:k]
        if keep_ties:
            top = np.flatnonzero(np.abs(d) >= np.abs(d[top[-1]]))
        trimmed[top] = d[top]
        deltas.append(w * trimmed)
    d = np.stack(deltas)
    sign = np.where(d.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(d) == sign
    merged = (d * agree).sum(0)
    if normalize:
        divisor = (np.asarray(weights, dtype=np.float64)[:, None] * agree).sum(0)
        merged = merged / np.where(divisor == 0, 1, divisor)
    return (base.astype(np.float64).ravel() + scale * merged).reshape(base.shape)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A base model and two 'fine-tuned' ones: the base plus small random deltas (as real experts are).
    Built once per module: the tests only read them."""
    base = tiny_model(tmp_path_factory.mktemp("trio") / "base", seed=0)
    theta0 = tensors(base)
    experts = []
    for i in (1, 2):
        gen = torch.Generator().manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(base)
        state = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in theta0.items()}
        model.load_state_dict(state, strict=False)
        path = base.parent / f"expert{i}"
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(base).save_pretrained(path)
        experts.append(path)
    return base, experts


# ---- mergekit cross-checks --------------------------------------------------------------------


def test_average_matches_mergekit_linear(make_model, tmp_path):
    models = [make_model(n, seed=s) for n, s in [("a", 1), ("b", 2), ("c", 3)]]
    w = [0.2, 0.3, 0.5]
    assert run_cli("merge", "--method", "average", "--models", *models, "--weights", *w, "--out", tmp_path / "out") == 0
    theirs = mergekit_merge(
        tmp_path,
        {
            "merge_method": "linear",
            "parameters": {"normalize": False},
            "models": [{"model": str(m), "parameters": {"weight": x}} for m, x in zip(models, w)],
        },
    )
    assert_same_tensors(tensors(tmp_path / "out"), theirs)


def test_task_arithmetic_matches_mergekit(trio, tmp_path):
    base, experts = trio
    assert (
        run_cli(
            "merge",
            "--method",
            "task_arithmetic",
            "--base",
            base,
            "--models",
            *experts,
            "--weights",
            0.7,
            0.4,
            "--scale",
            0.8,
            "--out",
            tmp_path / "out",
        )
        == 0
    )
    theirs = mergekit_merge(
        tmp_path,
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "parameters": {"lambda": 0.8},
            "models": [{"model": str(m), "parameters": {"weight": x}} for m, x in zip(experts, [0.7, 0.4])],
        },
    )
    assert_same_tensors(tensors(tmp_path / "out"), theirs)


@pytest.mark.parametrize(("weights", "scale"), [([1.0, 1.0], 1.0), ([0.7, 0.3], 0.9)])
def test_ties_matches_mergekit(trio, tmp_path, weights, scale):
    base, experts = trio
    assert (
        run_cli(
            "merge",
            "--method",
            "ties",
            "--base",
            base,
            "--models",
            *experts,
            "--density",
            0.5,
            "--weights",
            *weights,
            "--scale",
            scale,
            "--out",
            tmp_path / "out",
        )
        == 0
    )
    theirs = mergekit_merge(
        tmp_path,
        {
            "merge_method": "ties",
            "base_model": str(base),
            "parameters": {"normalize": True, "lambda": scale},
            "models": [
                {"model": str(m), "parameters": {"weight": x, "density": 0.5}} for m, x in zip(experts, weights)
            ],
        },
    )
    assert_same_tensors(tensors(tmp_path / "out"), theirs)


# ---- references written here ------------------------------------------------------------------


def test_ties_kernel_on_a_worked_example():
    base = torch.zeros(4)
    a, b = torch.tensor([3.0, -1.0, 0.5, 2.0]), torch.tensor([-2.0, -4.0, 1.0, 0.1])
    # trim to 2 of 4: a -> [3, 0, 0, 2], b -> [-2, -4, 0, 0]; elected signs + - + +; disjoint means:
    out = kernels.ties([a, b], torch.ones(2), base, density=0.5)
    assert out.tolist() == [3.0, -4.0, 0.0, 2.0]
    assert a.tolist() == [3.0, -1.0, 0.5, 2.0]  # inputs untouched
    summed = kernels.ties([a, b], torch.ones(2), base, density=0.5, normalize=False, scale=0.5)
    assert summed.tolist() == [1.5, -2.0, 0.0, 1.0]


@pytest.mark.parametrize(("density", "weights", "normalize"), [(0.3, [1.0, 1.0], True), (0.8, [0.6, 1.5], False)])
def test_ties_cli_matches_an_independent_reference(trio, tmp_path, density, weights, normalize):
    base, experts = trio
    flag = "--normalize" if normalize else "--no-normalize"
    assert (
        run_cli(
            "merge",
            "--method",
            "ties",
            "--base",
            base,
            "--models",
            *experts,
            "--density",
            density,
            "--weights",
            *weights,
            flag,
            "--scale",
            1.2,
            "--out",
            tmp_path / "out",
        )
        == 0
    )
    theta0, inputs, merged = tensors(base), [tensors(e) for e in experts], tensors(tmp_path / "out")
    for name, value in merged.items():
        expected = ties_reference(
            [t[name].numpy() for t in inputs], theta0[name].numpy(), weights, density, 1.2, normalize
        )
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)
    record = json.loads((tmp_path / "out" / "merge_weights.json").read_text())
    assert record["params"] == {"density": density, "scale": 1.2, "normalize": normalize}
    assert record["base"] == str(base) and record["layers"][0] == weights


def test_task_arithmetic_defaults_to_unit_weights(trio, tmp_path):
    base, experts = trio
    assert (
        run_cli("merge", "--method", "task_arithmetic", "--base", base, "--models", *experts, "--out", tmp_path / "out")
        == 0
    )
    theta0, (t1, t2), merged = tensors(base), [tensors(e) for e in experts], tensors(tmp_path / "out")
    for name, value in merged.items():
        torch.testing.assert_close(value, t1[name] + t2[name] - theta0[name], rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "out" / "merge_weights.json").read_text())["params"] == {"scale": 1.0}


def test_dare_keeps_density_of_entries_scaled_by_exactly_one_over_density():
    n, density = 1_000_000, 0.3
    delta = torch.randn(n, generator=torch.Generator().manual_seed(0))
    for kernel in (kernels.dare_linear, kernels.dare_ties):
        out = kernel([delta], torch.ones(1), torch.zeros(n), density=density, seed=7)
        kept = out != 0
        # Bernoulli(density) per entry: the kept fraction is within 5 standard deviations of density.
        assert abs(kept.float().mean().item() - density) < 5 * math.sqrt(density * (1 - density) / n)
        assert torch.equal(out[kept], delta[kept] / density)
        assert torch.equal(out, kernel([delta], torch.ones(1), torch.zeros(n), density=density, seed=7))
        assert not torch.equal(out, kernel([delta], torch.ones(1), torch.zeros(n), density=density, seed=8))


def test_dare_cli_is_repeatable_per_tensor_and_reduces_to_its_base_method(trio, tmp_path):
    base, experts = trio
    common = ["--base", base, "--models", *experts, "--weights", 0.5, 0.8]

    def merged(method, *args):
        out = tmp_path / f"{method}{len(list(tmp_path.iterdir()))}"
        assert run_cli("merge", "--method", method, *common, *args, "--out", out) == 0
        return tensors(out), json.loads((out / "merge_weights.json").read_text())

    (first, record), (again, _), (other, _) = (merged("dare_linear", "--density", 0.4, "--seed", s) for s in (3, 3, 4))
    assert record["params"] == {"density": 0.4, "scale": 1.0, "seed": 3}
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # Each tensor's mask comes from (seed, tensor name) alone, as documented: a generator seeded with the
    # first 8 bytes of sha256("<seed>:<name>") (little endian, >> 1) draws one uniform per entry for each
    # model in turn; an entry is kept where its draw is below the density. Recomputed here in float64.
    name = "model.layers.1.mlp.down_proj.weight"
    theta0, inputs = tensors(base)[name].double(), [tensors(e)[name].double() for e in experts]
    generator = torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(f"3:{name}".encode()).digest()[:8], "little") >> 1
    )
    expected = theta0.clone()
    for w, theta in zip((0.5, 0.8), inputs):
        kept = torch.rand(theta0.shape, generator=generator) < 0.4
        expected += w * torch.where(kept, (theta - theta0) / 0.4, 0.0)
    assert 0.3 < (first[name] != theta0.float()).float().mean() < 0.8  # some entries of each model dropped
    torch.testing.assert_close(first[name].double(), expected, rtol=1e-5, atol=1e-6)
    # Keeping everything, DARE is its base method.
    for dare, plain, extra in [("dare_linear", "task_arithmetic", []), ("dare_ties", "ties", ["--no-normalize"])]:
        ours, _ = merged(dare, "--density", 1, *extra)
        ref, _ = merged(plain, *(["--density", 1, *extra] if plain == "ties" else []))
        assert all(torch.equal(ours[k], ref[k]) for k in ours), dare


def magmax_reference(thetas: list[np.ndarray], base: np.ndarray, weights=None, scale=1.0) -> np.ndarray:
    """Stack the task vectors, take each entry's argmax of |w_q delta_q| (first index on ties), add to base.

    Deltas in float32 as the models store them, so near-ties are decided by the same rounded values.
    """
    weights = np.ones(len(thetas), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    deltas = np.stack([(t.astype(np.float32) - base.astype(np.float32)) * w for t, w in zip(thetas, weights)])
    chosen = np.take_along_axis(deltas, np.abs(deltas).argmax(0)[None], 0)[0]
    return base.astype(np.float64) + scale * chosen.astype(np.float64)


def test_magmax_kernel_matches_an_independent_reference():
    base = torch.tensor([1.0, 1.0, 1.0, 1.0, -2.0, 0.0])
    a = torch.tensor([3.0, 0.0, 1.5, -1.0, -2.0, 0.0])  # deltas  2, -1,  .5, -2, 0, 0
    b = torch.tensor([0.0, 4.0, 0.5, 3.0, -2.0, 0.0])  # deltas -1,  3, -.5,  2, 0, 0
    # largest magnitude wins whatever its sign; on a tie (.5 / -.5, -2 / 2, 0 / 0) the earlier model
    out = kernels.magmax([a, b], torch.ones(2), base)
    assert out.tolist() == [3.0, 4.0, 1.5, -1.0, -2.0, 0.0]
    assert kernels.magmax([b, a], torch.ones(2), base).tolist() == [3.0, 4.0, 0.5, 3.0, -2.0, 0.0]
    assert kernels.magmax([a, b], torch.ones(2), base, scale=0.5).tolist() == [2.0, 2.5, 1.25, 0.0, -2.0, 0.0]
    assert a.tolist() == [3.0, 0.0, 1.5, -1.0, -2.0, 0.0] and base.tolist()[0] == 1.0  # inputs untouched

    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(7, 9, generator=g)
    thetas = [theta0 + torch.randn(7, 9, generator=g) * s for s in (0.5, 1.0, 2.0)]
    thetas[1][0] = theta0[0] - (thetas[0][0] - theta0[0])  # row 0: model 1's delta is -model 0's
    for weights, scale in [(None, 1.0), ([1.0, 0.3, 2.0], 0.7)]:
        w = torch.ones(3) if weights is None else torch.tensor(weights)
        merged = kernels.magmax(thetas, w, theta0, scale=scale)
        expected = magmax_reference([t.numpy() for t in thetas], theta0.numpy(), weights, scale)
        np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_magmax_is_associative():
    """maxmag(maxmag(a, b), c) = maxmag(a, b, c): a sequential chain equals merging all at once."""
    g = torch.Generator().manual_seed(1)
    base = torch.randint(-3, 4, (50, 40), generator=g).float()
    # Small integers: exact arithmetic, and many ties in magnitude, of either sign.
    a, b, c = (base + torch.randint(-4, 5, (50, 40), generator=g).float() for _ in range(3))
    ones = torch.ones(2)
    chained = kernels.magmax([kernels.magmax([a, b], ones, base), c], ones, base)
    assert torch.equal(chained, kernels.magmax([a, b, c], torch.ones(3), base))
    assert torch.equal(kernels.magmax([a, kernels.magmax([b, c], ones, base)], ones, base), chained)


@pytest.mark.parametrize(("weights", "scale"), [(None, None), ([1.0, 0.5], 0.8)])
def test_magmax_cli_adds_the_largest_task_vector_of_each_entry(trio, tmp_path, weights, scale):
    base, experts = trio
    args = (["--weights", *weights] if weights else []) + (["--scale", scale] if scale else [])
    assert (
        run_cli("merge", "--method", "magmax", "--base", base, "--models", *experts, *args, "--out", tmp_path / "out")
        == 0
    )
    theta0, inputs, merged = tensors(base), [tensors(e) for e in experts], tensors(tmp_path / "out")
    for name, value in merged.items():
        expected = magmax_reference([t[name].numpy() for t in inputs], theta0[name].numpy(), weights, scale or 1.0)
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)
    if not weights:  # each entry is one expert's, and both experts contribute about half the entries
        first = sum(int(torch.isclose(merged[k], inputs[0][k], rtol=0, atol=1e-6).sum()) for k in merged)
        second = sum(int(torch.isclose(merged[k], inputs[1][k], rtol=0, atol=1e-6).sum()) for k in merged)
        n = sum(v.numel() for v in merged.values())
        assert first + second >= n and 0.3 * n < first < 0.7 * n
    record = json.loads((tmp_path / "out" / "merge_weights.json").read_text())
    assert record["method"] == "magmax" and record["base"] == str(base)
    assert record["params"] == {"scale": scale or 1.0} and record["layers"][0] == (weights or [1.0, 1.0])


def test_ties_merges_lora_adapters_on_their_base(make_model, tmp_path):
    base = make_model("base")
    (a, full_a), (b, full_b) = make_adapter(base, tmp_path / "lora_a", 1), make_adapter(base, tmp_path / "lora_b", 2)
    out = tmp_path / "out"
    # No --base: the adapters name theirs.
    assert run_cli("merge", "--method", "ties", "--models", a, b, "--density", 0.5, "--out", out) == 0
    theta0, merged = tensors(base), tensors(out)
    touched = 0
    for name, value in merged.items():
        expected = ties_reference([full_a[name].numpy(), full_b[name].numpy()], theta0[name].numpy(), [1, 1], 0.5)
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)
        touched += not torch.equal(value, theta0[name])
    assert touched == 2 * 3  # q_proj, v_proj, down_proj in both layers; the rest is the base
    assert json.loads((out / "merge_weights.json").read_text())["base"] == str(base)


def response_nll(model, tok, record) -> torch.Tensor:
    """Mean response-token negative log-likelihood of one example, from raw logits."""
    ids = tok(render(tok, record), add_special_tokens=False, return_tensors="pt")["input_ids"]
    start = len(tok(chat_prompt(tok, record.prompt), add_special_tokens=False)["input_ids"]) if record.prompt else 0
    logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    nll = -logp[torch.arange(len(targets)), targets]
    return nll[max(start - 1, 0) :].mean()  # logits at t predict token t + 1


def independent_losses(model_path, records) -> float:
    """Mean over examples of the mean response-token loss."""
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    with torch.no_grad():
        return float(np.mean([response_nll(model, tok, r).item() for r in records]))


def independent_fisher(model_path, records, names) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of each checkpoint tensor: mean over examples of the squared gradient."""
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    fisher = {name: torch.zeros_like(model.get_parameter(name)) for name in names}
    for r in records:
        model.zero_grad()
        response_nll(model, tok, r).backward()
        for name in names:
            fisher[name] += model.get_parameter(name).grad ** 2
    return {name: f / len(records) for name, f in fisher.items()}


def test_lm_cocktail_weights_are_softmax_of_negative_losses(make_model, tmp_path, task_data):
    models = [make_model(n, seed=s) for n, s in [("a", 1), ("b", 2), ("c", 3)]]
    out = tmp_path / "out"
    assert (
        run_cli(
            "merge",
            "--method",
            "lm_cocktail",
            "--models",
            *models,
            "--data",
            task_data,
            task_data,
            "--examples",
            3,
            "--temperature",
            0.05,
            "--out",
            out,
        )
        == 0
    )
    record = json.loads((out / "merge_weights.json").read_text())
    records = read_examples(task_data)[:3] * 2  # the first 3 examples of each --data file
    losses = np.array([independent_losses(m, records) for m in models])
    np.testing.assert_allclose(record["cocktail"]["losses"], losses, rtol=1e-4)
    z = -np.array(record["cocktail"]["losses"]) / 0.05
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(record["layers"], np.tile(expected, (3, 1)), rtol=1e-6)
    assert expected.max() - expected.min() > 0.05  # the temperature makes the losses matter
    assert record["settings"] == {"examples": 3, "temperature": 0.05, "max_length": 512}
    assert record["cocktail"]["n_examples"] == 6
    inputs, merged = [tensors(m) for m in models], tensors(out)
    for name, value in merged.items():
        torch.testing.assert_close(
            value, sum(w * t[name] for w, t in zip(record["layers"][0], inputs)), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "ties", "--base", "{a}"], "--method ties needs --density"),
        (["--method", "ties", "--base", "{a}", "--density", 0], "--density must be in (0, 1], got 0.0"),
        (["--method", "dare_linear", "--base", "{a}", "--density", 1.5], "--density must be in (0, 1], got 1.5"),
        (["--method", "dare_ties", "--base", "{a}", "--density", 0.5, "--seed", -1], "--seed must be >= 0"),
        (["--method", "task_arithmetic", "--base", "{a}", "--scale", "nan"], "--scale must be a finite number"),
        (["--method", "task_arithmetic"], "method task_arithmetic needs --base"),
        (["--method", "magmax"], "method magmax needs --base"),
        (["--method", "magmax", "--base", "{a}", "--density", 0.5], "--density does not apply to --method magmax"),
        (["--method", "average", "--density", 0.5], "--density does not apply to --method average; it is used by ties"),
        (["--method", "ties", "--base", "{a}", "--density", 0.5, "--temperature", 2], "--temperature does not apply"),
        (["--method", "task_arithmetic", "--base", "{a}", "--seed", 1], "it is used by recall, dare_linear, dare_ties"),
        (["--method", "lm_cocktail"], "--method lm_cocktail needs --data"),
        (["--method", "lm_cocktail", "--data", "{data}", "--examples", 0], "examples must be >= 1"),
        (["--method", "lm_cocktail", "--data", "{data}", "--temperature", 0], "temperature must be > 0"),
        (["--method", "fisher"], "--method fisher needs --data: one JSONL file per model (2), got 0"),
        (["--method", "fisher", "--data", "{data}", "{data}", "--floor", 0], "--floor must be > 0"),
        (
            ["--method", "fisher", "--data", "{data}", "{data}", "--sigma", 2],
            "--sigma does not apply to --method fisher",
        ),
        (["--method", "fisher", "--data", "{data}", "{empty}"], "empty.jsonl has no records"),
    ],
)
def test_bad_method_parameters_are_clear_errors(make_model, tmp_path, task_data, capsys, args, message):
    a, b = make_model("a"), make_model("b", seed=1)
    (empty := tmp_path / "empty.jsonl").write_text("")
    args = [str(x).format(a=a, data=task_data, empty=empty) for x in args]
    assert run_cli("merge", "--models", a, b, "--out", tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fisher_kernel_matches_a_reference():
    g = torch.Generator().manual_seed(0)
    thetas = [torch.randn(6, 5, generator=g) for _ in range(3)]
    fishers = [torch.rand(6, 5, generator=g) for _ in range(3)]
    fishers[1][0] = 0  # a row no example of model 1 moved
    w = torch.tensor([0.2, 0.5, 0.3])
    before = [x.clone() for x in thetas + fishers]
    merged = kernels.fisher(thetas, w, fishers=fishers, floor=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(thetas + fishers, before))  # inputs untouched
    f = [np.maximum(x.numpy().astype(np.float64), 1e-3) * float(wq) for x, wq in zip(fishers, w)]
    expected = sum(fq * t.numpy() for fq, t in zip(f, thetas)) / sum(f)
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-5)
    # no information anywhere: the weighted average; one model's information dominating: that model
    zero = [torch.zeros(6, 5)] * 3
    torch.testing.assert_close(kernels.fisher(thetas, w, fishers=zero), sum(float(wq) * t for wq, t in zip(w, thetas)))
    big = [torch.full((6, 5), 1e6), torch.full((6, 5), 1e-6), torch.full((6, 5), 1e-6)]
    torch.testing.assert_close(kernels.fisher(thetas, w, fishers=big), thetas[0], rtol=1e-4, atol=1e-5)


def test_fisher_merge_weights_each_entry_by_each_models_fisher_on_its_own_data(make_model, tmp_path, task_data):
    a, b = make_model("a", seed=1), make_model("b", seed=2)
    data_b = tmp_path / "b.jsonl"
    data_b.write_text("".join(task_data.read_text().splitlines(keepends=True)[5:]))  # other examples for b
    out, work = tmp_path / "out", tmp_path / "work"
    assert (
        run_cli(
            "merge",
            "--method",
            "fisher",
            "--models",
            a,
            b,
            "--data",
            task_data,
            data_b,
            "--examples",
            3,
            "--weights",
            0.3,
            0.7,
            "--workdir",
            work,
            "--out",
            out,
        )
        == 0
    )
    record = json.loads((out / "merge_weights.json").read_text())
    assert record["params"] == {"floor": 1e-10} and record["fisher"] == [str(work / "fisher-0"), str(work / "fisher-1")]
    merged, thetas = tensors(out), [tensors(a), tensors(b)]
    stored = [tensors(work / f"fisher-{i}") for i in range(2)]
    expected_f = [independent_fisher(m, read_examples(d)[:3], list(merged)) for m, d in [(a, task_data), (b, data_b)]]
    far_from_average = 0
    for name, value in merged.items():
        for ours, theirs in zip(stored, expected_f):
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-3, atol=1e-6 * float(theirs[name].max()))
        f = [s[name].clamp(min=1e-10) * w for s, w in zip(stored, (0.3, 0.7))]
        torch.testing.assert_close(value, (f[0] * thetas[0][name] + f[1] * thetas[1][name]) / (f[0] + f[1]))
        average = 0.3 * thetas[0][name] + 0.7 * thetas[1][name]
        far_from_average += int(((value - average).abs() > 0.1 * (thetas[0][name] - thetas[1][name]).abs()).sum())
    assert far_from_average > 1000  # the Fisher, not the weights, decides most entries


def test_lm_cocktail_merges_lora_adapters_in_delta_space(make_model, tmp_path, task_data):
    base = make_model("base")
    (a, full_a), (b, full_b) = make_adapter(base, tmp_path / "lora_a", 1), make_adapter(base, tmp_path / "lora_b", 2)
    out = tmp_path / "out"
    assert run_cli("merge", "--method", "lm_cocktail", "--models", a, b, "--data", task_data, "--out", out) == 0
    record = json.loads((out / "merge_weights.json").read_text())
    w = record["layers"][0]
    assert record["base"] == str(base) and w[0] != w[1] and sum(w) == pytest.approx(1)
    theta0 = tensors(base)
    for name, value in tensors(out).items():
        expected = theta0[name] + w[0] * (full_a[name] - theta0[name]) + w[1] * (full_b[name] - theta0[name])
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_library_callers_get_the_same_parameter_checks(make_model, tmp_path):
    """MergePlan.params is validated by the engine too, before anything is written."""
    from recall.errors import RecallError
    from recall.merge.engine import MergePlan, merge
    from recall.merge.methods import get_method
    from recall.models import describe
    from recall.weights.rows import uniform_weights

    a, b = describe(make_model("a")), describe(make_model("b", seed=1))
    for params, message in [
        ({"density": 2.0}, "--density must be in (0, 1]"),
        ({"density": 0.5, "sigma": 1}, "--sigma"),
    ]:
        plan = MergePlan([b], get_method("ties"), uniform_weights(3, [1.0]), base=a, params=params)
        with pytest.raises(RecallError, match=re.escape(message)):
            merge(plan, tmp_path / "out")
        assert not (tmp_path / "out").exists()
