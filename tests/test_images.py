"""Images: loading, the convolutional models, ImageDetector and anomaly-map overlays.

Synthetic 16x16 images: normal ones are horizontal stripes at a random phase; anomalies are
vertical stripes, or a normal image with a square patch inverted (a local defect).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomaly.batch import score_images
from anomaly.calibration import Calibrator
from anomaly.data.images import ImageNormalizer, b64decode_text, decode_image, load_images
from anomaly.errors import InputError, NotFittedError
from anomaly.image import RESULT_COLUMNS, ImageDetector
from anomaly.image_maps import check_maps_dir, save_overlays
from anomaly.models.conv2d import ConvAE2d, ConvVAE2d, default_hidden
from anomaly.persistence import META_FILE
from anomaly.preprocessing import STANDARDISED_LIMIT
from anomaly.pyfunc import with_scores
from anomaly.scoring import score_batch, training_loss

SIZE = 16
DEFECT = (slice(3, 7), slice(9, 13))  # rows 3-6, columns 9-12
FAST = {"size": SIZE, "hidden": (8, 16), "latent": 8, "epochs": 40, "patience": 40}


def stripes(n: int, seed: int, vertical: bool = False) -> np.ndarray:
    """(n, 1, 16, 16) float32 stripes of period 8 at random phases, with a little noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    coord = cols if vertical else rows
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    images = 0.5 + 0.4 * np.sin(coord[None] * (2 * np.pi / 8) + phase)
    images += 0.02 * rng.standard_normal(images.shape)
    return np.clip(images, 0, 1).astype(np.float32)[:, None]


def with_defect(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    out[:, :, DEFECT[0], DEFECT[1]] = 1.0 - out[:, :, DEFECT[0], DEFECT[1]]
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: fastest for these tiny convolutions, and many times faster than two
    on a machine whose cores are busy with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def normal_images() -> np.ndarray:
    return stripes(300, seed=0)


@pytest.fixture(scope="module", params=["ae", "vae"])
def fitted(request, one_thread, normal_images) -> ImageDetector:
    return ImageDetector(model=request.param, device="cpu", **FAST).fit(normal_images)


# ---------------------------------------------------------------------- loading
def _png(path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_load_folder_of_png_jpeg_and_arrays(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    _png(tmp_path / "a_grey.png", grey)
    _png(tmp_path / "b_rgb.png", rgb)
    Image.fromarray(rgb).save(tmp_path / "c_photo.JPG", quality=95)
    np.save(tmp_path / "d_stack.npy", rng.random((2, 12, 10)).astype(np.float32))
    np.savez(tmp_path / "e_arch.npz", one=grey, many=np.stack([rgb, rgb, rgb]))
    (tmp_path / "notes.txt").write_text("not an image")

    images, names = load_images(tmp_path, size=(12, 10), channels=1)
    assert images.shape == (9, 1, 12, 10) and images.dtype == np.float32
    assert names == [  # files by name, an archive's arrays in its order; other files skipped
        str(tmp_path / "a_grey.png"),
        str(tmp_path / "b_rgb.png"),
        str(tmp_path / "c_photo.JPG"),
        f"{tmp_path / 'd_stack.npy'}[0]",
        f"{tmp_path / 'd_stack.npy'}[1]",
        f"{tmp_path / 'e_arch.npz'}:one",
        f"{tmp_path / 'e_arch.npz'}:many[0]",
        f"{tmp_path / 'e_arch.npz'}:many[1]",
        f"{tmp_path / 'e_arch.npz'}:many[2]",
    ]
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images[0, 0], grey / np.float32(255))

    rgb_images, _ = load_images(tmp_path, size=8, channels=3)
    assert rgb_images.shape == (9, 3, 8, 8)
    np.testing.assert_array_equal(rgb_images[0, 0], rgb_images[0, 1])  # grey made RGB


def test_file_and_array_of_the_same_pixels_load_identically(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    _png(tmp_path / "x.png", rgb)
    np.save(tmp_path / "x.npy", rgb)
    for channels in (1, 3):
        from_png, _ = load_images(tmp_path / "x.png", size=(8, 16), channels=channels)
        from_npy, _ = load_images(tmp_path / "x.npy", size=(8, 16), channels=channels)
        from_memory, names = load_images(rgb, size=(8, 16), channels=channels)
        decoded = decode_image((tmp_path / "x.png").read_bytes(), (8, 16), channels)
        np.testing.assert_array_equal(from_png, from_npy)
        np.testing.assert_array_equal(from_png, from_memory)
        np.testing.assert_array_equal(from_png[0], decoded)
        assert names == ["0"]


@pytest.mark.parametrize(
    ("shape", "count"),
    [((16, 16), 1), ((16, 16, 3), 1), ((5, 16, 16), 5), ((5, 16, 16, 1), 5), ((5, 1, 16, 16), 5)],
)
def test_array_shapes(shape, count):
    images, names = load_images(np.zeros(shape, dtype=np.float32), size=16, channels=1)
    assert images.shape == (count, 1, 16, 16)
    assert names == [str(i) for i in range(count)]


def test_loaded_array_is_not_copied_again():
    images = stripes(4, seed=0)
    again, _ = load_images(images, size=SIZE, channels=1)
    assert again is images


def test_list_of_paths_keeps_its_order(tmp_path):
    for name in ("b", "a"):
        _png(tmp_path / f"{name}.png", np.full((4, 4), 255 if name == "a" else 0, np.uint8))
    images, names = load_images([tmp_path / "b.png", tmp_path / "a.png"], size=4)
    assert names == [str(tmp_path / "b.png"), str(tmp_path / "a.png")]
    assert images[0].max() == 0.0 and images[1].min() == 1.0


def test_errors_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match=r"broken\.png: not a readable PNG or JPEG"):
        load_images(tmp_path, size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: no PNG, JPEG, \.npy or \.npz files"):
        load_images(empty, size=8)
    np.save(tmp_path / "odd.npy", np.zeros((2, 3, 4, 5, 6), np.float32))
    with pytest.raises(InputError, match=r"odd\.npy: an array of shape \(2, 3, 4, 5, 6\)"):
        load_images(tmp_path / "odd.npy", size=8)
    np.savez(tmp_path / "ints.npz", pixels=np.zeros((4, 4), np.int64))
    with pytest.raises(InputError, match=r"ints\.npz:pixels: arrays of int64 are not read"):
        load_images(tmp_path / "ints.npz", size=8)
    (tmp_path / "bad.npy").write_bytes(b"nonsense")
    with pytest.raises(InputError, match=r"bad\.npy: not a readable numpy"):
        load_images(tmp_path / "bad.npy", size=8)
    with pytest.raises(InputError, match=r"missing\.png: no such file"):
        load_images(tmp_path / "missing.png", size=8)
    nan = np.zeros((3, 5, 5), np.float32)
    nan[2, 1, 1] = np.nan
    with pytest.raises(InputError, match="image 2 holds non-finite values"):
        load_images(nan, size=4)
    with pytest.raises(InputError, match=r"upload\.jpg: not a readable PNG or JPEG") as caught:
        decode_image(b"GIF89a...", 8, name="upload.jpg")
    assert str(caught.value).endswith("image (no PNG or JPEG header)")  # no <_io.BytesIO ...>


def test_skipped_files_are_a_warning_naming_some(tmp_path, caplog):
    _png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    for name in ("b.tif", "c.webp", "d.bmp", "e.gif", "f.txt", "g.tiff"):
        (tmp_path / name).write_bytes(b"not read")
    with caplog.at_level(logging.WARNING, logger="anomaly.data.images"):
        images, _ = load_images(tmp_path, size=4)
    assert len(images) == 1
    [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert record.levelno == logging.WARNING  # shown by the CLI, which logs warnings only
    assert "skipped 6 entries" in record.getMessage()
    assert record.getMessage().endswith(": b.tif, c.webp, d.bmp, e.gif, f.txt, ...")
    # a subfolder and a link to nothing are said to be skipped too
    for name in ("b.tif", "c.webp", "d.bmp", "e.gif", "f.txt", "g.tiff"):
        (tmp_path / name).unlink()
    (tmp_path / "more").mkdir()
    _png(tmp_path / "more" / "nested.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anomaly.data.images"):
        images, _ = load_images(tmp_path, size=4)
    assert len(images) == 1
    assert "skipped 2 entries" in caplog.text and caplog.text.rstrip().endswith(": gone.png, more/")


def test_wrapped_base64_decodes():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), np.uint8)).save(
        buffer, format="PNG"
    )
    data = buffer.getvalue()
    wrapped = base64.encodebytes(data).decode()  # lines of 76 characters
    assert "\n" in wrapped.strip()
    assert b64decode_text(wrapped) == data
    assert b64decode_text(" " + wrapped.replace("\n", "\r\n")) == data
    for text in ("not base64!", "aGVsbG8=\u00e9"):
        with pytest.raises(binascii.Error):
            b64decode_text(text)


def test_oversized_images_are_refused_before_decoding(monkeypatch):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(buffer, format="PNG")
    monkeypatch.setattr("anomaly.data.images.MAX_PIXELS", 500)
    with pytest.raises(InputError, match=r"big\.png: 30x20 pixels is more than the 500"):
        decode_image(buffer.getvalue(), 8, name="big.png")


# ---------------------------------------------------------------------- normalisation
def test_normalizer_is_per_channel_and_round_trips():
    images = np.random.default_rng(0).random((6, 3, 4, 4)).astype(np.float32)
    images[:, 2] = 0.5  # a constant channel keeps a spread of 1
    norm = ImageNormalizer().fit(images)
    out = norm.transform(images)
    np.testing.assert_allclose(out[:, :2].mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, :2].std(axis=(0, 2, 3)), 1, atol=1e-4)
    assert norm.std_[2] == 1.0 and np.all(out[:, 2] == 0)
    again = ImageNormalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again.transform(images), out)


def test_normalizer_clips_wild_values_without_overflow():
    norm = ImageNormalizer().fit(np.random.default_rng(0).random((4, 1, 4, 4)).astype(np.float32))
    images = np.full((2, 1, 4, 4), 0.5, np.float32)
    images[0, 0, 1, 1], images[1, 0, 2, 2] = 3e38, -3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow on the way
        out = norm.transform(images)
    assert out[0, 0, 1, 1] == STANDARDISED_LIMIT and out[1, 0, 2, 2] == -STANDARDISED_LIMIT
    assert np.isfinite(out).all()


def test_normalizer_is_fitted_on_training_images_only(normal_images):
    calibration = np.ones((20, 1, SIZE, SIZE), np.float32)  # far from the training images
    det = ImageDetector(
        model="ae", validation_fraction=0.0, device="cpu", **{**FAST, "epochs": 1}
    ).fit(normal_images, calibration_data=calibration)
    assert det.training_summary_["n_train"] == len(normal_images)
    np.testing.assert_allclose(det.normalizer_.mean_, [normal_images.mean(dtype=np.float64)])
    np.testing.assert_allclose(det.normalizer_.std_, [normal_images.std(dtype=np.float64)])


# ---------------------------------------------------------------------- models
def test_models_meet_the_scoring_contract():
    x = torch.randn(5, 3, 16, 16)
    vae = ConvVAE2d((3, 16, 16), (8, 16), latent=6, n_samples=3, seed=1)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 6)
    assert vae.decode(torch.randn(5, 3, 6)).shape == (5, 3, 3, 16, 16)
    assert vae.eps.shape == (3, 6)
    torch.testing.assert_close(vae.eps, ConvVAE2d((3, 16, 16), (8, 16), 6, n_samples=3, seed=1).eps)
    for method in ("reconstruction", "elbo", "iwae"):
        score, parts = score_batch(vae.eval(), x, method)
        assert score.shape == (5,) and parts.shape == x.shape
    ae = ConvAE2d((3, 16, 16), (8, 16), latent=6)
    assert ae(x).shape == x.shape
    assert torch.isfinite(training_loss(ae, x, x)) and torch.isfinite(training_loss(vae, x, x))
    assert default_hidden(8, 8) == (32,)
    assert default_hidden(32, 32) == (32, 64, 128)


# ---------------------------------------------------------------------- detector
def test_detector_separates_anomalies(fitted):
    normal, other = stripes(100, seed=1), stripes(50, seed=2, vertical=True)
    defect = with_defect(stripes(50, seed=3))
    scores = fitted.score_samples(np.concatenate([normal, other, defect]))
    labels = np.r_[np.zeros(100), np.ones(100)]
    assert roc_auc_score(labels, scores) > 0.9
    assert roc_auc_score(np.r_[np.zeros(100), np.ones(50)], scores[:150]) > 0.9


def test_score_frame_and_threshold(fitted, tmp_path):
    images = np.concatenate([stripes(5, seed=4), stripes(5, seed=5, vertical=True)])
    frame = fitted.score(images)
    assert tuple(frame.columns) == RESULT_COLUMNS
    assert frame["path"].tolist() == [str(i) for i in range(10)]
    assert frame["anomaly_score"].dtype == np.float32
    np.testing.assert_array_equal(frame["is_anomaly"], frame["anomaly_score"] > fitted.threshold_)
    assert frame["p_value"].between(0, 1).all()
    assert frame["is_anomaly"][5:].all()

    for i, image in enumerate((images[:2, 0] * 255).round().astype(np.uint8)):
        _png(tmp_path / f"img{i}.png", image)
    from_folder = fitted.score(tmp_path)
    assert from_folder["path"].tolist() == [str(tmp_path / "img0.png"), str(tmp_path / "img1.png")]
    renamed = fitted.score(images[:2], names=["first", "second"])
    assert renamed["path"].tolist() == ["first", "second"]
    with pytest.raises(InputError, match="1 names given for 2 images"):
        fitted.score(images[:2], names=["one"])


def test_wild_float_pixels_score_finitely_and_are_flagged(fitted):
    images = stripes(2, seed=13)
    images[0, 0, 5, 5], images[1, 0, 9, 2] = 3e38, -3e38  # one wild pixel each
    resized = np.full((1, 20, 20), 0.5, np.float32)
    resized[0, 7, 7] = 3e38  # through the bilinear resize too
    doubles = images.astype(np.float64)
    doubles[0, 0, 5, 5] = 1e300  # finite, but not in float32
    for wild in (images, resized, doubles):
        frame = fitted.score(wild)
        assert np.isfinite(frame["anomaly_score"]).all()
        assert frame["is_anomaly"].all()
        smallest = 1 / (len(fitted.calibrator_.scores_) + 1)
        np.testing.assert_allclose(frame["p_value"], smallest)


def test_a_nan_score_gets_no_p_value():
    calibrator = Calibrator(target_fpr=0.1).fit(np.arange(1.0, 21.0))
    p = calibrator.p_values(np.array([np.nan, 100.0, 0.0], np.float32))
    assert np.isnan(p[0]) and not calibrator.flag(np.array([np.nan]))[0]
    np.testing.assert_allclose(p[1:], [1 / 21, 1.0])


def test_pyfunc_takes_wrapped_base64(fitted):
    pixels = (stripes(1, seed=14)[0, 0] * 255).round().astype(np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, format="PNG")
    encoded = [base64.b64encode(data.getvalue()), base64.encodebytes(data.getvalue())]
    frame = pd.DataFrame({"image": [text.decode() for text in encoded]})  # one line, or wrapped
    out = with_scores(fitted, frame)
    assert out["anomaly_score"][0] == out["anomaly_score"][1]


def test_denoising_trains(tmp_path):
    det = ImageDetector(model="vae", denoise=0.3, device="cpu", **{**FAST, "epochs": 3})
    scores = det.fit(stripes(60, seed=0)).score_samples(stripes(10, seed=1))
    assert det.training_summary_["epochs_run"] == 3
    assert np.isfinite(scores).all()
    # numpy numbers in the settings (a size from an array's shape) save as JSON numbers
    det.set_params(size=np.int64(SIZE), epochs=np.int64(3)).save(tmp_path / "m")
    assert ImageDetector.load(tmp_path / "m").image_size_ == (SIZE, SIZE)


def test_maps_localise_a_defect(fitted):
    images = with_defect(stripes(20, seed=6))
    frame, maps = fitted.score_with_maps(images)
    assert maps.shape == (20, SIZE, SIZE) and maps.dtype == np.float32
    np.testing.assert_array_equal(fitted.anomaly_maps(images), maps)
    np.testing.assert_array_equal(frame["anomaly_score"], fitted.score_samples(images))
    if fitted.model == "ae":  # the reconstruction error's map adds up to its score
        np.testing.assert_allclose(maps.sum(axis=(1, 2)), frame["anomaly_score"], rtol=1e-4)
    rows, cols = np.unravel_index(maps.reshape(20, -1).argmax(axis=1), (SIZE, SIZE))
    # The hottest pixel is in the defect, or next to it, for (nearly) every image.
    near = (rows >= 2) & (rows <= 7) & (cols >= 8) & (cols <= 13)
    assert near.mean() >= 0.9


def test_same_image_same_score_alone_or_in_any_batch(fitted):
    images = np.concatenate([stripes(30, seed=7), stripes(7, seed=8, vertical=True)])
    together, maps = fitted.score_with_maps(images)
    alone = np.array([fitted.score_samples(images[i : i + 1])[0] for i in range(len(images))])
    np.testing.assert_array_equal(together["anomaly_score"].to_numpy(), alone)
    big = np.concatenate([stripes(100, seed=9), images[::-1]])
    np.testing.assert_array_equal(fitted.score_samples(big)[100:], alone[::-1])
    np.testing.assert_array_equal(fitted.anomaly_maps(images[3:4])[0], maps[3])
    torch.set_num_threads(2)  # nor on the number of threads
    try:
        np.testing.assert_array_equal(fitted.score_samples(images), alone)
    finally:
        torch.set_num_threads(1)


def test_save_load_round_trip(fitted, tmp_path):
    images = np.concatenate([stripes(10, seed=10), with_defect(stripes(5, seed=11))])
    before, maps_before = fitted.score_with_maps(images)
    path = fitted.save(tmp_path / "model")
    assert '"kind": "image"' in (path / META_FILE).read_text()
    loaded = ImageDetector.load(path)
    after, maps_after = loaded.score_with_maps(images)
    assert loaded.get_params() == {**fitted.get_params(), "device": "cpu"}
    assert loaded.threshold_ == fitted.threshold_ and loaded.map_scale_ == fitted.map_scale_
    assert before.equals(after)
    np.testing.assert_array_equal(maps_before, maps_after)


def test_parameters_are_checked():
    images = stripes(40, seed=0)
    with pytest.raises(InputError, match="unknown model"):
        ImageDetector(model="gan").fit(images)
    with pytest.raises(InputError, match="score 'elbo' needs model='vae'"):
        ImageDetector(model="ae", score="elbo").fit(images)
    with pytest.raises(InputError, match=r"must be divisible by 2\*\*2"):
        ImageDetector(size=(16, 18), hidden=(4, 8)).fit(images)
    with pytest.raises(InputError, match="too small or odd"):
        ImageDetector(size=6).fit(images)
    with pytest.raises(NotFittedError):
        ImageDetector().score_samples(images)


# ---------------------------------------------------------------------- overlays
def test_overlays_are_valid_pngs(fitted, tmp_path):
    images = with_defect(stripes(3, seed=12))
    maps = fitted.anomaly_maps(images)
    names = ["dir/one.png", "other/one.png", "x.npz:key[2]"]
    written = save_overlays(images, maps, names, tmp_path / "maps", vmax=fitted.map_scale_)
    assert [p.name for p in written] == ["one-0_map.png", "one-1_map.png", "x.npz_key_2_map.png"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(p.name for p in written)
    for path in written:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (SIZE, SIZE)
    with pytest.raises(InputError, match="do not match"):
        save_overlays(images, maps[:, :8], names, tmp_path / "maps")


def test_overlay_names_never_collide(tmp_path):
    images, maps = np.zeros((4, 1, 4, 4), np.float32), np.zeros((4, 4, 4), np.float32)
    names = ["a/x.png", "b/x.jpg", "x-1.png", "X.png"]
    written = save_overlays(images, maps, names, tmp_path / "maps")
    assert [p.name for p in written] == [
        "x-0_map.png",
        "x-2_map.png",  # not x-1: that is x-1.png's own name
        "x-1_map.png",
        "X-3_map.png",  # x and X are one name on macOS and Windows
    ]
    assert len(list((tmp_path / "maps").iterdir())) == 4


def test_a_maps_path_that_is_a_file_is_refused_before_scoring(fitted, tmp_path):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "one.png", np.zeros((SIZE, SIZE), np.uint8))
    taken = tmp_path / "scores.csv"
    taken.write_text("a file")
    assert check_maps_dir(tmp_path / "new" / "maps") == tmp_path / "new" / "maps"
    with pytest.raises(InputError, match=r"scores\.csv: not a folder; anomaly maps"):
        check_maps_dir(taken)
    with pytest.raises(InputError, match=r"scores\.csv: not a folder, so the maps folder"):
        check_maps_dir(taken / "maps")
    images, maps = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32)
    with pytest.raises(InputError, match=r"scores\.csv: not a folder"):
        save_overlays(images, maps, ["one"], taken)
    out = tmp_path / "out.csv"
    with pytest.raises(InputError, match=r"scores\.csv: not a folder"):
        score_images(fitted, tmp_path / "in", out, maps_dir=taken)
    assert not out.exists()  # refused before any score was written


def test_saving_onto_a_symlinked_folder_replaces_its_target(tmp_path):
    """A `current -> v3` layout: the model is written into v3; the link stays."""
    from anomaly.persistence import load_model_dir, save_model_dir

    (tmp_path / "v3").mkdir()
    (tmp_path / "current").symlink_to("v3")
    save_model_dir(tmp_path / "current", {"kind": "test"}, {"w": torch.zeros(2)})
    assert (tmp_path / "current").is_symlink()
    assert load_model_dir(tmp_path / "v3")[0]["kind"] == "test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v3"]  # nothing stray


def test_an_image_model_refuses_a_csv_file(tmp_path):
    from anomaly.batch import score_csv

    (tmp_path / "rows.csv").write_text("a\n1\n")
    detector = ImageDetector.__new__(ImageDetector)  # the kind alone decides: no fit needed
    with pytest.raises(InputError, match="an image model scores images, not a CSV file"):
        score_csv(detector, tmp_path / "rows.csv", tmp_path / "out.csv", progress=False)


def test_evt_without_enough_calibration_images_is_refused_before_training(monkeypatch):
    import anomaly.estimator

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the settings were refused")

    monkeypatch.setattr(anomaly.estimator, "train", no_training)
    det = ImageDetector(threshold_method="evt", target_fpr=0.001, device="cpu", **FAST)
    with pytest.raises(InputError, match="needs at least 100 calibration rows, got 12"):
        det.fit(stripes(60, seed=0))
