"""bench.tables: the tables and the regularisation reading from results, and the tiny mode end to end."""

from __future__ import annotations

import json
import time

import pytest

from bench import studies, tables


def _run(dataset, method, seed, test, train, name="res16"):
    return {"study": "s", "dataset": dataset, "method": method, "seed": seed, "failure": None, "test_names": [name],
            "tests": {f"test/l2_{name}": test, f"test/h1_{name}": 2 * test,
                      **{f"test_band/{b}_{name}": test for b in tables.BANDS}},
            "train": {"test/l2_train": train}, "steps": 10, "fit_s": 1.0, "state_bytes": 50,
            "adamw_state_bytes": 100, "n_train": 100, "process_s": 2.0}


def _reg_study(methods):
    return studies.Study("regularisation", "t", studies.STUDIES["regularisation"].datasets[:1], methods, (0, 1, 2))


def test_paired_changes_and_verdicts():
    m, sd, n, wins = tables.paired({0: 0.9, 1: 0.8, 2: 0.85}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert (n, wins) == (3, 3) and m == pytest.approx(-0.15)
    assert tables.verdict(m, sd, n) == "lower"
    assert tables.verdict(0.01, 0.2, 3) == "within noise" and tables.verdict(0.1, 0.0, 3) == "higher"
    assert tables.verdict(0.0, 0.0, 3) == "same" and tables.verdict(0.0, 0.1, 3) == "within noise"
    assert "lower on 3/3" in tables.paired_cell({0: 0.9, 1: 0.8, 2: 0.85}, {0: 1.0, 1: 1.0, 2: 1.0})


def test_the_claim_holds_only_for_lower_test_error_with_a_smaller_gap():
    d = studies.STUDIES["regularisation"].datasets[0].key
    tg = studies.tensor_galore(0.25)
    study = _reg_study((studies.ADAMW, tg))
    base = [_run(d, "adamw", s, 0.20 + 0.001 * s, 0.10) for s in range(3)]
    better = [_run(d, tg.key, s, 0.15 + 0.001 * s, 0.10) for s in range(3)]
    text = "\n".join(tables.render_regularisation(study, base + better))
    assert "**The claim holds here**" in text and "−24.9%" in text
    assert "channel modes: low −24.9%, mid −24.9%, high −24.9%" in text  # the band errors moved with the test L2
    worse = [_run(d, tg.key, s, 0.25 + 0.001 * s, 0.10) for s in range(3)]
    text = "\n".join(tables.render_regularisation(study, base + worse))
    assert "does not hold here" in text and "higher in 1" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert len(table) == 3 and "0.1000 ± 0.0000" in table[1]  # header + AdamW + Tensor-GaLore; train column


def test_runs_not_done_are_listed_with_the_command_never_estimated():
    d = studies.STUDIES["regularisation"].datasets[0].key
    study = _reg_study((studies.ADAMW,))
    results = [tables._not_run(spec) for spec in studies.specs(study)]
    saved = {"meta": {"command": "c", "mode": "full", "steps": None, "hardware": {"cpu": "x", "cores": 2,
                                                                                 "torch": "t"}},
             "studies": ["regularisation"], "results": results}
    text = tables.render(saved)
    assert "Not run: `python -m bench.tables --studies regularisation`" in text and d in text
    assert "study `main`: `python -m bench.tables --studies main`" in text


@pytest.mark.slow
def test_tiny_mode_trains_through_the_product_and_writes_only_its_section(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- memory:start -->\nsomeone else's table\n<!-- memory:end -->\n")
    out = tmp_path / "tables.json"
    argv = ["--tiny", "--studies", "regularisation", "--steps", "2", "--output", str(md), "--results", str(out),
            "--work-dir", str(tmp_path / "runs")]
    assert tables.main([*argv, "--jobs", "2"]) == 0  # two training processes at once
    saved = json.loads(out.read_text())
    assert len(saved["results"]) == 8 and not any(r.get("failure") for r in saved["results"])
    assert all(r["steps"] == 2 and r["command"].startswith("python -m app fit") for r in saved["results"])
    text = md.read_text()
    assert "someone else's table" in text and text.count(tables.START) == 1
    assert "#### 100 training samples" in text and "**Reading**" in text
    # one dataset again (its runs come from the cache), the other one's results kept from the saved file
    assert tables.main([*argv, "--datasets", "tiny_darcy16_n100", "--keep-saved"]) == 0
    merged = json.loads(out.read_text())
    assert sorted(r["dataset"] for r in merged["results"]) == sorted(r["dataset"] for r in saved["results"])
    assert merged["meta"]["trained"] == [["regularisation", "tiny_darcy16_n100"]]
    assert merged["meta"]["earlier"][0]["trained"] == [["regularisation", "tiny_darcy16_n250"]]
    assert "#### 250 training samples" in md.read_text() and "Results kept from earlier commands" in md.read_text()


def _saved(command, studies_, results):
    return {"meta": {"command": command, "mode": "full", "steps": None, "hardware": {"cpu": "x", "cores": 2,
                                                                                 "torch": "t"}},
            "studies": studies_, "results": results}


def test_keep_saved_replaces_only_what_was_trained_and_names_where_the_rest_comes_from():
    main = studies.STUDIES["main"]
    old_main = [dict(_run("darcy16", "adamw", s, 0.1, 0.05), study="main") for s in range(3)]
    old_main += [dict(tables._not_run(spec)) for spec in studies.specs(main) if spec.dataset == "burgers"]
    old_reg = [dict(_run("darcy16_n100", "adamw", s, 0.2, 0.1), study="regularisation") for s in range(3)]
    old = _saved("python -m bench.tables --studies regularisation main", ["regularisation", "main"],
                 old_reg + old_main)
    new = [dict(_run("burgers", "adamw", s, 0.3, 0.2, name="res128"), study="main") for s in range(3)]
    merged = tables.keep_saved(_saved("python -m bench.tables --studies main --datasets burgers", ["main"], new),
                               old, {("main", "burgers")})
    assert merged["studies"] == ["regularisation", "main"]
    kept = {(r["study"], r["dataset"], bool(r.get("not_run"))) for r in merged["results"]}
    assert kept == {("regularisation", "darcy16_n100", False), ("main", "darcy16", False), ("main", "burgers", False)}
    assert merged["meta"]["earlier"][0]["trained"] == [("main", "darcy16"), ("regularisation", "darcy16_n100")]
    text = tables.render(merged)
    assert "#### Darcy 16×16" in text and "Not run (no finished run)" in text  # darcy_gen, em, navier_stokes
    assert "(dataset `burgers`)" not in text and "`main` / `darcy_gen`" in text and "`main` / `burgers`" not in text
    assert "`python -m bench.tables --studies regularisation main`: `main/darcy16`" in text


def test_an_unknown_dataset_key_stops_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tables.main(["--studies", "main", "--datasets", "burger", "--work-dir", str(tmp_path)])
    assert "--datasets burger: not a dataset of the studies main; choose from" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_band_without_target_energy_is_not_tabulated_and_the_sentence_says_why():
    # AdamW's in-band error > 1: the targets have (almost) nothing in that band, so the relative error means nothing
    d = studies.STUDIES["regularisation"].datasets[0].key
    tg = studies.tensor_galore(0.25)
    study = _reg_study((studies.ADAMW, tg))
    runs = [_run(d, "adamw", s, 0.20 + 0.001 * s, 0.10) for s in range(3)]
    runs += [_run(d, tg.key, s, 0.15 + 0.001 * s, 0.10) for s in range(3)]
    for r in runs:
        r["tests"]["test_band/high_res16"] = 5000.0 + r["seed"] + (0 if r["method"] == "adamw" else 900)
    assert set(tables.empty_bands(runs, d, "res16")) == {"high"}
    text = "\n".join(tables.render_dataset(study, runs, study.datasets[0]))
    assert "5001.0" not in text and "5,001.0" not in text and "high −" not in text and "high +" not in text
    assert "Not shown: the high band (AdamW's error 5,001× the band's content)" in text
    assert "low −24.9%, mid −24.9%" in text  # the bands with content are still compared


def test_parallel_runs_keep_the_order_of_the_specs_and_run_jobs_processes_at_once(monkeypatch, tmp_path):
    import threading

    from bench import harness

    live, most, lock = [0], [0], threading.Lock()

    def fake_launch(group, work_dir, *, start=True, parallel=1):
        assert parallel == 2
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        return [{"dataset": s.dataset, "method": s.method, "seed": s.seed, "tests": {}, "test_names": ["x"]}
                for s in group]

    monkeypatch.setattr(harness, "launch", fake_launch)
    study = studies.shrink(studies.STUDIES["regularisation"], "tiny")
    results = tables.run_study(study, tmp_path, jobs=2)
    assert [(r["dataset"], r["method"], r["seed"]) for r in results] == [
        (s.dataset, s.method, s.seed) for s in studies.specs(study)]
    assert most[0] == 2


def test_bench_jobs_sets_the_threads_of_each_process_and_a_bad_value_is_refused(monkeypatch, capsys):
    from bench import harness

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 8)
    assert harness.child_env(4)["OMP_NUM_THREADS"] == "2" and "OMP_NUM_THREADS" not in harness.child_env(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert harness.child_env(4)["OMP_NUM_THREADS"] == "3"  # the caller's setting wins
    monkeypatch.setenv("BENCH_JOBS", "two")
    with pytest.raises(SystemExit):
        tables.main(["--studies", "main", "--cached-only"])
    assert "BENCH_JOBS='two': give a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables.main(["--jobs", "0"])
    assert "--jobs 0: give a positive number of processes" in capsys.readouterr().err


def test_methods_with_equal_errors_on_every_seed_are_named_as_one_update():
    main = studies.STUDIES["main"]
    runs = [dict(_run("em", m, s, t, 0.05, name="res128"), study="main")
            for m, t in (("adamw", 0.1), ("galore_d2_0.25", 0.2), ("galore_d3_0.25", 0.2), ("tg_0.25", 0.3))
            for s in range(3)]
    text = tables.identical_rows(main, runs, "em", "res128")
    assert text == ("Identical on every seed (the same update here, not independent evidence): "
                    "GaLore d=2 r=0.25 and GaLore d=3 r=0.25.")
    assert tables.identical_rows(main, runs[:3], "em", "res128") == ""


def test_the_summary_counts_per_method_where_it_is_lower_or_higher_than_adamw_across_datasets():
    main = studies.STUDIES["main"]
    err = {("darcy16", "adamw"): 0.1, ("darcy16", "tg_0.25"): 0.09, ("darcy16", "galore_d1_0.25"): 0.12,
           ("burgers", "adamw"): 0.2, ("burgers", "tg_0.25"): 0.2, ("burgers", "galore_d1_0.25"): 0.19}
    runs = [dict(_run(d, m, s, t * (1 + 0.001 * s), 0.05, name="res16" if d == "darcy16" else "res128"),
                 study="main") for (d, m), t in err.items() for s in range(3)]
    lines = tables.render_summary(main, runs)
    row = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines if ln.startswith("| ")}
    assert "−10.0% (lower)" in row["Tensor-GaLore r=0.25, channel modes"]
    assert row["Tensor-GaLore r=0.25, channel modes"].endswith("| 1 / 1 / 0 |")
    assert row["GaLore d=1 r=0.25"].endswith("| 1 / 0 / 1 |")
    reading = next(ln for ln in lines if ln.startswith("**Reading**"))
    assert "Most often lower and least often higher: Tensor-GaLore r=0.25, channel modes (lower on 1, higher on 0)" \
        in reading and "Never higher than AdamW beyond the noise: Tensor-GaLore r=0.25, channel modes." in reading
    assert tables.render_summary(main, [r for r in runs if r["dataset"] == "darcy16"]) == []  # one dataset: no summary
