"""The loss curves of the tiny pipeline as `dvc plots show` gives them: exactly the charts of
dvc.yaml's `plots:` (no second copy of a stage's curves against the row number), every curve
ending at its stage's last step, and the page drawn in headless Chromium with no network (its
scripts inlined from the installed vl-convert-python by .dvc/config's template)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml
from conftest import REPO, TINY_PIPELINE, headless_chromium, run
from selenium.webdriver.support.ui import WebDriverWait

from xinslm.flops import flops_per_token
from xinslm.model import ModelConfig
from xinslm.plots_page import page_template, write_template

SCREENSHOT = REPO / ".artifacts" / "plots-page.png"


def charts(repo: Path) -> dict[str, dict]:
    """dvc.yaml's chart definitions by name."""
    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    return {name: spec for entry in plots for name, spec in entry.items()}


def series_stages(spec: dict) -> dict[str | None, str]:
    """The stage of each curve of a chart, keyed as `dvc plots show --json` names the curve:
    by its file with the files' common folder left out, or None for a chart of one curve."""
    files = list(spec["y"])
    if len(files) == 1:
        return {None: files[0].split("/")[1]}
    common = len(os.path.commonpath(files))
    return {f[common:].strip("/"): f.split("/")[1] for f in files}


def test_every_chart_is_drawn_against_its_stages_steps_to_the_last(trained_repo: Path) -> None:
    shown = json.loads(run(["dvc", "plots", "show", "--json"], trained_repo).stdout)
    assert "errors" not in shown
    defined = charts(trained_repo)
    assert list(shown["data"]) == list(defined)  # no chart twice, none but dvc.yaml's
    max_steps = {s: TINY_PIPELINE[s]["max_steps"] for s in ("pretrain", "sft")}
    summary = {
        s: json.loads((trained_repo / f"dvclive/{s}/metrics.json").read_text()) for s in max_steps
    }
    for name, spec in defined.items():
        (chart,) = shown["data"][name]
        x = chart["content"]["encoding"]["x"]["field"]
        assert x == (spec["x"] if isinstance(spec["x"], str) else next(iter(spec["x"].values())))
        curves: dict[str | None, list[dict]] = {}
        for point in chart["content"]["data"]["values"]:
            curves.setdefault(point.get("filename"), []).append(point)
        stages = series_stages(spec)
        assert set(curves) == set(stages), name
        for curve, points in curves.items():
            stage, steps = stages[curve], [int(p["step"]) for p in points]
            assert steps == sorted(set(steps)), (name, curve)  # one point per step, in order
            assert steps[-1] == max_steps[stage], (name, curve)  # to the stage's last step
            if x == "tokens":  # the stage's tokens at each evaluation, all of them at the end
                assert int(points[-1]["tokens"]) == summary[stage]["tokens"], name
            if x == "flops":
                assert float(points[-1]["flops"]) == summary[stage]["tokens"] * tiny_flops()
    # The first window (compilation, warm-up) has no tokens/s; every later one has.
    speed = shown["data"]["tokens per second"][0]["content"]["data"]["values"]
    for stage, steps in max_steps.items():
        logged = [int(p["step"]) for p in speed if p["filename"].startswith(f"{stage}/")]
        assert logged == list(range(2, steps + 1)), stage


def tiny_flops() -> int:
    shape = {"context_len": 256, "vocab_size": 265}
    return flops_per_token(ModelConfig(**shape, **TINY_PIPELINE["model"]))


def test_the_plots_page_draws_every_chart_with_no_network(
    trained_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(trained_repo, repo, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    write_template(repo / ".dvc/plots.html")  # as make does after the install
    page = tmp_path / "page"
    out = run(["dvc", "plots", "show", "-o", str(page)], repo).stdout
    assert out.strip() == (page / "index.html").as_uri()
    html = (page / "index.html").read_text()
    assert "<script src=" not in html  # DVC's CDN tags left out: the scripts are inlined
    expected = {name.replace(" ", "_"): len(spec["y"]) for name, spec in charts(repo).items()}
    with headless_chromium((1300, 2400), offline=True) as browser:
        browser.get((page / "index.html").as_uri())
        drawn = """return Object.fromEntries([...document.querySelectorAll('main > div[id]')].map(
            div => [div.id, [...div.querySelectorAll('svg .mark-line path')].filter(
                path => /^M[^M]*L/.test(path.getAttribute('d') || '')).length]))"""
        # Each curve is a drawn line (DVC's template adds its smoothed copy): a chart holds at
        # least as many lines of two points or more as it has curves.
        WebDriverWait(browser, 20, poll_frequency=0.1).until(
            lambda b: (
                (lines := b.execute_script(drawn)).keys() == expected.keys()
                and all(lines[i] >= n for i, n in expected.items())
            )
        )
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))


def test_the_template_has_dvcs_placeholders_but_not_its_cdn_scripts() -> None:
    html, versions = page_template()
    assert [html.count(p) for p in ("{plot_divs}", "{refresh_tag}", "{scripts}")] == [1, 1, 0]
    assert "cdn." not in html and "<script src" not in html
    assert versions.startswith("Vega ") and "Vega-Lite 5.21" in versions
