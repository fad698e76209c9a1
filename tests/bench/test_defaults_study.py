"""The defaults study: its variants differ from the shipped config as documented and its table is well formed."""

from bench import defaults_study, studies


def test_the_shipped_row_overrides_nothing_and_the_others_one_setting_each():
    rows = {m.key: m for m in studies.DEFAULTS_VARIANTS}
    assert len(rows) == len(studies.DEFAULTS_VARIANTS)
    assert rows["tg_proj_modes_2"].delta == {"model": {"optimizer": {"init_args": {}}}}
    assert rows["tg_component_50_2"].delta["model"]["optimizer"]["init_args"] == {"proj_modes": None}
    assert rows["tg_element_200_1"].delta["model"]["optimizer"]["init_args"]["complex_norm"] == "element"
    assert rows["adamw"].configs == ("configs/optim/adamw.yaml",)


def test_render_writes_one_row_per_variant_with_paired_changes():
    study = studies.STUDIES["defaults"]
    rows = [
        {"key": "adamw", "label": "AdamW", "change": "reference", "test": {0: 0.10, 1: 0.12},
         "train": {0: 0.05, 1: 0.05}, "state": 1.0, "failed": 0},
        {"key": "tg", "label": "TG", "change": "x", "test": {0: 0.11, 1: 0.12}, "train": {0: 0.06, 1: 0.06},
         "state": 0.2, "failed": 0},
    ]
    text = defaults_study.render(rows, study, 0.5, "python -m bench.defaults_study")
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + len(rows)
    assert "+5.0% ± 7.1" in table[2] and "−80.0%" in table[2]
    assert "`python -m bench.defaults_study`" in text


def _rows(test_of):
    """One row per variant with three seeds of test L2 ``test_of(key)`` (a base value, then small seed offsets)."""
    return [{"key": m.key, "label": m.label, "change": m.note, "train": {}, "state": 0.3, "failed": 0,
             "test": {s: test_of(m.key) * (1 + 0.01 * s) for s in range(3)}} for m in studies.DEFAULTS_VARIANTS]


def test_the_reading_names_an_alternative_that_beats_a_default_and_otherwise_clears_the_defaults():
    text = defaults_study.reading(_rows(lambda key: 0.10))
    assert "**The class defaults are the measured best or within noise of it**" in text
    text = defaults_study.reading(_rows(lambda key: 0.09 if key == "tg_proj_modes_3" else 0.10))
    assert "**Not every default is the measured best here**" in text
    assert 'scale="auto" (2 here): scale 3 (−10.0%)' in text
    rows = [r for r in _rows(lambda key: 0.10) if r["key"] != defaults_study.DEFAULT_ROW]
    assert "not available" in defaults_study.reading(rows)
