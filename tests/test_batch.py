import csv
import os

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly.batch import score_csv
from anomaly.data import read_csv
from anomaly.errors import InputError


@pytest.fixture()
def input_csv(test_rows, tmp_path):
    path = tmp_path / "input.csv"
    test_rows.to_csv(path, index=False)
    return path


def test_file_scores_equal_dataframe_scores_in_small_blocks(fitted_ae, input_csv, tmp_path):
    out = tmp_path / "out.csv"
    threads = torch.get_num_threads()
    summary = score_csv(fitted_ae, input_csv, out, block_size=16 << 10, progress=False)
    assert torch.get_num_threads() == threads  # blocks run one torch thread each, meanwhile
    written = pd.read_csv(out, engine="pyarrow")  # exact floats on pandas 3.0 too
    expected = fitted_ae.score(read_csv(input_csv))
    assert summary.rows == len(expected) and summary.flagged == expected["is_anomaly"].sum()
    assert np.array_equal(written["anomaly_score"].astype(np.float32), expected["anomaly_score"])
    assert np.array_equal(written["p_value"], expected["p_value"])
    assert (written["is_anomaly"] == expected["is_anomaly"]).all()
    assert (written["top_features"] == expected["top_features"]).all()


def test_every_input_column_is_kept_verbatim(fitted_ae, input_csv, tmp_path):
    out = tmp_path / "out.csv"
    score_csv(fitted_ae, input_csv, out, progress=False)
    with open(input_csv, newline="") as a, open(out, newline="") as b:
        rows_in, rows_out = list(csv.reader(a)), list(csv.reader(b))
    width = len(rows_in[0])
    assert rows_out[0] == rows_in[0] + ["anomaly_score", "is_anomaly", "p_value", "top_features"]
    assert [r[:width] for r in rows_out] == rows_in


def test_missing_value_tokens_and_quoted_text(fitted_ae, test_rows, tmp_path):
    rows = test_rows.head(20).copy()
    rows["timestamp"] = 'a, quoted "value"'
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    cpu = header.index("cpu")
    for line, token in ((1, "NA"), (2, "")):
        row = next(csv.reader([text[line]]))
        row[cpu] = token
        text[line] = ",".join(
            f'"{v}"' if "," in v or '"' in v else v for v in [x.replace('"', '""') for x in row]
        )
    path.write_text("\n".join(text) + "\n")
    out = tmp_path / "out.csv"
    score_csv(fitted_ae, path, out, progress=False)
    written = pd.read_csv(out, keep_default_na=False)
    assert written["cpu"].iloc[:2].tolist() == ["NA", ""]
    assert (written["timestamp"] == 'a, quoted "value"').all()
    expected = fitted_ae.score(read_csv(path))
    assert np.array_equal(written["anomaly_score"].astype(np.float32), expected["anomaly_score"])


def test_bad_value_late_in_the_file_names_column_and_line_and_writes_nothing(
    fitted_ae, test_rows, tmp_path
):
    rows = test_rows.astype({"memory": object})
    rows.loc[rows.index[1500], "memory"] = "12,5"
    rows.loc[rows.index[1900], "memory"] = "n/a?"  # a later block, scored at the same time
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False)
    out = tmp_path / "new" / "out.csv"  # the folder too is made for the run, and removed
    with pytest.raises(
        InputError, match=r"column 'memory', row 1500: '12,5' is not a number .*line 1502"
    ) as info:
        score_csv(fitted_ae, path, out, block_size=16 << 10, progress=False)
    assert (info.value.column, info.value.row) == ("memory", 1500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no output, temp or folder


def test_quoted_line_breaks_span_blocks_and_errors_name_the_line_they_start(
    fitted_ae, test_rows, tmp_path
):
    """A value holding a line break, in rows across many blocks; and blank lines: the error's
    line is where its row starts in an editor, and read_csv names the same one."""
    rows = test_rows.head(1200).assign(note="first line\nsecond line")
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False)
    score_csv(fitted_ae, path, tmp_path / "out.csv", block_size=16 << 10, progress=False)
    written = pd.read_csv(tmp_path / "out.csv")
    assert len(written) == 1200 and (written["note"] == "first line\nsecond line").all()
    expected = fitted_ae.score(read_csv(path))
    assert np.array_equal(written["anomaly_score"].astype(np.float32), expected["anomaly_score"])

    rows = rows.astype({"memory": object})
    rows.loc[rows.index[1000], "memory"] = "n/a?"
    header, body = rows.to_csv(index=False).split("\n", 1)
    path.write_text(f"{header}\n\n\n{body}")  # and 2 blank lines
    line = 1 + 2 + 2 * 1000 + 1  # the header; blank lines; two lines a row before row 1000
    with pytest.raises(InputError, match=rf"row 1000: 'n/a\?' .*\(line {line} of the file\)"):
        score_csv(fitted_ae, path, tmp_path / "out.csv", block_size=16 << 10, progress=False)
    with pytest.raises(InputError, match=rf"row 1000: .*\(line {line} of the file\)"):
        read_csv(path, schema=fitted_ae.schema_)


@pytest.mark.parametrize("out", ["out.csv", "new/deeper/out.csv", "a/../kept/out.csv"])
def test_failed_run_leaves_the_folders_as_they_were(
    fitted_ae, test_rows, tmp_path, monkeypatch, out
):
    """Relative paths; folders made for the output go, an existing empty one stays."""
    rows = test_rows.astype({"memory": object})
    rows.loc[rows.index[1900], "memory"] = "n/a?"
    rows.to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "kept").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="column 'memory', row 1900"):
        score_csv(fitted_ae, "in.csv", out, block_size=16 << 10, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "kept"]
    assert not any((tmp_path / "kept").iterdir())


def test_failed_run_leaves_an_existing_output_untouched(fitted_ae, test_rows, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    path = tmp_path / "in.csv"
    test_rows.drop(columns=["errors"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="missing column 'errors'"):
        score_csv(fitted_ae, path, out, progress=False)
    assert out.read_text() == "previous results\n"


def test_output_is_a_file_made_as_any_other(fitted_ae, input_csv, tmp_path):
    with pytest.raises(InputError, match="is a folder; give the output a file name"):
        score_csv(fitted_ae, input_csv, tmp_path, progress=False)
    previous = os.umask(0o027)
    try:
        score_csv(fitted_ae, input_csv, tmp_path / "out.csv", progress=False)
    finally:
        os.umask(previous)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o640  # not a temp file's 0o600


def test_empty_and_header_only_files(fitted_ae, test_rows, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        score_csv(fitted_ae, empty, tmp_path / "out.csv", progress=False)
    header = tmp_path / "header.csv"
    header.write_text(",".join(test_rows.columns) + "\n")
    summary = score_csv(fitted_ae, header, tmp_path / "out.csv", progress=False)
    assert summary.rows == 0
    assert (tmp_path / "out.csv").read_text().strip().endswith("p_value,top_features")


def test_a_byte_order_mark_is_not_part_of_the_first_column(fitted_ae, test_rows, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + test_rows.head(30).to_csv(index=False).encode())
    out = tmp_path / "out.csv"
    score_csv(fitted_ae, path, out, progress=False)
    written = pd.read_csv(out)
    assert written.columns[0] == "host_id"
    expected = fitted_ae.score(read_csv(path))
    assert np.array_equal(written["anomaly_score"].astype(np.float32), expected["anomaly_score"])


@pytest.fixture(scope="module")
def coded():
    """A small model whose categorical levels look like numbers ("7", "1.0"): the values on
    which a reader that infers types and one that reads text disagree."""
    from anomaly import Detector

    rng = np.random.default_rng(0)
    n = 120
    train = pd.DataFrame(
        {
            "id": np.arange(n),
            "x": rng.normal(size=n),
            "b": rng.random(n) < 0.5,
            "c": rng.choice(["7", "1", "a"], n),
            "d": rng.choice(["1.0", "2", "x"], n),
        }
    )
    return Detector(exclude=["id"], hidden=(4,), latent=2, epochs=1, seed=0).fit(train)


# Columns c and d hold only numbers, which an inferring reader reads as such: "007", " 7",
# "7 " and "1.00" would then match the levels "7" and "1.0", and "1.0" would match "1", as text
# they do not. And spellings of numbers, booleans and gaps.
TRICKY = (
    "id,x,b,c,d\n"
    "1, 1.5,true,007,1.00\n"
    "2,+.5, TRUE, 7,1\n"
    "3,1e1,yes,7 ,1.0\n"
    "4,NA,N,1.0,2\n"
    "5,,1.0,1,\n"
    '6,"-2",,"7",NA\n'
    "7,nan,NA,,2\n"
)


def test_read_with_the_schema_scores_as_the_batch_scorer(coded, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(TRICKY)
    score_csv(coded, path, tmp_path / "out.csv", progress=False)
    written = pd.read_csv(tmp_path / "out.csv")
    frame = read_csv(path, schema=coded.schema_)
    expected = coded.score(frame)
    assert np.array_equal(written["anomaly_score"].astype(np.float32), expected["anomaly_score"])
    assert (written["top_features"] == expected["top_features"]).all()
    assert frame["id"].dtype == np.int64  # a column the model does not read: inferred
    assert frame["c"].tolist()[:4] == ["007", " 7", "7 ", "1.0"]  # text, as written
    inferred = coded.score(read_csv(path))  # without the schema: c and d read as numbers
    assert not np.array_equal(inferred["anomaly_score"], expected["anomaly_score"])


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("b", ["true", "+1"]),  # numbers pandas reads as 1, not spellings of true
        ("b", ["0", "1.00"]),
        ("b", ["1", "01"]),
        ("x", ["True", "False"]),  # a numeric column pandas reads as booleans
    ],
)
def test_read_with_the_schema_refuses_what_the_batch_scorer_refuses(
    coded, tmp_path, column, values
):
    rows = pd.DataFrame({"id": [1, 2], "x": ["1", "2"], "b": ["true", "false"], "c": "7"})
    rows["d"] = "2"
    rows[column] = values
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False)
    bad = 1 if column == "b" else 0
    with pytest.raises(InputError) as batch:
        score_csv(coded, path, tmp_path / "out.csv", progress=False)
    with pytest.raises(InputError) as read:
        read_csv(path, schema=coded.schema_)
    assert (batch.value.column, batch.value.row) == (read.value.column, read.value.row)
    assert (read.value.column, read.value.row) == (column, bad)
    assert str(batch.value).startswith(str(read.value))  # the batch scorer adds the line


def test_a_short_row_is_named_by_row_and_line(fitted_ae, test_rows, tmp_path):
    """Arrow refuses a row with fields left off: the error says which row, on which line
    (read_csv's own check: tests/test_tabular.py)."""
    lines = test_rows.head(1500).to_csv(index=False).splitlines()
    lines[1201] = lines[1201].rsplit(",", 1)[0]  # data row 1200 loses its last field
    path = tmp_path / "in.csv"
    path.write_text("\n".join(lines) + "\n")
    width = len(test_rows.columns)
    message = rf"row 1200 has {width - 1} fields, the header {width} names; .* \(line 1202 of"
    with pytest.raises(InputError, match=message) as info:
        score_csv(fitted_ae, path, tmp_path / "out.csv", block_size=16 << 10, progress=False)
    assert info.value.row == 1200
    assert not (tmp_path / "out.csv").exists()


def test_a_header_with_an_empty_name_is_refused_as_at_training(fitted_ae, test_rows, tmp_path):
    """A spreadsheet's trailing comma leaves the last name empty."""
    lines = test_rows.head(3).to_csv(index=False).splitlines()
    path = tmp_path / "in.csv"
    path.write_text("\n".join([lines[0] + ","] + [line + ",1" for line in lines[1:]]) + "\n")
    message = f"column {len(test_rows.columns) + 1} of the header has no name"
    with pytest.raises(InputError, match=message):
        score_csv(fitted_ae, path, tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()


def test_a_symlink_is_written_through_and_a_pipe_is_refused(fitted_ae, input_csv, tmp_path):
    (tmp_path / "real.csv").write_text("old")
    (tmp_path / "link.csv").symlink_to("real.csv")
    score_csv(fitted_ae, input_csv, tmp_path / "link.csv", progress=False)
    assert (tmp_path / "link.csv").is_symlink()  # the link stays; its target has the scores
    assert pd.read_csv(tmp_path / "real.csv").shape[0] == pd.read_csv(input_csv).shape[0]
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="is not a regular file"):
        score_csv(fitted_ae, input_csv, tmp_path / "pipe", progress=False)
    assert not (tmp_path / "pipe").is_file()  # still the pipe
