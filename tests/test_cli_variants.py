"""``unipo variants``: the preset table, one preset explained, compositions from YAML / --set, --json."""

from __future__ import annotations

import json
import re

import pytest

from unipo.cli import main
from unipo.cli.explain import explain, summary
from unipo.errors import ConfigError
from unipo.objective.presets import PRESETS
from unipo.objective.registry import parts

pytestmark = pytest.mark.unit


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["variants", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# The expected strings below are written out by hand from the papers' definitions (and agree with the
# independent formula tests in tests/objective/test_presets.py); they are not read from the registry that the
# renderer reads, so a wrong part, value or formula in either one makes these tests fail.

KINDS = ["prior", "weights", "aggregation", "link", "chosen_transform", "rejected_transform", "kl", "pair_loss",
         "pair_weighting"]
PLAIN_DPO = {"prior": "reference", "weights": "none", "aggregation": "sum", "link": "reverse_kl",
             "chosen_transform": "none", "rejected_transform": "none", "kl": "none", "pair_loss": "sigmoid",
             "pair_weighting": "none"}


def table_rows(out: str) -> dict[str, tuple[str, ...]]:
    """``unipo variants``'s table as {preset: (parts, parameters, loss)}, cut at the columns of the rule line."""
    lines = out.splitlines()
    starts = [i for i, c in enumerate(lines[1]) if c == "-" and (i == 0 or lines[1][i - 1] == " ")]
    rows = {}
    for ln in lines[2:]:
        if not ln.strip():
            break
        cells = [ln[a:b].strip() for a, b in zip(starts, starts[1:] + [len(ln)], strict=True)]
        assert cells[0] not in rows, f"{cells[0]} listed twice"
        rows[cells[0]] = tuple(cells[1:])
    return rows


def sections(out: str) -> tuple[dict[str, tuple[str, str, str]], dict[str, tuple[str, str]]]:
    """``unipo variants NAME``'s parts as {kind: (mark, name, the part's indented block)} and its global
    parameters as {name: (mark, value)}; the mark is '*' (differs from plain DPO), '+' (set by the
    composition, not by the preset) or ' '."""
    parts_text = out.split("\nParts ", 1)[1].split("\nGlobal parameters:", 1)[0]
    globals_text = out.split("\nGlobal parameters:\n", 1)[1].split("\n\n", 1)[0]
    head = re.compile(r"^ ([*+ ]) (\w+) = (\S+)    \(", re.M)
    found = list(head.finditer(parts_text))
    ends = [m.start() for m in found[1:]] + [len(parts_text)]
    parts_ = {m.group(2): (m.group(1), m.group(3), parts_text[m.end():e]) for m, e in zip(found, ends, strict=True)}
    params = {m.group(2): (m.group(1), m.group(3)) for m in head.finditer(globals_text)}
    return parts_, params


def test_table_rows_by_hand(capsys):
    rc, out, err = run(capsys)
    assert rc == 0 and err == ""
    assert out.splitlines()[0].split() == ["preset", "parts", "(non-default)", "parameters", "loss"]
    rows = table_rows(out)
    assert set(rows) == set(PRESETS)  # every preset, once
    assert rows["dpo"] == ("-", "-", "−log σ(βΔ)")  # the default parts and parameters are not repeated
    assert rows["simpo"] == ("prior=none, aggregation=mean", "beta=2, gamma=0.5", "−log σ(β(ā(y_w) − ā(y_l)) − γ)")
    assert rows["ipo"] == ("pair_loss=ipo, aggregation=mean", "-", "(ρ̄(y_w) − ρ̄(y_l) − 1/(2β))²")
    assert rows["rdpo"] == ("-", "length_alpha=0.05", "−log σ(βΔ − α(|y_w| − |y_l|))")
    assert rows["tdpo2"] == ("kl=tdpo", "kl_alpha=0.5, kl_stopgrad_chosen=true",
                             "−log σ(β(Δ − α(K(y_l) − sg(K(y_w)))))")
    assert rows["bmc"][:2] == ("weights=bmc", "beta=0.05, bmc_delta=2")
    assert rows["reference_free"][:2] == ("prior=none", "-")
    assert ("Default parts (plain DPO): prior=reference, weights=none, aggregation=sum, link=reverse_kl, "
            "chosen_transform=none, rejected_transform=none, kl=none, pair_loss=sigmoid, pair_weighting=none.") in out
    assert "Global defaults: beta=0.1, gamma=0, gamma_beta_ratio=none, length_alpha=0," in out


def test_table_json(capsys):
    rc, out, _ = run(capsys, "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["preset"] for r in rows] == list(PRESETS)
    tdpo2 = next(r for r in rows if r["preset"] == "tdpo2")
    assert tdpo2["parts"] == {"kl": "tdpo"}
    assert tdpo2["params"] == {"kl_alpha": 0.5, "kl_stopgrad_chosen": True}
    assert tdpo2["formula"] == "−log σ(β(Δ − α(K(y_l) − sg(K(y_w)))))"
    assert "Zeng" in tdpo2["source"]
    simpo = next(r for r in rows if r["preset"] == "simpo")
    assert simpo["parts"] == {"prior": "none", "aggregation": "mean"}
    assert simpo["params"] == {"beta": 2.0, "gamma": 0.5}


def test_explain_simpo_by_hand(capsys):
    rc, out, err = run(capsys, "simpo")
    assert rc == 0 and err == ""
    assert out.startswith("Preset: simpo\n")
    parts_, params = sections(out)
    assert list(parts_) == KINDS
    assert {k: v[:2] for k, v in parts_.items()} == {
        **{k: (" ", n) for k, n in PLAIN_DPO.items()}, "prior": ("*", "none"), "aggregation": ("*", "mean")}
    assert "formula: log ζ(y_t) = const (cancels)" in parts_["prior"][2]
    assert "formula: Σ_t M_t x_t / |y|" in parts_["aggregation"][2]
    assert "formula: −log σ(z)" in parts_["pair_loss"][2]
    assert params == {"beta": ("*", "2"), "gamma": ("*", "0.5"), "gamma_beta_ratio": (" ", "none"),
                      "length_alpha": (" ", "0"), "nll_weight": (" ", "0"), "nll_token_mean": (" ", "false"),
                      "gold_nll_weight": (" ", "0"), "l1_weight": (" ", "0"), "prior_reg_weight": (" ", "0")}
    assert "\nNeeds a reference model: no\n" in out
    assert "\nInputs: policy_chosen_logps, policy_rejected_logps, chosen_mask, rejected_mask\n" in out
    assert "\n  loss:   −log σ(β(ā(y_w) − ā(y_l)) − γ)\n" in out
    assert ("\n  preset=simpo, prior=none, weights=none, aggregation=mean, link=reverse_kl, chosen_transform=none, "
            "rejected_transform=none, kl=none, pair_loss=sigmoid, pair_weighting=none, beta=2, gamma=0.5, "
            "gamma_beta_ratio=none, length_alpha=0, nll_weight=0, nll_token_mean=false, gold_nll_weight=0, "
            "l1_weight=0, prior_reg_weight=0\n") in out


def test_explain_tdpo2_by_hand(capsys):
    rc, out, err = run(capsys, "tdpo2")
    assert rc == 0 and err == ""
    assert out.startswith("Preset: tdpo2\n")
    # the general objective
    assert "z = β·(h_w − h_l − D) − γ − α_len·(|y_w| − |y_l|)" in out
    assert "s = agg_t( ω_t·(a_t − log ζ_t) )" in out and "h = f′(s)" in out
    parts_, params = sections(out)
    assert {k: v[:2] for k, v in parts_.items()} == {**{k: (" ", n) for k, n in PLAIN_DPO.items()},
                                                     "kl": ("*", "tdpo")}
    assert "formula: log ζ(y_t) = r_t = log π_ref(y_t|x,y_<t)" in parts_["prior"][2]
    assert "formula: Σ_t M_t x_t\n" in parts_["aggregation"][2]
    kl = parts_["kl"][2]
    assert "formula: D = α·(K(y_l) − [sg]K(y_w)),  K(y) = Σ_t [m^d_t] KL(π_ref‖π_θ)_t" in kl
    assert "TDPO (Zeng et al., ICML 2024)" in kl
    # the KL part's parameters with their values, defaults shown where the preset changes them
    assert "params:  kl_alpha=0.5 (default 1), kl_stopgrad_chosen=true (default false), kl_masks=false" in kl
    assert "KL inputs: per-token KL(ref ‖ policy)" in kl
    assert params["beta"] == (" ", "0.1") and params["gamma"] == (" ", "0")
    assert "\n  loss:   −log σ(β(Δ − α(K(y_l) − sg(K(y_w)))))\n" in out
    assert "\nNeeds a reference model: yes\n" in out
    assert ("\nInputs: policy_chosen_logps, policy_rejected_logps, chosen_mask, rejected_mask, ref_chosen_logps, "
            "ref_rejected_logps, chosen_kl, rejected_kl\n") in out


def test_explain_preset_note_and_name_normalisation(capsys):
    rc, out, _ = run(capsys, "FDPO-Alpha")
    assert rc == 0
    assert out.startswith("Preset: fdpo_alpha\n")
    assert "note:   the paper's α; TRL's f_alpha_divergence_coef = 1 − α" in out
    parts_, _ = sections(out)
    assert parts_["link"][:2] == ("*", "alpha") and "params:  f_alpha=0.5" in parts_["link"][2]


def test_every_preset_explains_as_a_configuration_that_is_the_preset(capsys):
    """The parts and parameters shown for a preset, resolved again WITHOUT the preset's name, give the
    preset's losses: what is shown is the whole objective (checked by computing, not by comparing strings)."""
    import torch

    import unipo

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    inputs = {"chosen_mask": mask, "rejected_mask": mask.flip(0)}
    for key in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"):
        inputs[key] = -torch.rand(3, 4, generator=g) * 3
    for side in ("chosen", "rejected"):
        inputs[f"{side}_weights"] = torch.rand(3, 4, generator=g) + 0.5
        inputs[f"{side}_kl"] = torch.rand(3, 4, generator=g)
        inputs[f"{side}_diff_mask"] = (torch.rand(3, 4, generator=g) > 0.5).float()
        inputs[f"{side}_prior_offsets"] = torch.randn(3, 4, generator=g) * 0.1
        inputs[f"{side}_log_sum_sq_probs"] = -torch.rand(3, 4, generator=g)
        inputs[f"{side}_eps_plus_logps"] = -torch.rand(3, 4, generator=g) * 3
        inputs[f"{side}_eps_minus_logps"] = -torch.rand(3, 4, generator=g) * 3
        inputs[f"{side}_score"] = torch.rand(3, generator=g) * 10
    inputs["policy_gold_logps"], inputs["gold_mask"] = -torch.rand(3, 4, generator=g) * 3, mask  # TPO's gold
    for name in PRESETS:
        rc, out, _ = run(capsys, name, "--json")
        assert rc == 0
        info = json.loads(out)
        assert info["name"] == name and not info["composition"]
        assert [p["kind"] for p in info["parts"]] == KINDS
        shown = {k: v for k, v in info["config"].items() if k != "preset"}
        expected = unipo.compute_loss(name, **inputs).losses
        torch.testing.assert_close(unipo.compute_loss(shown, **inputs).losses, expected, msg=name)


def test_unknown_name_is_a_config_error(capsys):
    rc, out, err = run(capsys, "simpoo")
    assert rc == 2 and out == ""
    assert "unipo variants: error: unknown variant 'simpoo'" in err
    assert "did you mean 'simpo'" in err
    with pytest.raises(ConfigError):
        explain("simpoo")


def test_config_file_composition(capsys, tmp_path):
    cfg = tmp_path / "obj.yaml"
    cfg.write_text("preset: simpo\nweights: bmc\nlink: js\nbeta: 2.5\n", encoding="utf-8")
    rc, out, err = run(capsys, "--config", str(cfg))
    assert rc == 0 and err == ""
    assert out.startswith("Composition: preset simpo with weights=bmc, link=js, beta=2.5\n")
    parts_, params = sections(out)
    assert {k: v[:2] for k, v in parts_.items()} == {
        **{k: (" ", n) for k, n in PLAIN_DPO.items()},
        "prior": ("*", "none"), "aggregation": ("*", "mean"),  # from the preset
        "weights": ("+", "bmc"), "link": ("+", "js")}  # overridden by the composition
    assert "formula: λ_t = 1 + min(sg(1/π_θ(y_t)), δ) on differing tokens, 1 elsewhere" in parts_["weights"][2]
    assert "params:  bmc_delta=2, bmc_reference_weighting=false" in parts_["weights"][2]
    assert "formula: f′(u) = log(2u/(1+u))  →  log 2 − softplus(−s)" in parts_["link"][2]
    assert params["beta"] == ("*", "2.5") and params["gamma"] == ("*", "0.5")  # β overridden, γ from simpo
    assert "\nBase preset simpo:\n  loss:   −log σ(β(ā(y_w) − ā(y_l)) − γ)\n" in out
    assert "the preset's formula no longer applies as is" in out
    assert ("\nInputs: policy_chosen_logps, policy_rejected_logps, chosen_mask, rejected_mask, chosen_diff_mask, "
            "rejected_diff_mask\n") in out  # BMC needs the diff masks, and no reference
    assert "\nNeeds a reference model: no\n" in out

    rc, out, _ = run(capsys, "--config", str(cfg), "--json")
    info = json.loads(out)
    assert info["composition"] is True
    assert info["overrides"] == {"parts": {"weights": "bmc", "link": "js"}, "params": {"beta": 2.5}}
    assert info["config"]["weights"] == "bmc" and info["config"]["prior"] == "none"
    assert info["global_params"]["beta"] == 2.5 and info["global_params"]["gamma"] == 0.5
    by_kind = {p["kind"]: p for p in info["parts"]}
    assert by_kind["weights"]["params"] == {"bmc_delta": 2.0, "bmc_reference_weighting": False}
    assert by_kind["weights"]["from_preset"] is False and by_kind["prior"]["from_preset"] is True


def test_config_file_nested_under_objective_and_set_overrides(capsys, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("objective:\n  preset: dpo\n  pair_loss: robust\nmodel: tiny\n", encoding="utf-8")
    rc, out, _ = run(capsys, "--config", str(cfg), "--set", "label_smoothing=0.2", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["config"]["pair_loss"] == "robust" and info["config"]["label_smoothing"] == 0.2

    rc, out, _ = run(capsys, "simpo", "--set", "gamma_beta_ratio=0.3", "--json")
    info = json.loads(out)
    assert info["global_params"]["gamma_beta_ratio"] == 0.3
    assert info["effective_gamma"] == pytest.approx(0.6)  # γ = ratio·β with the preset's β = 2

    rc, out, _ = run(capsys, "--set", "preset=tdpo2", "--set", "kl_alpha=0.3")
    assert rc == 0 and out.startswith("Composition: preset tdpo2 with kl_alpha=0.3")


@pytest.mark.parametrize("content, message", [
    ("- simpo\n- bmc\n", "expected a mapping"),
    ("preset: simpo\nweights: bmcc\n", "unknown weights 'bmcc' (did you mean 'bmc'?)"),
    ("preset: dpo\nf_alpha: 0.3\n", "parameter 'f_alpha' belongs to link=alpha"),
    ("preset: nca_pair\ngamma: 1.0\n", "would ignore gamma"),
    ("preset: [unclosed\n", "not valid YAML"),
])
def test_bad_config_files(capsys, tmp_path, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content, encoding="utf-8")
    rc, out, err = run(capsys, "--config", str(cfg))
    assert rc == 2 and out == ""
    assert err.startswith("unipo variants: error: ") and message in err


def test_usage_errors(capsys, tmp_path):
    rc, _, err = run(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "no such file" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: dpo\n", encoding="utf-8")
    rc, _, err = run(capsys, "dpo", "--config", str(cfg))
    assert rc == 2 and "not both" in err
    rc, _, err = run(capsys, "dpo", "--set", "beta")
    assert rc == 2 and "KEY=VALUE" in err
    rc, _, err = run(capsys, "dpo", "--set", "preset=ipo")
    assert rc == 2 and "not both" in err


def test_summary_takes_the_first_sentence():
    assert summary("Forward KL. (TRL writes 1 − exp(−s); the constant cancels.)") == "Forward KL."
    assert summary("One line\n  wrapped here. Second sentence.\n\nMore.") == "One line wrapped here."
    assert summary("Uses ``x`` e.g. here.") == "Uses `x` e.g. here."


def test_docs_reference_lists_every_preset_and_part():
    """docs/objective.md is generated from the registry: a new part or preset must appear there too."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "objective.md"
    if not doc.exists():
        pytest.skip("docs/objective.md not present")
    text = doc.read_text(encoding="utf-8")
    missing = [f"preset {n}" for n in PRESETS if f"| `{n}` |" not in text]
    for kind in KINDS:
        section = text.split(f"### `{kind}`", 1)[1].split("\n#", 1)[0] if f"### `{kind}`" in text else ""
        missing += [f"{kind}={n}" for n in parts(kind) if f"| `{n}` |" not in section]
    assert not missing, f"docs/objective.md lacks {missing}"


def test_several_names_compare_the_parts_each_sets_by_hand(capsys):
    """`unipo variants mpo wpo simpo`: one row per part or parameter any of them changes from plain DPO, DPO's
    value, then each preset's where it differs (· where it keeps DPO's); written out from the presets' sources."""
    rc, out, err = run(capsys, "mpo", "wpo", "simpo")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["part", "/", "parameter", "dpo", "mpo", "wpo", "simpo"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[2:] if ln.strip() and not ln.startswith("·")}
    assert rows == {
        "prior": ["reference", "·", "·", "none"],
        "aggregation": ["sum", "·", "·", "mean"],
        "pair_loss": ["sigmoid", "mixture", "{sigmoid:", "0.8,", "bco_pair:", "0.2}", "·", "·"],
        "pair_weighting": ["none", "·", "wpo", "·"],
        "nll_weight": ["0", "1", "·", "·"],
        "nll_token_mean": ["false", "true", "·", "·"],
        "beta": ["0.1", "·", "·", "2"],
        "gamma": ["0", "·", "·", "0.5"],
    }
    rc, out, _ = run(capsys, "mpo", "dpo", "--json")
    info = json.loads(out)
    assert info["names"] == ["mpo", "dpo"] and info["differences"][1] == {}
    assert info["differences"][0] == {"pair_loss": "mixture {sigmoid: 0.8, bco_pair: 0.2}", "nll_weight": 1.0,
                                      "nll_token_mean": True}
    rc, _, err = run(capsys, "mpo", "dpo", "--set", "beta=0.2")
    assert rc == 2 and "with one NAME" in err


def test_one_name_says_what_differs_from_dpo(capsys):
    _, out, _ = run(capsys, "mpo")
    assert out.splitlines()[1] == ("Differs from plain DPO in: pair_loss=mixture {sigmoid: 0.8, bco_pair: 0.2}, "
                                   "nll_weight=1, nll_token_mean=true")
    assert "      mixes:   0.8 × sigmoid: −log σ(z)" in out and "      mixes:   0.2 × bco_pair: " in out
    _, out, _ = run(capsys, "dpo")
    assert out.splitlines()[1] == "Differs from plain DPO in: nothing"
    _, out, _ = run(capsys, "simpo", "--set", "link=js")
    assert out.splitlines()[1] == "Differs from plain DPO in: prior=none, aggregation=mean, link=js, beta=2, gamma=0.5"
