"""Images through every scoring path: the CLI (with anomaly-map PNGs), the MLflow pyfunc,
/invocations and /v1/score/image give the detector's numbers."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from anomaly.image import ImageDetector
from anomaly.service.app import create_app
from anomaly.service.settings import Settings

SIZE = 16


def picture(rng: np.random.Generator, defect: bool = False) -> np.ndarray:
    """A soft diagonal gradient with noise; a defect is a bright 4x4 square."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    shift = rng.uniform(-0.2, 0.2)
    image = np.clip(0.5 * (x + y) + shift + 0.03 * rng.normal(size=(SIZE, SIZE)), 0, 1)
    if defect:
        r, c = rng.integers(2, SIZE - 6, size=2)
        image[r : r + 4, c : c + 4] = 1.0 - image[r : r + 4, c : c + 4]
    return (image * 255).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "normal").mkdir()
    (root / "new").mkdir()
    for i in range(300):
        Image.fromarray(picture(rng)).save(root / "normal" / f"n{i:03d}.png")
    for i in range(20):
        Image.fromarray(picture(rng)).save(root / "new" / f"ok{i:02d}.png")
        Image.fromarray(picture(rng, defect=True)).save(root / "new" / f"bad{i:02d}.png")
    return root


def anomaly_cli() -> str:
    return shutil.which("anomaly", path=str(sys.executable).rsplit("/", 1)[0])


def test_cli_trains_scores_and_draws_maps_and_every_path_agrees(folders, tmp_path):
    subprocess.run(
        [anomaly_cli(), "train", str(folders / "normal"), "--modality", "image", "--size",
         str(SIZE), "--model", "ae", "--epochs", "15", "--register", "parts",
         "--out", str(tmp_path / "model")],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [anomaly_cli(), "score", str(folders / "new"), "--model", "models:/parts@champion",
         "--out", str(tmp_path / "scores.csv"), "--maps", str(tmp_path / "maps")],
        check=True,
    )  # fmt: skip
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores.columns) == ["path", "anomaly_score", "is_anomaly", "p_value"]
    assert len(scores) == 40
    bad = scores["path"].str.contains("bad")
    assert scores.loc[bad, "anomaly_score"].min() > scores.loc[~bad, "anomaly_score"].median()
    assert scores.loc[bad, "is_anomaly"].mean() > 0.8
    flags = pd.read_csv(tmp_path / "scores.csv", dtype=str)["is_anomaly"]
    assert set(flags) == {"true", "false"}  # written as the table and series outputs are
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert len(written) == 40 and written[0] == "bad00_map.png"
    assert Image.open(tmp_path / "maps" / written[0]).size == (SIZE, SIZE)

    detector = ImageDetector.load(tmp_path / "model")
    expected = detector.score(folders / "new")
    np.testing.assert_array_equal(scores["anomaly_score"].to_numpy(np.float32),
                                  expected["anomaly_score"].to_numpy())  # fmt: skip

    # the MLflow pyfunc: a column of base64 text (or bytes), a result row per image, in order
    files = sorted((folders / "new").iterdir())
    frame = pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files]})
    model = mlflow.pyfunc.load_model("models:/parts@champion")
    out = model.predict(frame)
    assert list(out.columns) == ["anomaly_score", "is_anomaly", "p_value"]
    by_name = expected.assign(name=[p.rsplit("/", 1)[-1] for p in expected["path"]])
    in_file_order = by_name.set_index("name").loc[[f.name for f in files]]
    np.testing.assert_array_equal(out["anomaly_score"], in_file_order["anomaly_score"])
    assert (out["is_anomaly"].to_numpy() == in_file_order["is_anomaly"].to_numpy()).all()

    # the service: multipart uploads, maps on request, MLflow's protocol, the wrong endpoint
    settings = Settings(model_uri=str(tmp_path / "model"), reload_interval=0)
    with TestClient(create_app(settings)) as client:
        upload = [("files", (f.name, f.read_bytes(), "image/png")) for f in files[:3]]
        answer = client.post("/v1/score/image?maps=true", files=upload)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["name"] for r in results] == [f.name for f in files[:3]]
        expected_first = by_name.set_index("name").loc[files[0].name, "anomaly_score"]
        assert np.float32(results[0]["anomaly_score"]) == expected_first
        overlay = Image.open(io.BytesIO(base64.b64decode(results[0]["map_png"])))
        assert overlay.size == (SIZE, SIZE) and overlay.mode == "RGB"

        answer = client.post(
            "/invocations", json={"dataframe_records": frame.head(2).to_dict("records")}
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 2

        answer = client.post(
            "/v1/score/image", files=[("files", ("x.png", b"not a png", "image/png"))]
        )
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"][:3] == ["body", "files", 0]
        answer = client.post("/v1/score", json={"records": [{"x": 1}]})
        assert answer.status_code == 409 and "/v1/score/image" in answer.text
        info = client.get("/v1/model").json()
        assert info["kind"] == "image" and info["schema"] == {"size": [SIZE, SIZE], "channels": 1}
