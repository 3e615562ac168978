"""Layer groups, features, typical samples, similarities and weights on tiny random models."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.data import read_records, render
from recall.errors import RecallError
from recall.features import extract_features, load_features
from recall.layers import tensor_groups
from recall.merge.safetensors_io import SafetensorsModel
from recall.models import check_compatible, describe
from recall.similarity import METRICS, layer_similarity
from recall.typical import select_typical
from recall.weights import softmax_weights


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
    out = []
    with torch.no_grad():
        for text in texts:
            ids = model_tok(path)(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
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
    texts = [render(tok, r) for r in read_records(task_data)]
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
    with pytest.raises(RecallError, match="sigma must be > 0"):
        layer_similarity(ref, ref[None], "rbf", sigma=-1)
    with pytest.raises(RecallError, match="temperature must be > 0"):
        softmax_weights(np.zeros((1, 2)), temperature=0)
