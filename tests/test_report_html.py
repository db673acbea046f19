"""report.html: one self-contained page with every part of the report, checked as written and
as headless Chromium renders it."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from browser import dump_dom, screenshot
from matplotlib.image import imread

from s2r_ray.config import build_config
from s2r_ray.folder import StudyFolder
from s2r_ray.render.html import render_html
from s2r_ray.report import build_report, write_report

REJECTED = [
    ("mp.csv", 7, "source", "formula", "Xx2O", "invalid_formula"),
    ("mp.csv", 9, "source", "formula", "Fe0O3", "zero_or_negative_amount"),
    ("mp.csv", 12, "source", "gap", "", "missing_value"),
    ("exp.csv", 3, "target", "formula", "<b>bold</b>", "invalid_formula"),
    ("exp.csv", 4, "target", "gap", "-1", "out_of_range"),
]
# a checker the test adds to a copy of the page: the report itself carries no script
CHECK = """<script>addEventListener("load", () => {
  const imgs = [...document.images];
  const out = document.createElement("pre");
  out.id = "s2r-check";
  out.textContent = JSON.stringify({
    images: imgs.length,
    broken: imgs.filter((i) => !(i.complete && i.naturalWidth > 0)).length,
    fetched: performance.getEntriesByType("resource").map((e) => e.name)
      .filter((n) => !n.startsWith("data:")),
  });
  document.body.append(out);
});</script>"""


def _cells(ms: tuple = (None,), reps: int = 4) -> pd.DataFrame:
    """A study's cells on a known law with shared split noise, like a real ledger's."""
    rng = np.random.default_rng(1)
    rows = []
    for m in ms:
        for r in range(reps):
            split = rng.normal(0, 0.01)
            for n in (0, 300, 1000, 3000, 10000, 30000):
                level = 0.6 if m is None else 2 * m**-0.3
                mae = level if n == 0 else 0.25 + (level - 0.25) * (n / 300) ** -0.35
                rows.append(
                    {"n": n, "repetition": r, "mae": mae + split + rng.normal(0, 0.004)}
                    | {"trials": 6, "zero_shot_mae": 0.9, "source_val_mae": 0.3}
                    | {"pretrain_converged": n != 30000, "reference_mae": 0.55}
                    | ({"m": m} if m is not None else {})
                )
    return pd.DataFrame(rows)


def study_folder(tmp_path: Path, ms: tuple = (None,)) -> tuple[Path, dict]:
    """A study folder as a finished study leaves it: config, rejected rows, the report."""
    out = tmp_path / "study"
    out.mkdir()
    cfg = build_config({"name": "gap_mp", "sizes": [300, 1000], "target_mae": 0.3})
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    columns = ["file", "row", "side", "column", "value", "reason"]
    pd.DataFrame(REJECTED, columns=columns).to_csv(out / "rejected_rows.csv", index=False)
    report = build_report(
        _cells(ms),
        study="gap_mp",
        status="complete",
        planned_repetitions=4,
        target_mae=0.3,
        n_boot=200,
        property_name="band gap <E_g>",
        units="eV",
        references={"Matbench": 0.33},
        extra={
            "counts": {"source_rows": 78164, "target_rows": 4601, "cells_ok": 24},
            "timing": {"wall_seconds": 3725.5, "trials": 144, "training_fraction": 0.88},
            "progress": {"cells_done": 24, "cells_planned": 24, "sizes_complete": [0, 300]},
        },
    )
    write_report(report, StudyFolder(out))
    return out, report


def test_the_page_says_everything_and_loads_nothing(tmp_path: Path) -> None:
    out, report = study_folder(tmp_path)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # scaling (with the gains), backtest
    targets = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert all(t.startswith(("data:image/png;base64,", "#")) for t in targets)  # none to fetch
    assert "<script" not in page and "<link" not in page and "@import" not in page
    for d in report["diagnostics"]:
        assert html.escape(d["message"]) in page
    fit = report["fit"]
    assert f"α = {fit['alpha']:.3g}" in page and "each tenfold increase" in page
    assert "Equivalent experimental sample size" not in page  # m does not vary here
    for text in ("Matbench", "Simulation alone", "Backtest", "78,164", "1:02:06"):
        assert text in page, text
    # rejected rows: counts by side and reason, examples; every value escaped
    assert "Rejected rows (5)" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<td class=l>source</td><td class=l>invalid_formula</td><td>1</td>" in page
    assert "band gap &lt;E_g&gt;" in page and "<E_g>" not in page
    assert "target_mae: 0.3" in page  # the config, as YAML
    # the words follow the diagnostics: an α the data cannot pin down is not explained away
    unsure = report | {"diagnostics": [{"code": "alpha_not_identified", "message": "too wide"}]}
    page = render_html(unsure, {}, None, None)
    assert "nothing firm yet" in page and "each tenfold increase" not in page


def test_a_target_size_axis_adds_its_plot_and_equivalent_samples(tmp_path: Path) -> None:
    out, report = study_folder(tmp_path, ms=(50, 100, 200, 400))
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "E(n) per experimental training size m" in page
    points = report["equivalent_samples"]["points"]
    assert "Equivalent experimental sample size" in page and len(points) == 5
    assert page.count("<td>400</td>") >= 6  # the per-size table lists each (n, m)
    _check_equivalent_samples(report, page)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _check_equivalent_samples(report: dict, page: str) -> None:
    """The page's equivalent-sample table and sentence against a hand solution of E0(m) = E(n)
    on the report's baseline curve, which must recover the law _cells built (E0 = 2 m^-0.3)."""
    eq = report["equivalent_samples"]
    b, m_ref = eq["baseline_curve"], eq["m_ref"]
    assert m_ref == 400 and b["m_used"] == [50, 100, 200, 400], eq
    assert b["D0"] == pytest.approx(2, rel=0.05) and b["beta"] == pytest.approx(0.3, abs=0.02)
    assert 0 <= b["C0"] < 0.02, b

    def m_eq(mae: float) -> float:
        return (b["D0"] / (mae - b["C0"])) ** (1 / b["beta"])

    def true_m_eq(n: int) -> float:  # the construction: transfer at m = 400, E0 = 2 m^-0.3
        level = 2 * 400**-0.3
        return (2 / (0.25 + (level - 0.25) * (n / 300) ** -0.35)) ** (1 / 0.3)

    table = page[page.index("<h3>Equivalent experimental sample size</h3>") :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr>((?:<td>[^<]*</td>)+)</tr>", table)
    assert len(rows) == len(eq["points"]) == 5, table
    for row, p in zip(rows, eq["points"], strict=True):
        n, mae, m, ci, times, extrapolated = re.findall(r"<td>([^<]*)</td>", row)
        want = m_eq(p["mae"])
        assert want == pytest.approx(true_m_eq(p["n"]), rel=0.15), (p, true_m_eq(p["n"]))
        assert _number(n) == p["n"] and _number(mae) == pytest.approx(p["mae"], rel=6e-4), row
        assert _number(m) == pytest.approx(want, rel=6e-3), (row, want)
        assert _number(times) == pytest.approx(want / m_ref, rel=6e-3), (row, want / m_ref)
        assert extrapolated == ("yes" if want > 400 else "no"), (row, want)
        lo, hi = (_number(v) for v in ci.strip("[]").split(", "))
        assert [lo, hi] == pytest.approx(p["m_eq_ci90"], rel=6e-3) and lo <= want <= hi, row
    # the sentence in "What the study found" is about the largest n
    last = eq["points"][-1]
    found = re.search(
        r"Worth in experiments: at n = ([\d,]+), pretraining with m = ([\d,]+) experimental "
        r"rows is as accurate as the baseline with ([\d,.]+) rows \[([\d,.]+), ([\d,.]+)\], "
        r"([\d.]+)× as many, beyond the measured m: an extrapolation; one simulated row is "
        r"worth ([\d.]+) \[([\d.]+), ([\d.]+)\] experimental rows\.",
        page,
    )
    assert found, page[page.index("Worth in") - 100 : page.index("Worth in") + 400]
    n, m, at, lo, hi, times, worth, *worth_ci = (_number(v) for v in found.groups())
    want = m_eq(last["mae"])
    assert (n, m) == (last["n"], m_ref)
    assert [at, lo, hi] == pytest.approx([want, *last["m_eq_ci90"]], rel=6e-3), found.group(0)
    assert times == pytest.approx(want / m_ref, rel=6e-3), found.group(0)
    per_row = [(v - m_ref) / n for v in (want, *last["m_eq_ci90"])]
    assert [worth, *worth_ci] == pytest.approx(per_row, rel=6e-2), found.group(0)


@pytest.mark.parametrize(
    ("m_eq", "ci", "words"),
    [
        (
            "unreachable",
            ["unreachable", "unreachable"],
            "is more accurate than the baseline can get with any number of experimental rows: "
            "E0(m) levels off at C0 = 0.2426, above this MAE (0.2)",
        ),
        (
            476.0,
            [289.0, "unreachable"],
            "is as accurate as the baseline with 476 rows (90% interval: 289 rows or more, and at "
            "its upper end no number of experimental rows gets there), 1.19× as many, beyond the "
            "measured m: an extrapolation; one simulated row is worth 0.76 [-1.1, unbounded]",
        ),
    ],
    ids=["m_eq", "upper-bound"],
)
def test_an_unreachable_equivalent_size_is_said_in_words(m_eq, ci, words) -> None:
    unbounded = isinstance(m_eq, str)
    point = {"n": 100, "mae": 0.2, "m_eq": m_eq, "m_eq_ci90": ci, "extrapolated": True}
    point |= {
        "gain_factor": m_eq if unbounded else m_eq / 400,
        "worth_per_row": "unbounded" if unbounded else (m_eq - 400) / 100,
        "worth_per_row_ci90": ["unbounded" if unbounded else (289 - 400) / 100, "unbounded"],
    }
    eq = {"m_ref": 400.0, "baseline_curve": {"C0": 0.2426}, "points": [point]}
    page = render_html({"equivalent_samples": eq}, {}, None, None)
    assert words in html.unescape(page)
    assert "unreachable×" not in page and "unreachable [" not in page


def test_chromium_renders_the_page_with_every_image(tmp_path: Path) -> None:
    out, _ = study_folder(tmp_path)
    checked = tmp_path / "checked.html"
    checked.write_text((out / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    dom = dump_dom(checked.as_uri())
    found = re.search(r'<pre id="s2r-check">(.*?)</pre>', dom)
    assert found, "the page did not finish loading"
    check = json.loads(html.unescape(found.group(1)))
    assert check == {"images": 2, "broken": 0, "fetched": []}
    assert "What the study found" in dom
    shot = screenshot((out / "report.html").as_uri(), tmp_path / "report.png")
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 0.05  # text and plots, not a blank page
    assert (pixels < 0.3).all(axis=2).mean() > 0.005  # dark text is drawn
