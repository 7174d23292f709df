"""Recipe search for recovery (workbench.search.recipe) and the recipe knobs it searches
(RecoverConfig.train / block_weights, workbench.compress.trainable), on tiny models."""
from dataclasses import asdict, replace

import pytest
import torch

from workbench.compress import compress
from workbench.compress.distill import Distiller, RecoverConfig, frozen_teacher, recover
from workbench.compress.trainable import changed_parameters
from workbench.errors import WorkbenchError
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig
from workbench.search.recipe import (Recipe, RecipeSearchConfig, search_recipe,
                                     search_recipe_for_plan, split_items)
from workbench.train import Item

from toys import forbid_held_out, random_items

PRUNE = (CompressionPlan()
         .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
         .with_group("attention", LayerConfig(prune=PruneConfig(amount=0.5, structure="heads"))))
#: Only block 1 pruned: block 0 stays the teacher's (the "skip what did not change" case).
PRUNE_LAST = CompressionPlan().with_layer(
    "blocks.1.mlp", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
BASE = RecoverConfig(max_batch_frames=600)
FAST = RecipeSearchConfig(trials=4, trial_steps=3, val_items=6, objective="kd", base=BASE)


def _items(n: int = 24, seed: int = 0) -> list[Item]:
    return random_items(n, seed)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _rows(result):
    """The trial table without wall-clock fields (those depend on the machine's load)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "seconds_per_step")}
            for r in result.table()["trials"]]


# ---- the search ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(whisper_small):
    student = compress(whisper_small, PRUNE)
    before_s, before_t = _state(student), _state(whisper_small)
    flags = [p.requires_grad for p in student.parameters()]
    items = _items()
    result = search_recipe(student, whisper_small, items, FAST)
    return result, student, items, before_s, before_t, flags


def test_trials_use_different_recipes_and_the_first_is_the_default(searched):
    result = searched[0]
    recipes = [t.recipe for t in result.trials]
    assert len(recipes) == FAST.trials and len(set(recipes)) == FAST.trials
    assert recipes[0] == Recipe()
    assert all(t.error is None and t.steps == FAST.trial_steps for t in result.trials)
    assert all(set(t.scores) == {"val_wer", "val_kd", "val_hidden"} for t in result.trials)
    # Recipes differ in what they change in training, so their validation scores differ too.
    assert len({t.scores["val_kd"] for t in result.trials}) == FAST.trials
    # "Train only what changed" trains fewer parameters than "all" (here every block changed).
    everything = result.trials[0].trained_params
    partial = [t.trained_params for t in result.trials if t.recipe.train != "all"]
    assert partial and all(0 < n < everything for n in partial)


def test_the_best_trial_is_the_argmin_of_the_validation_objective(searched):
    result = searched[0]
    best = min(result.trials, key=lambda t: (t.scores["val_kd"], t.scores["val_wer"], t.number))
    assert result.best is best
    table = result.table()
    assert table["best_trial"] == best.number and table["best_recipe"] == asdict(best.recipe)
    assert table["objective"] == "val_kd"
    assert [r["val_kd"] for r in table["trials"]] == [t.scores["val_kd"] for t in result.trials]
    # The objective "wer" ranks by WER first (KD breaks ties).
    by_wer = replace(result, config=replace(result.config, objective="wer"))
    assert by_wer.best is min(result.trials, key=lambda t: (t.scores["val_wer"],
                                                             t.scores["val_kd"], t.number))


def test_search_leaves_both_models_unchanged(searched, whisper_small):
    _, student, _, before_s, before_t, flags = searched
    assert all(torch.equal(before_s[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(before_t[k], v) for k, v in whisper_small.state_dict().items())
    assert flags == [p.requires_grad for p in student.parameters()]


def test_validation_split_is_by_transcript_and_disjoint(searched):
    result, _, items, *_ = searched
    train, val = split_items(items, FAST.val_items, FAST.seed)
    assert result.train_items == len(train) and result.val_items == len(val) >= FAST.val_items
    seen = {tuple(it.labels.tolist()) for it in train}
    assert not seen & {tuple(it.labels.tolist()) for it in val}
    # Two views of one sentence never straddle the split.
    twins = items[:6] + [Item(it.x * 0.5, it.labels) for it in items[:6]]
    train, val = split_items(twins, 2, 0)
    assert {tuple(i.labels.tolist()) for i in train}.isdisjoint(
        {tuple(i.labels.tolist()) for i in val})
    assert len(val) % 2 == 0


def test_search_is_deterministic_with_a_seed(searched, whisper_small):
    result, student, items, *_ = searched
    again = search_recipe(student, whisper_small, items, FAST)
    assert _rows(again) == _rows(result)
    other = search_recipe(student, whisper_small, items, replace(FAST, seed=1, trials=2))
    assert other.trials[1].recipe != result.trials[1].recipe


def test_held_out_sets_are_never_read(whisper_small, monkeypatch, tmp_path):
    """The held-out manifests point at nowhere and every eval-set / manifest loader fails the
    test if called: a search for a plan on given items still runs."""
    forbid_held_out(monkeypatch, tmp_path)
    result = search_recipe_for_plan(PRUNE, whisper_small, items=_items(),
                                    config=replace(FAST, trials=2, trial_steps=1))
    assert len(result.trials) == 2 and result.best.error is None


@pytest.mark.parametrize("held_out", ["REAL_TEST", "SYNTH_TEST"])
def test_held_out_manifests_are_refused_as_search_data(whisper_small, held_out):
    import workbench.paths
    path = getattr(workbench.paths, held_out)
    with pytest.raises(WorkbenchError, match=f"held-out set {held_out.lower()}"):
        search_recipe_for_plan(PRUNE, whisper_small, manifests=[path], config=FAST)


def test_a_plan_without_structure_is_refused(whisper_small):
    from workbench.errors import PlanError
    from workbench.plan import QuantConfig
    int8 = CompressionPlan(default=LayerConfig(quant=QuantConfig(weight_bits=8)))
    with pytest.raises(PlanError, match="removes no structure"):
        search_recipe_for_plan(int8, whisper_small, items=_items(), config=FAST)


def test_the_default_recipe_is_the_one_workbench_recover_uses():
    from workbench.recovery import DEFAULT_CONFIG
    cfg = Recipe().config(DEFAULT_CONFIG.steps, 4)
    assert cfg == replace(DEFAULT_CONFIG, max_minutes=None)


def test_recipe_config_scales_warmup_and_tilts_block_weights():
    cfg = Recipe(lr=1e-3, hidden_share=0.25, ctc_weight=0.0, train="changed_layers",
                 depth_tilt=0.5).config(48, 3)
    assert (cfg.steps, cfg.warmup, cfg.lr, cfg.train) == (48, 4, 1e-3, "changed_layers")
    assert (cfg.hidden_weight, cfg.kd_weight, cfg.ctc_weight) == (0.5, 1.5, 0.0)
    assert cfg.block_weights == (0.5, 1.0, 1.5) and cfg.max_minutes is None


# ---- bad inputs of the search ---------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("trials", 0), ("trial_steps", 0), ("val_items", 0),
                                         ("seed", -1), ("trials", 2.5), ("objective", "bleu"),
                                         ("base", "fast")])
def test_search_config_refuses_a_bad_value(field, value):
    with pytest.raises(WorkbenchError, match=f"RecipeSearchConfig.{field}"):
        RecipeSearchConfig(**{field: value})


def test_too_few_transcripts_for_a_split_is_refused(whisper_small):
    student = compress(whisper_small, PRUNE)
    same = [Item(it.x, torch.tensor([3, 4, 5])) for it in _items(6)]
    with pytest.raises(WorkbenchError, match="1 distinct transcripts"):
        search_recipe(student, whisper_small, same, FAST)


def test_wer_objective_without_words_is_refused(whisper_small):
    student = compress(whisper_small, PRUNE)
    # Labels of 1..n spaces (id 1): distinct transcripts, none with a word.
    silent = [Item(it.x, torch.ones(1 + i, dtype=torch.long)) for i, it in enumerate(_items(8))]
    with pytest.raises(WorkbenchError, match="objective='kd'"):
        search_recipe(student, whisper_small, silent, replace(FAST, objective="wer"))


# ---- the knobs: what trains, per-block weights, skipping unchanged blocks -----------------------

def test_changed_parameters_selects_what_the_plan_changed(whisper_small):
    student = compress(whisper_small, PRUNE_LAST)
    layers = changed_parameters(student, whisper_small, "changed_layers")
    assert layers == {f"blocks.1.mlp.{m}.{p}" for m in ("fc1", "fc2") for p in ("weight", "bias")}
    blocks = changed_parameters(student, whisper_small, "changed_blocks")
    assert layers < blocks and all(n.startswith("blocks.1.") for n in blocks)
    assert "blocks.1.attn.q_proj.weight" in blocks and "blocks.1.attn_ln.weight" in blocks
    norms = changed_parameters(student, whisper_small, "changed_layers+norms")
    assert {"blocks.0.attn_ln.weight", "ln_post.bias"} <= norms
    assert not any(".attn." in n for n in norms)
    with pytest.raises(WorkbenchError, match="nothing to train"):
        changed_parameters(whisper_small, whisper_small, "changed_layers")


def test_training_only_what_changed_leaves_the_rest_and_skips_unchanged_blocks(whisper_small):
    student = compress(whisper_small, PRUNE_LAST)
    calls = []
    result = recover(student, whisper_small, _items(12), replace(
        BASE, steps=3, warmup=1, lr=3e-3, train="changed_layers"), progress=False)
    before, after = student.state_dict(), result.model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and moved <= changed_parameters(student, whisper_small, "changed_layers")
    # Block 0 did not change, so it does not even run: its output is the teacher's (cached).
    hook = result.model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    d = Distiller(frozen_teacher(whisper_small), _items(4), BASE)
    d.start = 1
    skipped = d.loss(result.model, [0, 1, 2, 3])
    assert calls == []
    d.start = 0
    full = d.loss(result.model, [0, 1, 2, 3])
    hook.remove()
    assert calls == [1]
    # Same loss either way (block 0 is exact; the cache is fp16, hence the tolerance).
    for term in ("hidden", "kd"):
        torch.testing.assert_close(skipped[term], full[term], rtol=2e-2, atol=1e-4)


def test_block_weights_shift_the_hidden_loss(whisper_small):
    student = compress(whisper_small, PRUNE)
    items = _items(4)
    terms = {}
    for w in (None, (1.0, 0.0), (0.0, 1.0)):
        d = Distiller(frozen_teacher(whisper_small), items, replace(BASE, block_weights=w))
        terms[w] = float(d.loss(student, [0, 1, 2, 3])["hidden"])
    # Uniform weights are the mean of the two one-block terms.
    assert terms[None] == pytest.approx((terms[(1.0, 0.0)] + terms[(0.0, 1.0)]) / 2, rel=1e-5)
    assert terms[(1.0, 0.0)] != pytest.approx(terms[(0.0, 1.0)])
    with pytest.raises(WorkbenchError, match="3 weights for a model of 2 blocks"):
        Distiller(frozen_teacher(whisper_small), items,
                  replace(BASE, block_weights=(1.0, 1.0, 1.0))).loss(student, [0])


@pytest.mark.parametrize("field,value", [("train", "some"), ("block_weights", ()),
                                         ("block_weights", (1.0, -1.0)),
                                         ("block_weights", (0.0, 0.0)),
                                         ("block_weights", [1.0, 1.0]),
                                         ("block_weights", (1.0, float("nan")))])
def test_recover_config_refuses_a_bad_knob(field, value):
    with pytest.raises(WorkbenchError, match=f"RecoverConfig.{field}"):
        RecoverConfig(**{field: value})


def test_train_changed_is_refused_when_nothing_has_changed_yet(whisper_small):
    with pytest.raises(WorkbenchError, match="one-shot recovery"):
        recover(whisper_small, whisper_small, _items(2),
                RecoverConfig(steps=1, train="changed_layers"), progress=False)


def test_recover_plan_cache_key_is_unchanged_by_the_default_knobs(whisper_small, tmp_path,
                                                                   monkeypatch):
    """Results cached before RecoverConfig.train / block_weights existed are found again: with
    the knobs at their defaults the tag is the one the old key (config without them) gave; a
    recipe that sets them gets its own."""
    import hashlib
    import importlib
    import json

    recovery = importlib.import_module("workbench.recovery")
    monkeypatch.setattr(recovery, "recovery_items", lambda *a, **k: _items(8))
    cfg = replace(BASE, steps=1, warmup=1, max_minutes=None)
    report = recovery.recover_plan(PRUNE, whisper_small, out_dir=tmp_path / "a", config=cfg,
                                   progress=False, evaluate_sets=False).report
    weights = hashlib.sha1()
    for name, tensor in sorted(whisper_small.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().float().numpy().tobytes())
    old = {k: v for k, v in asdict(cfg).items() if k not in ("train", "block_weights")}
    key = {"structure": CompressionPlan.from_json(json.dumps(report["structure"])).to_json(),
           "config": old, "teacher": weights.hexdigest(), "manifests": []}
    assert report["tag"] == hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    other = recovery.recover_plan(PRUNE, whisper_small, out_dir=tmp_path / "b", progress=False,
                                  config=replace(cfg, train="changed_layers"),
                                  evaluate_sets=False).report
    assert other["tag"] != report["tag"] and other["config"]["train"] == "changed_layers"
