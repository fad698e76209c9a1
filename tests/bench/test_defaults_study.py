"""The defaults study: its variants differ from each other as documented and its table is well formed."""

from bench import defaults_study, harness


def test_the_chosen_row_is_the_default_jobs_optimizer_settings():
    hp = harness.default_hyper()
    rows = {m.key: (m, h) for m, h, _ in defaults_study.variants(hp)}
    assert len(rows) == len(defaults_study.variants(hp))  # unique keys
    method, h = rows["tg_proj_modes_2"]
    assert (h.update_proj_gap, h.scale, h.proj_modes) == (hp.update_proj_gap, hp.scale, hp.proj_modes)
    assert (hp.update_proj_gap, hp.scale, hp.proj_modes) == (50, 2.0, (0, 1))
    assert dict(method.options) == {"rank": 0.25}  # everything else from the class defaults (complex_norm)
    assert rows["tg_component_50_2"][1].proj_modes is None  # the rows before it project every mode
    before, _ = rows["tg_element_200_1"]
    assert dict(before.options)["complex_norm"] == "element"
    assert rows["adamw"][0].family == "torch"


def test_render_writes_one_row_per_variant_with_paired_changes():
    rows = [
        {
            "key": "adamw",
            "label": "AdamW",
            "change": "reference",
            "test": [0.10, 0.12],
            "val": [0.1, 0.1],
            "kept": 1.0,
            "failed": 0,
        },
        {
            "key": "tg",
            "label": "TG",
            "change": "x",
            "test": [0.11, 0.12],
            "val": [0.1, 0.1],
            "kept": 0.258,
            "failed": 0,
        },
    ]
    text = defaults_study.render(rows, [0, 1], 2, 58, 0.5, "python -m bench.defaults_study")
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + len(rows)
    assert "+5.0% ± 7.1" in table[2] and "25.8%" in table[2]
    assert "`python -m bench.defaults_study`" in text
