"""report.html: every image the report names is on the page with a real thumbnail, text is escaped, nothing is
fetched from elsewhere, a missing image is a placeholder, the confusion cells hold exactly their out-of-fold rows,
``featurebank report`` renders it again, and a real browser shows it."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST, FAST_ARGS, ROOT, SYNTHETIC_SETTINGS, photo, write_tree
from PIL import Image

import cli
from classifiers.crossval import cross_validate
from classifiers.report import html as page_module
from classifiers.report.embedmap import embedding_map
from classifiers.report.reading import leaderboard_rows
from classifiers.report.writer import predictions_name, write_report
from embedder.inputs.decode import file_digest

VOID = {"img", "meta", "br", "input", "link", "hr", "source", "wbr"}


class Page(HTMLParser):
    """The parts of report.html the tests read: image cards (with the section or confusion panel they are in),
    listed paths, links, image sources, and the text of every element with an id."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.cards: list[dict] = []
        self.listed: list[dict] = []  # <li data-path> of a confusion panel beyond its thumbnails
        self.refs: list[str] = []  # every src and href
        self.text: dict[str, str] = {}
        self._card = None
        self._ph = False
        self.feed(text)

    def _where(self) -> str | None:
        for tag, attrs in reversed(self.stack):
            if tag == "section" or "panel" in attrs.get("class", "").split():
                return attrs.get("id")
        return None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.refs += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "figure" and "data-path" in attrs:
            self._card = {"path": attrs["data-path"], "in": self._where(), "src": None, "ph": None, "text": ""}
            self.cards.append(self._card)
        elif tag == "img" and self._card is not None:
            self._card["src"] = attrs["src"]
        elif tag == "div" and "ph" in attrs.get("class", "").split() and self._card is not None:
            self._ph, self._card["ph"] = True, ""
        elif tag == "li" and "data-path" in attrs:
            self.listed.append({"path": attrs["data-path"], "in": self._where()})
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, attrs = self.stack.pop()
            if open_tag == "figure":
                self._card = None
            if open_tag == "div" and self._ph:
                self._ph = False
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self._card is not None:
            self._card["text"] += data
            if self._ph:
                self._card["ph"] += data
        for _, attrs in self.stack:
            if "id" in attrs:
                self.text[attrs["id"]] = self.text.get(attrs["id"], "") + data

    def section(self, name: str) -> list[dict]:
        return [c for c in self.cards if c["in"] == name]


def image_run(tmp_path, classifiers=("logreg", "knn"), before_report=None, classes=("class0", "class1", "class2")):
    """A cache of 30 real image files (200x150 JPEGs) with planted features: class0/img003 looks like class1 (a
    label error), img020 is unlike anything (an outlier), img025 is a byte copy of img005 under another class.
    Cross-validated and reported into tmp_path/run; returns (run folder, image root, report)."""
    from embedder.cache.hdf5 import CacheWriter

    root = tmp_path / "images"
    rng = np.random.default_rng(5)
    centers = np.eye(3, 16) * 6
    y = np.repeat(np.arange(3), [12, 10, 8])
    X = centers[y] + rng.normal(0, 1.0, (30, 16))
    X[3] = centers[1] + rng.normal(0, 0.3, 16)
    X[20] = -20 * np.ones(16)
    paths = [f"{classes[c]}/img{i:03d}.jpg" for i, c in enumerate(y)]
    for i, p in enumerate(paths):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        photo(i, (200, 150)).save(root / p, quality=90)
    shutil.copyfile(root / paths[5], root / paths[25])
    n = len(y)
    rows = {
        "path": paths,
        "label": [classes[c] for c in y],
        "group": [""] * n,
        "size": [100] * n,
        "mtime_ns": [1] * n,
        "digest": [file_digest(str(root / p)) for p in paths],
    }
    empty = {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")}
    cache = tmp_path / "c.h5"
    with CacheWriter(str(cache), SYNTHETIC_SETTINGS, f"classes:{root}", str(root), {"weights_file": None}) as w:
        w.write_batch(rows, {"flatten": X.astype(np.float32), "layer3": X[:, :8].astype(np.float32)}, empty)
        w.commit([(p, label, "") for p, label in zip(paths, rows["label"])], {})
    report = cross_validate(cache, classifiers=list(classifiers), layers=["flatten"], folds=3)
    if before_report:
        before_report(root)
    write_report(report, str(tmp_path / "run"), suspicious=5)
    return tmp_path / "run", root, report


def load(run) -> tuple[dict, str, Page]:
    d = json.loads((run / "report.json").read_text())
    text = (run / "report.html").read_text(encoding="utf-8")
    return d, text, Page(text)


def oof_rows(run, d) -> list[dict]:
    best = d["best"]
    with open(run / "predictions" / predictions_name(best["classifier"], best["layer"]), newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_suspicious_outlier_and_duplicate_image_has_its_thumbnail(tmp_path):
    run, root, _ = image_run(tmp_path)
    d, text, page = load(run)
    # beside the leaderboard: what its figures were measured on, and that #1 was picked on them
    assert f"Every figure: out of fold on the {d['rows']} labelled images of this run" in text
    assert "picked on the folds that score it: its figures are optimistic for new images" in text
    suspicious = d["suspicious"]["images"]
    assert suspicious and suspicious[0]["path"] == "class0/img003.jpg"
    cards = page.section("suspicious")
    assert [c["path"] for c in cards] == [s["path"] for s in suspicious]
    for card, s in zip(cards, suspicious):
        thumb = run / card["src"]
        assert card["src"].startswith("thumbs/") and thumb.is_file()
        with Image.open(thumb) as t, Image.open(root / s["path"]) as original:
            assert t.format == "JPEG" and t.size == (160, 120)  # 200x150, longer side to 160
            small = np.asarray(original.convert("RGB").resize(t.size), dtype=float)
            assert np.abs(np.asarray(t, dtype=float) - small).mean() < 12  # the picture of that very file
        assert s["label"] in card["text"] and s["predicted"] in card["text"]
        assert f"({s['confidence']:.2f})" in card["text"]
    assert [c["path"] for c in page.section("outliers")] == [o["path"] for o in d["outliers"]["images"]]
    assert page.section("outliers")[0]["path"] == "class1/img020.jpg"
    dup = page.section("duplicates")
    assert [c["path"] for c in dup] == ["class0/img005.jpg", "class2/img025.jpg"] and "conflicting labels" in text
    assert all(c["src"] and (run / c["src"]).is_file() for c in page.cards)
    # the same path always gets the same thumbnail file, made once
    srcs = {}
    for c in page.cards:
        assert srcs.setdefault(c["path"], c["src"]) == c["src"]
    assert len(os.listdir(run / "thumbs")) == len(srcs)


def test_nothing_is_fetched_and_the_folder_can_move(tmp_path):
    evil = '<img src=x onerror="alert(1)">'  # a class (and folder) name
    run, root, _ = image_run(tmp_path, classes=("class0", evil, "class2"))
    _, text, page = load(run)
    assert evil not in text and "&lt;img src=x onerror=" in text and evil in page.text["per-class"]
    assert {c["path"] for c in page.section("outliers")} >= {f"{evil}/img020.jpg"}  # read back: text, not markup
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert not re.search(r"<(link|iframe|object|embed)\b", text) and "@import" not in text and "url(" not in text
    assert not re.search(r"<script[^>]*\bsrc=", text)  # inline scripts only
    local = [r for r in page.refs if not r.startswith(("#", "file:///"))]
    assert local and all(not re.match(r"[a-z]+:|//", r) for r in local)
    originals = [r for r in page.refs if r.startswith("file:///")]
    assert originals and all(r.startswith(root.as_uri() + "/") for r in originals)  # click: the original image
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(run), str(moved))
    assert all((moved / r).is_file() for r in local)
    assert Page((moved / "report.html").read_text()).refs == page.refs


def test_a_deleted_or_broken_image_is_a_placeholder(tmp_path):
    def damage(root):
        (root / "class0" / "img003.jpg").unlink()
        (root / "class1" / "img020.jpg").write_text("not a picture")

    run, _, _ = image_run(tmp_path, before_report=damage)
    _, text, page = load(run)
    assert text.rstrip().endswith("</html>")
    cards = {c["path"]: c for c in page.section("suspicious") + page.section("outliers")}
    gone, broken = cards["class0/img003.jpg"], cards["class1/img020.jpg"]
    assert gone["src"] is None and "file not found" in gone["ph"]
    assert broken["src"] is None and "not an image file" in broken["ph"]
    others = [c for c in page.cards if c["path"] not in ("class0/img003.jpg", "class1/img020.jpg")]
    assert others and all(c["src"] and (run / c["src"]).is_file() for c in others)


def test_confusion_cells_hold_exactly_their_out_of_fold_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(page_module, "CELL_THUMBS", 2)  # so that cells also list paths beyond their thumbnails
    run, _, report = image_run(tmp_path)
    d, _, page = load(run)
    classes = d["classes"]
    rows = oof_rows(run, d)
    best = next(
        r for r in d["results"] if r["classifier"] == d["best"]["classifier"] and r["layer"] == d["best"]["layer"]
    )
    expected: dict[str, list[dict]] = {}
    for r in rows:
        expected.setdefault(f"cell-{classes.index(r['label'])}-{classes.index(r['predicted'])}", []).append(r)
    matrix = np.zeros((3, 3), dtype=int)
    for cell, members in expected.items():
        shown = [c["path"] for c in page.cards if c["in"] == cell] + [
            li["path"] for li in page.listed if li["in"] == cell
        ]
        assert sorted(shown) == sorted(r["path"] for r in members), cell
        assert len([c for c in page.cards if c["in"] == cell]) == min(2, len(members))
        _, i, j = cell.split("-")
        matrix[int(i), int(j)] = len(members)
        confidence = {r["path"]: float(r["confidence"]) for r in members}
        order = [confidence[p] for p in shown]
        assert order == sorted(order, reverse=i != j)  # mistakes: surest first; right: closest calls first
    assert matrix.tolist() == best["confusion"]  # one repeat: each image once, as in report.json
    assert (matrix > 0).sum() > 3  # some mistakes, so there is something to click
    assert len({li["in"] for li in page.listed} | {c["in"] for c in page.cards if c["in"].startswith("cell-")}) == len(
        expected
    )
    cm = page.text["confusion"]
    for c in classes:
        assert c in cm
    links = [r for r in page.refs if r.startswith("#cell-")]
    assert sorted(links) == sorted(f"#{cell}" for cell in expected)  # empty cells have nothing to click


def test_map_of_the_embeddings(tmp_path):
    run, _, report = image_run(tmp_path)
    d, text, _ = load(run)
    m = json.loads((run / "map.json").read_text())
    assert m["layer"] == "flatten" and m["rows"] == 30 and "t-SNE" in m["method"]
    rows = oof_rows(run, d)
    assert m["points"]["path"] == [r["path"] for r in rows]
    assert m["points"]["predicted"] == [r["predicted"] for r in rows] and m["points"]["label"] == [
        r["label"] for r in rows
    ]
    xy = np.c_[m["points"]["x"], m["points"]["y"]]
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0
    with Image.open(run / "map.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert 'src="map.png"' in text
    X = report.data.features("flatten")
    rows10, xy10, _ = embedding_map(X, seed=0, max_rows=10)
    again, xy_again, _ = embedding_map(X, seed=0, max_rows=10)
    assert len(rows10) == 10 and (np.diff(rows10) > 0).all() and (rows10 == again).all()
    np.testing.assert_allclose(xy10, xy_again)  # a fixed seed: the same picture every time
    few, xy_few, method = embedding_map(X[:5], seed=0)
    assert method.startswith("PCA") and xy_few.shape == (5, 2)


def test_report_command_renders_again_without_the_cache(tmp_path):
    run, root, _ = image_run(tmp_path)
    first = (run / "report.html").read_text()
    (run / "report.html").unlink()
    shutil.rmtree(run / "thumbs")
    (tmp_path / "c.h5").unlink()
    runner = CliRunner()
    result = runner.invoke(cli.main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{run / 'report.html'}\n"
    assert (run / "report.html").read_text() == first  # the same page, thumbnails made again from the images
    # the leaderboard's columns are the terminal's and report.md's: ECE cal. too (its note under the table names it)
    d = json.loads((run / "report.json").read_text())
    head = first[first.index('id="leaderboard-table"') :].split("</thead>")[0]
    assert re.findall(r"<th[^>]*>([^<]*)</th>", head) == leaderboard_rows(d)[0]
    assert f">{d['leaderboard'][0]['ece']:.3f}</td>" in first[first.index('id="leaderboard-table"') :]
    page = Page(first)
    assert all((run / c["src"]).is_file() for c in page.cards)
    # the images moved: without --images the page keeps the thumbnails it has, and new ones are placeholders
    shutil.move(str(root), str(tmp_path / "moved"))
    shutil.rmtree(run / "thumbs")
    assert runner.invoke(cli.main, ["report", str(run)]).exit_code == 0
    assert all(c["src"] is None and "file not found" in c["ph"] for c in load(run)[2].cards)
    assert runner.invoke(cli.main, ["report", str(run), "--images", str(tmp_path / "moved")]).exit_code == 0
    assert all(c["src"] and (run / c["src"]).is_file() for c in load(run)[2].cards)


def test_report_command_errors_are_one_line(tmp_path):
    runner = CliRunner()
    helped = runner.invoke(cli.main, ["report", "--help"])
    assert helped.exit_code == 0 and "Example:" in helped.output and "featurebank report runs/" in helped.output
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.json").write_text('{"format": "something else"}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text('{"format": ')
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "report.json")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "report.json").write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError's traceback
    for folder, message in [
        ("deep", "is not a readable report (nested too deeply to read)"),
        ("fifo", "report.json is not a regular file"),
        ("absent", "is not a folder: give a run folder written by cv --out or finetune"),
        ("empty", "has no report.json"),
        ("other", "is not a report of featurebank cv or finetune"),
        ("broken", "is not a readable report (JSONDecodeError"),
    ]:
        result = runner.invoke(cli.main, ["report", str(tmp_path / folder)])
        assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output


@pytest.mark.integration
def test_labels_and_paths_are_text_not_markup(tmp_path, monkeypatch):
    """Through the real pipeline: a CSV manifest whose label is a script tag, extracted, cross-validated, shown."""
    from embedder.job import extract

    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "images"
    paths = write_tree(root, classes=("cats", "dogs"), per_class=6)
    odd = "cats/odd <b>name & co.jpg"
    os.replace(root / paths[0], root / odd)
    paths[0] = odd
    (root / "dogs" / "<empty>.jpg").write_bytes(b"")
    evil = "<script>alert(1)</script>"
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([("images/" + p, "cats" if p.startswith("cats") else evil) for p in paths + ["dogs/<empty>.jpg"]])
    summary = extract(str(tmp_path / "labels.csv"), **FAST)
    report = cross_validate(summary.cache, classifiers=["logreg", "knn:n_neighbors=3"], folds=3)
    write_report(report, str(tmp_path / "run"))
    text = (tmp_path / "run" / "report.html").read_text()
    assert evil not in text and "alert(1)" in text
    assert html.escape(evil, quote=False) in text
    assert "odd <b>" not in text and "odd &lt;b&gt;name &amp; co.jpg" in text
    page = Page(text)
    assert evil in page.text["per-class"]  # read back, it is the label as text
    assert "images/" + odd in [c["path"] for c in page.cards]
    assert "images/dogs/<empty>.jpg" in page.text["failed"] and "empty file" in page.text["failed"]
    assert len(re.findall(r"<script\b", text)) == 1  # the page's own script, and no other


@pytest.mark.integration
def test_finetune_writes_its_page(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    args = [
        "finetune",
        str(root),
        "-o",
        str(tmp_path / "run"),
        *FAST_ARGS,
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--val-split",
        "0.25",
        "--json",
    ]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["files"]["report_html"] == str(tmp_path / "run" / "report.html")
    d = json.loads((tmp_path / "run" / "report.json").read_text())
    text = (tmp_path / "run" / "report.html").read_text()
    page = Page(text)
    table = page.text["comparison-table"]
    for row in d["comparison"]:
        assert row["model"] in table and f"{100 * row['val_accuracy']:.2f}" in table
    assert "Validation numbers, selection included" in page.text["comparison"]
    assert "curves.png" in page.refs and (tmp_path / "run" / "curves.png").is_file()
    assert f"{100 * d['history'][1]['val_accuracy']:.1f}" in page.text["curves"]
    assert "http://" not in text and "https://" not in text
    (tmp_path / "run" / "report.html").unlink()
    again = CliRunner().invoke(cli.main, ["report", str(tmp_path / "run")])
    assert again.exit_code == 0 and (tmp_path / "run" / "report.html").read_text() == text


@pytest.mark.integration  # a subprocess
def test_the_page_needs_no_torch(tmp_path):
    """cv and its page stay free of torch (they are the fast path of a laptop without a GPU)."""
    from helpers import synthetic_cache

    synthetic_cache(tmp_path / "s.h5")
    code = (
        "import sys; from classifiers import cross_validate, write_report; "
        f"write_report(cross_validate({str(tmp_path / 's.h5')!r}, classifiers=['logreg'], layers=['flatten'], folds=3), "
        f"{str(tmp_path / 'run')!r}); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "report.html").is_file()


# -- a real browser --------------------------------------------------------------------------------------------
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PROBE = """<script>
window.addEventListener("load", function () {
  function box(el) {  // in page coordinates: the link to a cell scrolls a long page
    var r = el.getBoundingClientRect(); return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height];
  }
  var out = {leaderboard: box(document.getElementById("leaderboard-table")),
             thumbs: Array.prototype.map.call(document.querySelectorAll("#suspicious img.thumb"),
                       function (i) { return [i.complete, i.naturalWidth, box(i)]; }),
             panels: Array.prototype.map.call(document.querySelectorAll(".panel"),
                       function (p) { return [p.id, getComputedStyle(p).display]; }),
             broken: [document.getElementById("broken").hidden, document.querySelector("#broken b").textContent],
             placeholders: document.querySelectorAll("#suspicious .ph").length};
  document.querySelector("#leaderboard-table th:nth-child(2)").click();
  out.sorted = Array.prototype.map.call(document.querySelectorAll("#leaderboard-table tbody tr"),
                 function (r) { return r.cells[1].textContent; });
  document.body.setAttribute("data-probe", JSON.stringify(out));
});
</script>"""


def chromium():
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium found (apt-get install chromium): the page was not checked in a browser")


def run_browser(browser, *args, timeout=90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.mark.integration
def test_a_real_browser_shows_the_leaderboard_and_the_thumbnails(tmp_path):
    browser = chromium()
    run, _, _ = image_run(tmp_path)
    d, text, page = load(run)
    probe = run / "probe.html"  # the page plus a script that measures it, next to it so that links resolve
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cell = next(r for r in page.refs if r.startswith("#cell-"))

    def measure(url):
        done = run_browser(browser, "--window-size=1280,4000", "--virtual-time-budget=5000", "--dump-dom", url)
        found = re.search(r'data-probe="([^"]*)"', done.stdout)
        assert found, f"no measurements in Chromium's DOM: {done.stderr[-2000:]}"
        return json.loads(html.unescape(found.group(1)))

    out = measure(probe.as_uri() + cell)
    left, top, width, height = out["leaderboard"]
    assert width > 300 and height > 30 * (1 + len(d["leaderboard"])) * 0.7 and 0 <= top < 4000
    assert len(out["thumbs"]) == len(d["suspicious"]["images"]) > 0
    for complete, natural_width, (_, _, w, h) in out["thumbs"]:
        assert complete and natural_width == 160 and (w, h) == (160, 160)  # loaded, and laid out at full size
    shown = [pid for pid, display in out["panels"] if display != "none"]
    assert shown == [cell[1:]]  # the clicked cell (the link's target) shows its images, no other
    assert out["broken"] == [True, "0"] and out["placeholders"] == 0  # no thumbnail failed to load
    assert out["sorted"] == sorted(r["classifier"] for r in d["leaderboard"])  # a click on "classifier" sorts
    gone = page.section("suspicious")[0]["src"]
    (run / gone).unlink()  # the page moved without all of its thumbs/
    out = measure(probe.as_uri())
    assert len(out["thumbs"]) == len(d["suspicious"]["images"]) - 1 and out["placeholders"] == 1
    hidden, count = out["broken"]
    assert not hidden and 1 <= int(count) <= sum(c["src"] == gone for c in page.cards)  # a banner counts them
    # (at most: the same image inside a closed confusion cell loads lazily, when the browser gets to it)
    shot = tmp_path / "shot.png"
    run_browser(browser, "--window-size=1200,900", f"--screenshot={shot}", (run / "report.html").as_uri())
    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        assert np.asarray(im.convert("L"), dtype=float).std() > 20  # a page was drawn, not a blank
