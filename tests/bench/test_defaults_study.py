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
