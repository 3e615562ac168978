"""Layer groups, features, typical samples, similarities and weights on tiny random models."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.data import read_examples, render
from recall.errors import RecallError
from recall.layers import tensor_groups
from recall.models import check_compatible, describe
from recall.safetensors_io import SafetensorsModel
from recall.weights.features import extract_features, load_features
from recall.weights.representations import RecallSettings
from recall.weights.rows import softmax_weights
from recall.weights.similarity import METRICS, layer_sigmas, layer_similarity, median_distance, similarity_range
from recall.weights.typical import select_typical


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("tie", [False, True])
def test_every_tensor_has_exactly_one_group(make_model, family, tie):
    path = make_model(family=family, layers=3, tie=tie)
    names = list(SafetensorsModel(path).tensors)
    groups = tensor_groups(describe(path).config, names)
    assert sorted(groups) == sorted(names)
    assert set(groups.values()) == {0, 1, 2, 3}
    blocks = "transformer.h" if family == "gpt2" else "model.layers"
    for name, group in groups.items():
        if name.startswith(blocks + "."):
            assert group == int(name.split(".")[2]) + 1, name
        elif "embed" in name or name.startswith(("transformer.wte", "transformer.wpe")):
            assert group == 0, name
        else:  # final norm, untied lm_head
            assert group == 3, name
    assert ("lm_head.weight" in names) == (not tie)


def test_checkpoint_without_base_prefix_maps(make_model):
    """Old GPT-2 checkpoints store `h.0...` instead of `transformer.h.0...`."""
    path = make_model(family="gpt2", layers=2, tie=True)
    names = [n.removeprefix("transformer.") for n in SafetensorsModel(path).tensors]
    groups = tensor_groups(describe(path).config, names)
    assert groups["h.1.mlp.c_fc.weight"] == 2 and groups["wte.weight"] == 0 and groups["ln_f.weight"] == 2


def test_unknown_tensor_is_an_error(make_model):
    path = make_model()
    with pytest.raises(RecallError, match="do not belong"):
        tensor_groups(describe(path).config, ["model.layers.0.mlp.up_proj.weight", "vision.patch_embed.weight"])


@pytest.mark.parametrize(
    ("change", "field"),
    [(dict(hidden=64), "hidden_size"), (dict(layers=3), "num_hidden_layers"), (dict(family="qwen2"), "model_type")],
)
def test_incompatible_models_name_model_and_field(make_model, change, field):
    a = make_model("a")
    b = make_model("b", **change)
    with pytest.raises(RecallError, match=f"{b}.*{field}"):
        check_compatible([describe(a), describe(b)])


def test_incompatible_vocab(make_model):
    a, b = make_model("a"), make_model("b", vocab_size=400)
    with pytest.raises(RecallError, match="vocab_size"):
        check_compatible([describe(a), describe(b)])


def independent_representations(path, texts):
    """Mean-pooled hidden states, one sample at a time (no batching, no padding)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = model_tok(path)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            out.append(torch.stack([h[0].mean(0) for h in hs]).numpy())
    return np.stack(out)


def model_tok(path):
    return AutoTokenizer.from_pretrained(path)


def test_features_are_mean_pooled_hidden_states(make_model, task_data, tmp_path):
    path = make_model(layers=2)
    out = extract_features(path, task_data, tmp_path / "f.npy", batch_size=4)
    feats = load_features(out)
    tok = model_tok(path)
    texts = [render(tok, r) for r in read_examples(task_data)]
    assert feats.shape == (len(texts), 3, 32)
    np.testing.assert_allclose(feats, independent_representations(path, texts), rtol=1e-4, atol=1e-5)
    sub = load_features(extract_features(path, task_data, tmp_path / "s.npy", indices=[3, 0], batch_size=2))
    np.testing.assert_allclose(sub, feats[[3, 0]], rtol=1e-4, atol=1e-5)


def test_bad_data_fails_with_file_and_line(make_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"answer": "no prompt"}\n')
    with pytest.raises(RecallError, match=r"bad.jsonl:2: missing field 'text' or 'prompt'"):
        extract_features(make_model(), bad, tmp_path / "f.npy")
    assert not (tmp_path / "f.npy").exists()


def test_typical_samples_are_nearest_to_centres():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 1, 4)) * 20
    feats = np.concatenate([c + rng.normal(size=(10, 2, 4)) * 0.1 for c in centres])
    chosen = select_typical(feats, m=3, seed=0)
    assert {i // 10 for i in chosen} == {0, 1, 2}  # one sample from each cluster
    assert 3 <= len(chosen) <= 6  # union over two layers
    assert select_typical(feats, m=30) == list(range(30))  # m >= n: every sample


def test_rbf_matches_equation_1():
    rng = np.random.default_rng(1)
    ref, other = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 3))
    sim = layer_similarity(ref, np.stack([ref, other]), "rbf", sigma=2.0)
    expected = [np.mean([np.exp(-np.sum((ref[k, i] - other[k, i]) ** 2) / 8) for k in range(5)]) for i in range(2)]
    np.testing.assert_allclose(sim[:, 0], 1.0)
    np.testing.assert_allclose(sim[:, 1], expected)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_identical_representations_give_uniform_weights(name):
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(6, 3, 4))
    sim = layer_similarity(ref, np.stack([ref, ref, ref]), name)
    np.testing.assert_allclose(softmax_weights(sim), 1 / 3)


@pytest.mark.parametrize("name", sorted(set(METRICS) - {"dot"}))  # dot rewards norm, not closeness
def test_closer_model_gets_more_weight(name):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(8, 2, 4))
    near, far = ref + 0.05 * rng.normal(size=ref.shape), ref + 3 * rng.normal(size=ref.shape)
    w = softmax_weights(layer_similarity(ref, np.stack([ref, near, far]), name))
    assert (w[:, 1] > w[:, 2]).all()
    np.testing.assert_allclose(w.sum(1), 1.0)


def test_bad_settings_are_errors():
    ref = np.zeros((2, 1, 2))
    with pytest.raises(RecallError, match="unknown similarity 'l2'"):
        layer_similarity(ref, ref[None], "l2")
    for sigma in (-1, 0, float("nan"), "mean", True):
        with pytest.raises(RecallError, match="sigma must be > 0 or 'median'"):
            layer_similarity(ref, ref[None], "rbf", sigma=sigma)
    with pytest.raises(RecallError, match="normalize must be one of none, unit, sqrt_dim, got 'l2'"):
        layer_similarity(ref, ref[None], "rbf", normalize="l2")
    with pytest.raises(RecallError, match="temperature must be > 0"):
        softmax_weights(np.zeros((1, 2)), temperature=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sigma": "mean"}, "sigma must be > 0 or 'median' (the per-layer median heuristic), got 'mean'"),
        ({"sigma": -0.5}, "sigma must be > 0 or 'median'"),
        ({"normalize": "l2"}, "normalize must be one of none, unit, sqrt_dim, got 'l2'"),
        ({"temperature": 0}, "temperature must be > 0"),
    ],
)
def test_bad_recall_settings_name_the_field_and_the_allowed_values(settings, message):
    with pytest.raises(RecallError) as err:
        RecallSettings(**settings).validate()
    assert message in str(err.value)
    RecallSettings(sigma="median", normalize="unit").validate()
    assert RecallSettings().sigma == "median" and RecallSettings().normalize == "none"  # the benchmark's winner


# ---- kernel scale ------------------------------------------------------------------------------


def pooled_median(reps, layer):
    """The median heuristic written out: every distinct pair of the pooled states at `layer`."""
    pool = reps[:, :, layer].reshape(-1, reps.shape[-1])
    i, j = np.triu_indices(len(pool), k=1)
    return np.median(np.sqrt(((pool[i] - pool[j]) ** 2).sum(-1)))


def test_median_heuristic_matches_numpy():
    rng = np.random.default_rng(4)
    reps = rng.normal(size=(3, 7, 4, 16)) * rng.uniform(1, 50, size=(1, 1, 4, 1))  # a scale per layer
    expected = [pooled_median(reps, i) for i in range(4)]
    np.testing.assert_allclose(layer_sigmas(reps, "median"), expected, rtol=1e-12)
    np.testing.assert_allclose(layer_sigmas(reps, "median", "sqrt_dim"), np.array(expected) / 4, rtol=1e-12)
    np.testing.assert_allclose(layer_sigmas(reps, 2.5), 2.5)
    # rbf then uses each layer's own sigma (eq. 1 with sigma_i)
    sim = layer_similarity(reps[0], reps, "rbf", "median")
    by_hand = [
        [np.mean(np.exp(-((reps[0, :, i] - r[:, i]) ** 2).sum(-1) / (2 * expected[i] ** 2))) for r in reps]
        for i in range(4)
    ]
    np.testing.assert_allclose(sim, by_hand, rtol=1e-12)


def test_median_of_coincident_states_is_guarded():
    point = np.ones((1, 5))
    assert median_distance(np.repeat(point, 4, axis=0)) == 1.0  # all identical: any sigma gives kernel 1
    assert median_distance(point) == 1.0  # no pair at all
    mostly_same = np.concatenate([np.repeat(point, 4, axis=0), point + [[3, 4, 0, 0, 0]]])  # 6 zero pairs, 4 of 5
    assert median_distance(mostly_same) == 5.0  # the median of the pairs that differ


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("sigma", [1.0, "median"])
def test_unit_normalisation_ignores_the_scale_of_each_state(name, sigma):
    rng = np.random.default_rng(5)
    ref, other = rng.normal(size=(6, 3, 8)), rng.normal(size=(6, 3, 8))
    sim = layer_similarity(ref, np.stack([ref, other]), name, sigma, "unit")
    c_ref, c_other = rng.uniform(0.1, 40, size=(6, 3, 1)), rng.uniform(0.1, 40, size=(6, 3, 1))
    scaled = layer_similarity(ref * c_ref, np.stack([ref * c_ref, other * c_other]), name, sigma, "unit")
    np.testing.assert_allclose(scaled, sim, rtol=1e-9, atol=1e-12)


def test_median_sigma_does_not_saturate_on_two_random_models(make_model, task_data, tmp_path):
    reps = np.stack(
        [
            load_features(extract_features(make_model(n, seed=s), task_data, tmp_path / f"{n}.npy"))
            for n, s in [("old", 1), ("new", 2)]
        ]
    )
    big = reps * 1000  # the tiny models' norms (0.02-1.4) made like real models' (tens and more)
    assert (layer_similarity(big[1], big, "rbf", 1.0)[:, 0] < 1e-6).all()  # the paper's sigma saturates there
    sim = layer_similarity(reps[1], reps, "rbf", "median")
    np.testing.assert_allclose(sim[:, 1], 1.0)  # the reference
    assert ((sim[:, 0] > 0.05) & (sim[:, 0] < 0.95)).all(), sim[:, 0]
    np.testing.assert_allclose(layer_similarity(big[1], big, "rbf", "median"), sim, rtol=1e-6)  # scale-free


def test_similarity_range_per_layer():
    assert similarity_range(np.array([[1.0, 0.2], [1.0, 0.7]])) == {"min": [0.2, 0.7], "max": [1.0, 1.0]}


@pytest.mark.parametrize("chat", [True, False])
def test_one_encoder_labels_the_answer_only_and_falls_back_to_every_token(chat):
    from helpers import tiny_tokenizer

    from recall.data import IGNORE_INDEX, Example, chat_prompt, encode, render

    tok = tiny_tokenizer(chat=chat)
    record = Example(prompt="review: fine film", answer="positive")
    whole = tok(render(tok, record), add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(chat_prompt(tok, record.prompt), add_special_tokens=False)["input_ids"])
    e = encode(tok, record, max_length=512)
    assert e.input_ids == whole and e.prompt_tokens == n_prompt  # the same tokens as the rendered text
    assert e.labels == [IGNORE_INDEX] * n_prompt + whole[n_prompt:]
    cut = encode(tok, record, max_length=n_prompt)  # the answer cut off: a plain LM loss on what is left
    assert cut.input_ids == whole[:n_prompt] and cut.labels == cut.input_ids
    text = encode(tok, Example(text="just text"), max_length=4)
    assert text.labels == text.input_ids and len(text.input_ids) <= 4


def test_resolve_weights_is_the_one_rule_for_every_weight_source(make_model):
    from recall.merge.methods import get_method, resolve_weights

    infos = [describe(make_model(n)) for n in ("a", "b")]
    rows = infos[0].num_layers + 1
    np.testing.assert_allclose(resolve_weights(get_method("average"), infos), np.full((rows, 2), 0.5))
    np.testing.assert_allclose(resolve_weights(get_method("ties"), infos), np.ones((rows, 2)))  # its default 1
    np.testing.assert_allclose(resolve_weights(get_method("average"), infos, given=[0.2, 0.8])[-1], [0.2, 0.8])
    with pytest.raises(RecallError, match="one per model"):
        resolve_weights(get_method("average"), infos, given=[1.0])
    a, b = np.zeros((rows, 2)), np.tile([0.0, np.log(3)], (rows, 1))  # references: uniform, 1:3
    np.testing.assert_allclose(
        resolve_weights(get_method("recall"), infos, similarities=[a, b]),
        np.tile([(0.5 + 0.25) / 2, (0.5 + 0.75) / 2], (rows, 1)),
    )
    np.testing.assert_allclose(
        resolve_weights(get_method("lm_cocktail"), infos, losses=[0.0, np.log(3)]), np.tile([0.75, 0.25], (rows, 1))
    )
