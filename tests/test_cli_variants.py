"""``unipo variants``: the preset table, one preset explained, compositions from YAML / --set, --json."""

from __future__ import annotations

import json

import pytest

from unipo.cli import main
from unipo.cli.explain import explain, summary
from unipo.errors import ConfigError
from unipo.objective.presets import DEFAULT_PARTS, PRESETS
from unipo.objective.registry import KINDS, parts

pytestmark = pytest.mark.unit


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["variants", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_lists_every_preset_with_parts_params_and_formula(capsys):
    rc, out, err = run(capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["preset", "parts"]
    for preset in PRESETS.values():
        row = next((ln for ln in lines if ln.split() and ln.split()[0] == preset.name), None)
        assert row is not None, f"{preset.name} missing from the table"
        assert preset.formula in row
        for kind, name in preset.parts.items():
            assert f"{kind}={name}" in row
    simpo = next(ln for ln in lines if ln.startswith("simpo "))
    assert "prior=none" in simpo and "aggregation=mean" in simpo and "beta=2" in simpo and "gamma=0.5" in simpo
    dpo = next(ln for ln in lines if ln.startswith("dpo "))
    assert "prior=" not in dpo  # default parts are not repeated
    assert "Default parts (plain DPO)" in out


def test_table_json(capsys):
    rc, out, _ = run(capsys, "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["preset"] for r in rows] == list(PRESETS)
    tdpo2 = next(r for r in rows if r["preset"] == "tdpo2")
    assert tdpo2["parts"] == {"kl": "tdpo"}
    assert tdpo2["params"] == {"kl_alpha": 0.5, "kl_stopgrad_chosen": True}
    assert tdpo2["formula"] == PRESETS["tdpo2"].formula and tdpo2["source"]


def test_explain_one_preset(capsys):
    rc, out, err = run(capsys, "tdpo2")
    assert rc == 0 and err == ""
    assert out.startswith("Preset: tdpo2")
    # the general objective
    assert "z = β·(h_w − h_l − D) − γ − α_len·(|y_w| − |y_l|)" in out
    assert "s = agg_t( ω_t·(a_t − log ζ_t) )" in out and "h = f′(s)" in out
    # every part kind with the chosen part, its formula, source and docstring summary
    for kind in KINDS:
        name = PRESETS["tdpo2"].parts.get(kind, DEFAULT_PARTS[kind])
        part = parts(kind)[name]
        assert f"{kind} = {name}" in out
        assert part.formula in out
        assert part.source in out
        assert summary(part.doc) in out
    # the KL part's parameters with their values, defaults shown where the preset changes them
    assert "kl_alpha=0.5 (default 1)" in out and "kl_stopgrad_chosen=true (default false)" in out
    assert "KL(ref ‖ policy)" in out
    # the preset's own formula and source
    assert PRESETS["tdpo2"].formula in out and PRESETS["tdpo2"].source in out
    assert "Needs a reference model: yes" in out
    assert "ref_chosen_logps" in out and "chosen_kl" in out


def test_explain_preset_note_and_name_normalisation(capsys):
    rc, out, _ = run(capsys, "FDPO-Alpha")
    assert rc == 0
    assert out.startswith("Preset: fdpo_alpha")
    assert PRESETS["fdpo_alpha"].note in out
    assert "f_alpha=0.5" in out


def test_every_preset_explains(capsys):
    for name in PRESETS:
        rc, out, _ = run(capsys, name, "--json")
        assert rc == 0
        info = json.loads(out)
        assert info["name"] == name and not info["composition"]
        assert [p["kind"] for p in info["parts"]] == list(KINDS)
        assert info["preset"]["formula"] == PRESETS[name].formula


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
    assert out.startswith("Composition: preset simpo with weights=bmc, link=js, beta=2.5")
    assert " + weights = bmc" in out and " + link = js" in out
    assert " * prior = none" in out and " * aggregation = mean" in out  # from the preset
    assert parts("weights")["bmc"].formula in out and parts("link")["js"].formula in out
    assert "bmc_delta=2" in out
    assert "Base preset simpo" in out and PRESETS["simpo"].formula in out
    assert "chosen_diff_mask" in out  # BMC needs the diff masks
    assert "Needs a reference model: no" in out

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
