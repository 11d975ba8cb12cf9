"""The HTML run report on a real tiny run: content, embedded images, evaluation tables, escaping, errors."""

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import tiny_config, train_tiny_run
from PIL import Image

from diffsat.cli import main
from diffsat.evaluation.suite import Evaluation, Metric
from diffsat.report import fmt, sample_grids, write_report
from diffsat.rundir import MetricsLog

TINY = tiny_config(sample_every=2, save_every=4)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("report"), TINY)


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def evaluation_json(path: Path, label: str = "FID (classifier features)") -> Path:
    """A file in the layout `diffsat evaluate --out` writes (built by the real Evaluation.to_dict)."""
    metrics = [Metric("fid_classifier", label, 12.3456, 1.5, "lower"),
               Metric("kid_classifier", "KID (classifier features)", 0.0213, 0.0011, "lower", 0.004, 0.0007),
               Metric("class_ratio", "class ratio (max / min count)", math.inf, 1.2, "1 = uniform")]
    sets = {"samples": {"source": "samples/tiny", "n": 50, "channels": 1, "size": 28},
            "reference": {"source": "mnist test", "n_evaluation": 950, "n_baseline": 50}, "train": None}
    path.write_text(json.dumps(Evaluation("digits", metrics, sets=sets).to_dict()))
    return path


def data_uris(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_holds_config_summary_images_and_evaluation(run_dir: Path, tmp_path: Path, capsys) -> None:
    figure = tmp_path / "chain.png"
    Image.new("L", (30, 20), 128).save(figure)
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--metrics", str(evaluation_json(tmp_path / "eval.json")),
                 "--figure", str(figure), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert "<td>base_channels</td><td>8</td>" in text and "<td>channel_mults</td><td>[1, 2]</td>" in text
    assert "<h3>train</h3>" in text and "<td>max_steps</td><td>4</td>" in text
    assert '<td>steps (last logged)</td><td class="num">4</td>' in text
    images = data_uris(text)
    assert len(images) == 5  # loss curve, grids at steps 2 and 4, final grid, the extra figure
    assert all(img.startswith(PNG_MAGIC) for img in images)
    with Image.open(io.BytesIO(images[-1])) as img:
        assert img.size == (30, 20)
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", text)
    assert captions == ["training loss", "step 2", "step 4", "final", "chain.png"]
    assert '<td>FID (classifier features)</td><td class="num">12.35</td><td class="num">1.5</td><td>lower</td>' in text
    assert '<td class="num">0.0213 ± 0.004</td><td class="num">0.0011 ± 0.0007</td>' in text
    assert '<td class="num">n/a</td><td class="num">1.2</td>' in text  # infinite class ratio stored as null
    assert "reference: source mnist test, n_evaluation 950, n_baseline 50" in text


def test_default_output_is_written_atomically_into_the_run(run_copy: Path) -> None:
    path = write_report(run_copy)
    assert path == run_copy / "report.html" and path.read_text().startswith("<!DOCTYPE html>")
    assert not list(run_copy.glob(".report.html.*"))


def test_every_text_is_escaped(run_copy: Path, tmp_path: Path) -> None:
    config = json.loads((run_copy / "config.json").read_text())
    config["data"]["path"] = HOSTILE
    (run_copy / "config.json").write_text(json.dumps(config))
    text = write_report(run_copy, [evaluation_json(tmp_path / "e.json", label=HOSTILE)]).read_text()
    assert "<script" not in text
    assert text.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") == 2  # config table, metric label


def test_missing_curves_are_drawn_and_logged_evaluations_summarised(run_copy: Path) -> None:
    (run_copy / "loss.png").unlink()
    log = MetricsLog(run_copy / "metrics.csv", resume_step=4)
    log.write({"step": 2, "recognisable": 0.25})
    log.write({"step": 4, "recognisable": 0.75})
    text = write_report(run_copy).read_text()
    assert (run_copy / "loss.png").is_file() and (run_copy / "quality.png").is_file()
    row = '<td>recognisable</td><td class="num">2</td><td class="num">0.75</td><td class="num">4</td>' \
          '<td class="num">0.25</td><td class="num">0.75</td>'
    assert row in text
    assert len(data_uris(text)) == 5  # loss, quality, two step grids, final


def test_sample_grids_in_step_order_thinned_with_the_last_kept(tmp_path: Path) -> None:
    (tmp_path / "samples").mkdir()
    for step in (*range(10, 310, 10), 5):
        (tmp_path / "samples" / f"step_{step}.png").write_bytes(PNG_MAGIC)
    (tmp_path / "samples" / "step_notes.png").write_bytes(PNG_MAGIC)
    grids, total = sample_grids(tmp_path, max_grids=40)
    assert total == 31 and [s for s, _ in grids] == [5, *range(10, 310, 10)]
    grids, total = sample_grids(tmp_path, max_grids=4)
    assert total == 31 and [s for s, _ in grids] == [5, 100, 200, 300]


def test_fmt() -> None:
    assert [fmt(v) for v in (None, 3.0, 7, 0.123456, 1234.5678, math.nan, math.inf, "lower")] == \
           ["n/a", "3", "7", "0.1235", "1235", "n/a", "inf", "lower"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "no/such/run"], "no/such/run: run directory not found"),
        (["report", "EMPTY"], "no metrics.csv in the run directory"),
        (["report", "RUN", "--metrics", "missing.json"], "missing.json: evaluation JSON not found"),
        (["report", "RUN", "--metrics", "BROKEN"], "broken.json: cannot read evaluation JSON"),
        (["report", "RUN", "--metrics", "CONFIG"], "no 'metrics' table"),
        (["report", "RUN", "--figure", "missing.png"], "missing.png: figure not found"),
        (["report", "RUN", "--figure", "CONFIG"], "not an image file"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(argv, message, run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.json").write_text('{"metrics": {')
    names = {"RUN": run_dir, "EMPTY": tmp_path / "empty", "BROKEN": tmp_path / "broken.json",
             "CONFIG": run_dir / "config.json"}
    argv = [str(names.get(a, a)) for a in argv] + ["--out", str(tmp_path / "r.html")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffsat: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r.html").exists()
