import io
import logging
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from anomaly.data.tabular import BOOLEAN, CATEGORICAL, NUMERIC, TabularSchema, read_csv
from anomaly.errors import InputError


def _frame():
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "x": [1.0, np.nan, 3.0, 4.0],
            "color": ["red", "blue", "red", None],
            "ok": [True, False, True, True],
            "yes": ["yes", "no", "no", None],
            "empty": [np.nan] * 4,
        }
    )


def test_infer_kinds_categories_and_ignored():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {"x": NUMERIC, "color": CATEGORICAL, "ok": BOOLEAN, "yes": BOOLEAN}
    assert schema.columns[1].categories == ("red", "blue")  # most frequent first
    assert schema.ignored == {"id": "excluded", "empty": "all values missing"}


def test_schema_round_trips_through_dict():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    again = TabularSchema.from_dict(schema.to_dict())
    assert again == schema
    assert again.fingerprint() == schema.fingerprint()


def test_category_order_does_not_depend_on_row_order():
    frame = pd.DataFrame({"c": ["b", "a", "b", "a", "c"]})
    reordered = frame.iloc[::-1].reset_index(drop=True)
    first = TabularSchema.infer(frame).columns[0].categories
    assert first == TabularSchema.infer(reordered).columns[0].categories == ("a", "b", "c")


def test_max_categories_keeps_most_frequent():
    frame = pd.DataFrame({"c": ["a"] * 5 + ["b"] * 3 + ["c"]})
    schema = TabularSchema.infer(frame, max_categories=2)
    assert schema.columns[0].categories == ("a", "b")


def test_excluding_unknown_column_is_refused():
    with pytest.raises(InputError, match="cannot exclude column 'nope'"):
        TabularSchema.infer(_frame(), exclude=["nope"])


def test_timestamp_column_must_be_excluded():
    frame = pd.DataFrame({"t": pd.date_range("2026-01-01", periods=3), "x": [1.0, 2.0, 3.0]})
    with pytest.raises(InputError, match="exclude it"):
        TabularSchema.infer(frame)


def test_a_read_column_cannot_have_the_top_features_separator():
    frame = pd.DataFrame({"cpu;load": [1.0, 2.0], "x": [1.0, 3.0], "a;b": ["u", "v"]})
    with pytest.raises(InputError, match="column 'cpu;load': a column the model reads cannot"):
        TabularSchema.infer(frame, exclude=["a;b"])
    assert TabularSchema.infer(frame, exclude=["a;b", "cpu;load"]).names == ["x"]


def test_no_rows_and_no_columns_are_refused():
    with pytest.raises(InputError, match="no rows"):
        TabularSchema.infer(pd.DataFrame({"x": []}))
    with pytest.raises(InputError, match="no usable columns"):
        TabularSchema.infer(pd.DataFrame({"x": [np.nan, np.nan]}))


def test_coerce_codes_unseen_and_missing_categories_as_minus_one():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    out = schema.coerce(pd.DataFrame({"x": [1], "color": ["green"], "ok": [True], "yes": ["y"]}))
    assert out["color"].tolist() == [-1]
    out = schema.coerce(
        pd.DataFrame({"x": [1, 2], "color": [None, "blue"], "ok": [1, 0], "yes": ["NO", "T"]})
    )
    assert out["color"].tolist() == [-1, 1]
    assert out["ok"].tolist() == [1.0, 0.0]
    assert out["yes"].tolist() == [0.0, 1.0]


def test_coerce_missing_column_names_it():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    with pytest.raises(InputError, match="missing column 'x'") as info:
        schema.coerce(pd.DataFrame({"color": ["red"], "ok": [True], "yes": ["y"]}))
    assert info.value.column == "x"


def test_coerce_non_numeric_value_names_column_and_first_bad_row():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    frame = pd.DataFrame(
        {"x": ["1", "2.5", "abc", "zz"], "color": ["red"] * 4, "ok": [True] * 4, "yes": ["y"] * 4}
    )
    with pytest.raises(InputError, match=r"column 'x', row 12: 'abc' is not a number") as info:
        schema.coerce(frame, row_offset=10)
    assert (info.value.column, info.value.row) == ("x", 12)


def test_coerce_refuses_infinity_and_bad_booleans():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    base = {"x": [1.0, 2.0], "color": ["red"] * 2, "ok": [True] * 2, "yes": ["y"] * 2}
    with pytest.raises(InputError, match=r"column 'x', row 1: infinite"):
        schema.coerce(pd.DataFrame({**base, "x": [1.0, np.inf]}))
    with pytest.raises(InputError, match=r"column 'ok', row 0: 'maybe' is not true or false"):
        schema.coerce(pd.DataFrame({**base, "ok": ["maybe", "true"]}))


def test_coerce_refuses_what_no_column_can_hold():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    base = {"x": [1.0, 2.0], "color": ["red"] * 2, "ok": [True] * 2, "yes": ["y"] * 2}
    too_large = r"column 'x', row 1: infinite values are not allowed, nor numbers beyond"
    with pytest.raises(InputError, match=too_large):
        schema.coerce(pd.DataFrame({**base, "x": pd.Series([1, 10**400], dtype=object)}))
    with pytest.raises(InputError, match=r"column 'color', row 1: \{'k': 1\} is not a level"):
        schema.coerce(pd.DataFrame({**base, "color": ["red", {"k": 1}]}))
    records = [{"x": 1, "color": "red", "ok": True, "yes": "y"}] * 2
    with pytest.raises(InputError, match=r"column 'color', row 1: \[1\] is not a level"):
        schema.coerce_records([records[0], {**records[1], "color": [1]}])
    with pytest.raises(InputError, match=too_large):
        schema.coerce_records([records[0], {**records[1], "x": -(10**400)}])
    twice = pd.concat([pd.DataFrame(base), pd.DataFrame({"x": [3.0, 4.0]})], axis=1)
    with pytest.raises(InputError, match="column 'x' appears twice"):
        schema.coerce(twice)


def test_a_level_read_as_a_number_is_the_same_level_beside_a_gap():
    schema = TabularSchema.infer(pd.DataFrame({"code": ["x", "2", "1", "1.5"], "v": [1.0] * 4}))
    alone = schema.coerce(pd.DataFrame({"code": [1, 2], "v": [0.0, 0.0]}))["code"]
    beside = schema.coerce(pd.DataFrame({"code": [1.0, 2.0, np.nan, 1.5], "v": [0.0] * 4}))
    assert alone.tolist() == beside["code"][:2].tolist() == [0, 2]  # levels: 1, 1.5, 2, x
    assert beside["code"][2:].tolist() == [-1, 1]
    records = [{"code": 1, "v": 0.0}, {"code": "2", "v": 0.0}, {"code": 1.5, "v": 0.0}]
    assert schema.coerce_records(records)["code"].tolist() == [0, 2, 1]


def test_a_level_reads_alike_from_every_dtype_and_any_index():
    """Levels that look like numbers: the same codes from floats with a gap, a category dtype
    of floats, Arrow's doubles, and under an index that repeats labels (pd.concat's)."""
    schema = TabularSchema.infer(pd.DataFrame({"code": ["1", "2", "1.5", "x"], "v": [1.0] * 4}))
    floats = pd.DataFrame({"code": [1.0, 2.0, np.nan, 1.5], "v": [0.0] * 4})
    expected = schema.coerce(floats)["code"].tolist()
    assert expected == [0, 2, -1, 1]  # levels: 1, 1.5, 2, x
    for code in (
        floats["code"].astype("category"),
        floats["code"].astype(pd.ArrowDtype(pa.float64())),
        floats["code"].astype("Float64"),
    ):
        assert schema.coerce(floats.assign(code=code))["code"].tolist() == expected, code.dtype
    repeated = floats.set_axis([0, 1, 0, 1])
    assert schema.coerce(repeated)["code"].tolist() == expected
    # a number beside text (JSON's 2.0 is its 2), whatever the other rows hold
    mixed = pd.DataFrame({"code": pd.Series([1.0, "x", None, 1.5, 2.0], dtype=object)})
    assert schema.coerce(mixed.assign(v=0.0))["code"].tolist() == [0, 3, -1, 1, 2]
    records = [{"code": 2.0, "v": 0.0}, {"code": "x", "v": 0.0}]
    assert schema.coerce_records(records)["code"].tolist() == [2, 3]
    nested = pd.Series(["x", "x", "x", (1, 2)], dtype="category")  # a tuple: hashable
    with pytest.raises(InputError, match=r"column 'code', row 13: \(1, 2\) is not a level"):
        schema.coerce(pd.DataFrame({"code": nested, "v": [0.0] * 4}), row_offset=10)
    words = pd.Series(["x", "1", None, "y"], dtype="category")  # unused and unseen levels
    coded = schema.coerce(pd.DataFrame({"code": words, "v": [0.0] * 4}))["code"]
    assert coded.tolist() == [3, 0, -1, -1]


def test_numbers_held_as_objects_are_numbers_and_times_are_refused():
    import datetime
    import decimal

    amounts = [decimal.Decimal("100.25"), decimal.Decimal("99.50"), None, decimal.Decimal("101")]
    frame = pd.DataFrame({"amount": amounts, "n": pd.Series([1, 2.5, 3, 4], dtype=object)})
    schema = TabularSchema.infer(frame)  # as pd.read_sql gives a NUMERIC column
    assert [c.kind for c in schema.columns] == [NUMERIC, NUMERIC]
    assert schema.coerce(frame)["amount"][[0, 3]].tolist() == [100.25, 101.0]
    times = {
        "durations": pd.to_timedelta([1, 2, 3], unit="s"),
        "dates as objects": [datetime.date(2026, 1, d) for d in (1, 2, 3)],
        "Arrow durations": pd.Series([1, 2, 3]).astype(pd.ArrowDtype(pa.duration("s"))),
        "Arrow times": pd.Series([1, 2, 3]).astype(pd.ArrowDtype(pa.time64("us"))),
    }
    for what, values in times.items():
        with pytest.raises(InputError, match="'t' holds dates, times or durations; exclude"):
            TabularSchema.infer(pd.DataFrame({"t": values, "x": [1.0, 2.0, 3.0]}))
            pytest.fail(what)
        # given for a numeric column when scoring: refused, naming the row, whichever dtype
        given = pd.DataFrame({"amount": pd.Series(values), "n": [1.0, 2.0, 3.0]})
        with pytest.raises(InputError, match=r"column 'amount', row 5: .* is not a number"):
            schema.coerce(given, row_offset=5)


def test_columns_named_by_numbers_are_excluded_by_them():
    from anomaly import Detector

    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 3)))
    det = Detector(model="linear", exclude=[0], epochs=1).fit(frame)
    assert det.schema_.names == ["1", "2"] and det.schema_.ignored == {"0": "excluded"}


def test_read_csv_refuses_repeated_and_empty_names(tmp_path):
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(InputError, match="column 'a' appears twice"):
        read_csv(repeated)
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("a,,c\n1,2,3\n")
    with pytest.raises(InputError, match="column 2 of the header has no name"):
        read_csv(unnamed)
    with pytest.raises(InputError, match="the body: column 'b' appears twice"):
        read_csv(io.BytesIO(b"b,b\n1,2\n"), name="the body")
    assert read_csv(io.BytesIO(b"\xef\xbb\xbfa,b\n1,2\n")).columns.tolist() == ["a", "b"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("caf\xe9,b\n1,2\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.csv is not a well-formed CSV file"):
        read_csv(latin)


def test_read_csv_refuses_a_row_with_fields_left_off_or_added(tmp_path):
    """pandas fills a short row's last fields with NaN (and refuses a long one in its own
    words): refused as ``anomaly score`` refuses them, naming the row and its line."""
    short = tmp_path / "short.csv"
    short.write_text('a,b,c\n1,2,3\n"x\ny",5,6\n7,8\n')
    with pytest.raises(InputError, match=r"short\.csv: row 2 has 2 fields, the header 3 names; "
                       r".* \(line 5 of the file\)") as info:  # fmt: skip
        read_csv(short)
    assert info.value.row == 2
    with pytest.raises(InputError, match=r"the body: row 1 has 4 fields, the header 3 names"):
        read_csv(io.BytesIO(b"a,b,c\n1,2,3\n4,5,6,7\n"), name="the body")
    # an empty last field is a missing value, not a field left off
    gaps = read_csv(io.BytesIO(b"a,b,c\n1,2,\n4,5,6\n"))
    assert gaps["c"].isna().tolist() == [True, False]
    # a field past the csv module's size limit (128 KiB) is read, as pandas and Arrow read it
    wide = read_csv(io.BytesIO(b'a,b\n1,"' + b"y" * 140_000 + b'"\n3,\n'))
    assert len(wide["b"][0]) == 140_000 and wide["b"].isna().tolist() == [False, True]
    # a line of spaces is a row of one field, as `anomaly score` (Arrow) reads it, whatever
    # the other rows hold
    for body in (b"a,b\n1,2\n   \n3,4\n", b"a,b\n1,2\n   \n3,\n"):
        with pytest.raises(InputError, match="row 1 has 1 fields, the header 2 names"):
            read_csv(io.BytesIO(body))


def test_a_column_of_numbers_with_a_stray_word_is_said_at_fit(caplog):
    """Levels may look like numbers ("7", "12", "A"), so the column stays categorical; but a
    typo in a column of numbers would pass unseen, so the first word is named."""
    frame = pd.DataFrame({"amount": ["1.5", "2", "abc", "4"], "city": ["a", "b", "a", "b"]})
    with caplog.at_level(logging.WARNING):
        schema = TabularSchema.infer(frame)
    assert schema.columns[0].kind == CATEGORICAL
    assert "column 'amount': most of its values are numbers, but not 'abc'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        TabularSchema.infer(frame.astype({"amount": "category"}))  # levels, as the user says
    assert "not a number" not in caplog.text


def test_true_false_and_dates_are_not_numbers_for_a_numeric_column():
    """numpy would read them as 1 and as nanoseconds; a CSV file's "true" is refused too."""
    schema = TabularSchema.infer(pd.DataFrame({"x": [1.0, 2.0], "y": [0.5, 0.25]}))
    for bad, shown in [
        (pd.Series([True, False]), "True"),
        (pd.Series([1.0, True], dtype=object), "True"),
        (pd.to_datetime(pd.Series(["2024-01-01", "2024-01-02"])), "Timestamp"),
        (pd.to_timedelta(pd.Series([1, 2]), unit="s"), "Timedelta"),
    ]:
        row = 1 if bad.dtype == object else 0
        with pytest.raises(InputError, match=f"column 'x', row {row}: {shown}.* is not a number"):
            schema.coerce(pd.DataFrame({"x": bad, "y": [0.5, 0.5]}))
    with pytest.raises(InputError, match="column 'x', row 0: True is not a number"):
        schema.coerce_records([{"x": True, "y": 0.5}])


def test_error_messages_do_not_echo_long_values():
    schema = TabularSchema.infer(_frame(), exclude=["id"])
    frame = pd.DataFrame({"x": ["z" * 10_000], "color": ["red"], "ok": [True], "yes": ["y"]})
    with pytest.raises(InputError) as info:
        schema.coerce(frame)
    assert len(str(info.value)) < 120


def test_read_csv_empty_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        read_csv(empty)
    header = tmp_path / "header.csv"
    header.write_text("a,b\n")
    with pytest.raises(InputError, match="no rows"):
        read_csv(header)
    with pytest.raises(InputError, match="no such file"):
        read_csv(tmp_path / "absent.csv")
    with pytest.raises(InputError, match="is a folder; give a CSV file"):
        read_csv(tmp_path)


MIXED_TEXT = "x,c,b\n1.5,red,true\nNA,,FALSE\n1e3,blue,yes\n,NA, no \nnan,green,\n-0.25,red,N/A\n"
# Only the spellings matched without lower-casing, and empty fields: the boolean fast path.
PLAIN_TEXT = "x,c,b\n1.5,red,True\n,,FALSE\n1e3,blue,yes\n2,NA,\n7,green,0\n-0.25,red,F\n"


@pytest.mark.parametrize("text", [MIXED_TEXT, PLAIN_TEXT], ids=["mixed", "plain"])
@pytest.mark.parametrize("empty_is_null", [False, True], ids=["empty-text", "empty-null"])
def test_text_parsing_matches_dataframe_parsing(tmp_path, text, empty_is_null):
    """The batch scorer's Arrow parser and read_csv + coerce agree value for value, whether an
    empty field arrives as empty text or (as the batch scorer reads it) as null."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = tmp_path / "mixed.csv"
    path.write_text(text)
    train = pd.DataFrame({"x": [1.0, 2.0], "c": ["red", "blue"], "b": [True, False]})
    schema = TabularSchema.infer(train)
    table = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(["x", "c", "b"], pa.string()),
            strings_can_be_null=empty_is_null,
            null_values=[""],
        ),
    )
    fast = schema.coerce_text(table)
    slow = schema.coerce(read_csv(path))
    for name in ("x", "c", "b"):
        np.testing.assert_array_equal(fast[name], slow[name])
    assert fast["c"].tolist() == [1, -1, 0, -1, -1, 1]  # levels: blue, red (ties by name)
    if text == MIXED_TEXT:
        assert np.isnan(fast["b"][[4, 5]]).all()
    else:
        np.testing.assert_array_equal(fast["b"], [1, 0, 1, np.nan, 0, 0])


def test_text_parsing_names_the_bad_row():
    import pyarrow as pa

    schema = TabularSchema.infer(pd.DataFrame({"x": [1.0, 2.0], "b": [True, False]}))
    table = pa.table({"x": ["1", "", "oops"], "b": ["t", "f", "t"]})
    with pytest.raises(InputError, match=r"column 'x', row 7: 'oops' is not a number"):
        schema.coerce_text(table, row_offset=5)
    table = pa.table({"x": ["1", "2", "3"], "b": ["t", "NA", "perhaps"]})
    with pytest.raises(InputError, match=r"column 'b', row 2: 'perhaps' is not true or false"):
        schema.coerce_text(table)
    table = pa.table({"x": ["1", "inf", "3"], "b": ["t", "t", "t"]})
    with pytest.raises(InputError, match=r"column 'x', row 1: infinite"):
        schema.coerce_text(table)
    # Missing: the tokens read_csv knows ("nan", "NaN", "-nan"...), not every spelling Arrow reads.
    table = pa.table({"x": ["nan", "NaN", "-nan", "NAN"], "b": ["t", "t", "t", "t"]})
    with pytest.raises(InputError, match=r"column 'x', row 3: 'NAN' is not a number"):
        schema.coerce_text(table)
    assert np.isnan(schema.coerce_text(table.slice(0, 3))["x"]).all()


def test_missing_value_tokens_are_missing_in_text_frames_as_in_csv_text():
    """A DataFrame of text (Spark's CSV rows, read_csv(dtype=str), JSON strings) reads ``NA``,
    ``null``, ``nan`` and empty fields as a CSV file's reader does: missing, not bad values."""
    import pyarrow as pa

    schema = TabularSchema.infer(pd.DataFrame({"x": [1.0, 2.0], "b": [True, False]}))
    text = {"x": ["1", "NA", "nan", "", "null"], "b": ["true", "NA", "", "#N/A", "false"]}
    from_frame = schema.coerce(pd.DataFrame(text, dtype=object))
    from_text = schema.coerce_text(pa.table(text))
    for name in ("x", "b"):
        np.testing.assert_array_equal(from_frame[name], from_text[name])
    assert from_frame["x"][0] == 1.0 and np.isnan(from_frame["x"][1:]).all()
    assert np.isnan(from_frame["b"][1:4]).all() and from_frame["b"][4] == 0.0
    with pytest.raises(InputError, match=r"column 'x', row 0: 'NAN' is not a number"):
        schema.coerce(pd.DataFrame({"x": ["NAN"], "b": ["true"]}, dtype=object))


def test_records_give_the_same_arrays_as_a_dataframe():
    from anomaly.datasets import make_service_metrics

    frame = make_service_metrics(300, 30, seed=4)
    schema = TabularSchema.infer(frame, exclude=["host_id", "timestamp", "label"])
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    records[3]["cpu"] = "12.5"  # text in a numeric column: the DataFrame path's rules
    records[4]["region"] = "mars"  # an unseen level
    records[5]["cached"] = None
    direct = schema.coerce_records(records)
    via_pandas = schema.coerce(pd.DataFrame.from_records(records))
    assert direct.keys() == via_pandas.keys()
    for name in direct:
        assert direct[name].dtype == via_pandas[name].dtype, name
        np.testing.assert_array_equal(direct[name], via_pandas[name], err_msg=name)
    records[7]["cpu"] = float("inf")
    with pytest.raises(InputError, match="column 'cpu', row 7: infinite"):
        schema.coerce_records(records)


# Values a reader that infers types reads otherwise than the text rules: "007", " 7" and "1.0"
# are not the level "7" or "1" as text, "+1" and "01" not spellings of true; gaps spelled.
CODED_TEXT = (
    "id,x,b,c,note\n"
    "1, 1.5,true,007,a\n"
    "2,+.5, TRUE, 7,b\n"
    "3,1e1,yes,1.0,\n"
    '4,NA,N,"1",NA\n'
    "5,,1.0,NA,c\n"
    "6,nan,,,d\n"
)


def _coded_schema():
    """c keeps the levels "7", "1" and "NA" (a level, from a DataFrame, not a gap)."""
    train = pd.DataFrame(
        {"x": [1.0, 2.0, 3.0], "b": [True, False, True], "c": ["7", "NA", "1"], "note": "n"}
    )
    schema = TabularSchema.infer(train, exclude=["note"])
    assert schema.columns[2].categories == ("1", "7", "NA")
    return schema


def test_read_csv_with_a_schema_reads_its_columns_as_the_batch_scorer():
    """The model's columns as text, converted by the batch scorer's rules: the same arrays as
    Arrow's text read + coerce_text, whatever pandas would have inferred."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from anomaly.data.tabular import text_convert_options

    schema = _coded_schema()
    body = CODED_TEXT.encode()
    frame = read_csv(io.BytesIO(body), schema=schema)
    text = pacsv.read_csv(pa.BufferReader(body), convert_options=text_convert_options(frame))
    expected = schema.coerce_text(text)
    got = schema.coerce(frame)
    for name in schema.names:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert got["c"].tolist() == [-1, -1, -1, 0, 2, -1]
    np.testing.assert_array_equal(got["b"], [1, 1, 1, 0, 1, np.nan])
    assert frame.columns.tolist() == ["id", "x", "b", "c", "note"]
    assert frame["id"].dtype == np.int64 and frame["note"].isna().tolist()[2:4] == [True, True]
    assert frame["c"].tolist()[:4] == ["007", " 7", "1.0", "1"]
    # Read back as the kinds they were: a retrain compares and infers on such a frame.
    again = TabularSchema.infer(frame[schema.names])
    assert [c.kind for c in again.columns] == [c.kind for c in schema.columns]


def test_read_csv_with_a_schema_refuses_as_the_batch_scorer():
    schema = _coded_schema()
    for value, problem in (("+1", "is not true or false"), ("01", "is not true or false")):
        body = f"x,b,c\n1,0,7\n2,{value},7\n".encode()
        message = f"the body: column 'b', row 1: '{value}' {problem}"
        with pytest.raises(InputError, match="^" + re.escape(message)):
            read_csv(io.BytesIO(body), name="the body", schema=schema)
        assert read_csv(io.BytesIO(body))["b"].tolist() == [0, 1]  # no schema: read as numbers
    with pytest.raises(InputError, match=r"column 'x', row 0: 'True' is not a number") as info:
        read_csv(io.BytesIO(b"x,b,c\nTrue,true,7\nFalse,false,7\n"), schema=schema)
    assert (info.value.column, info.value.row) == ("x", 0)
    # A short row is refused, as at training and by the batch scorer.
    for given in (schema, None):
        with pytest.raises(InputError, match="the CSV data: row 0 has 2 fields, the header 3"):
            read_csv(io.BytesIO(b"x,b,c\n1,true\n2,false,7\n"), schema=given)
    # A column the model reads that the file lacks is left to coerce, which names it.
    frame = read_csv(io.BytesIO(b"x,c\n1,7\n"), schema=schema)
    with pytest.raises(InputError, match="missing column 'b'"):
        schema.coerce(frame)


def test_an_empty_field_keeps_a_numeric_column_on_the_fast_path():
    import pyarrow as pa

    from anomaly.data.tabular import Column, _parse_text

    parsed = _parse_text(pa.array(["1", None, "NA", "nan"]), Column("x", NUMERIC))
    np.testing.assert_array_equal(parsed, [1.0, np.nan, np.nan, np.nan])


def test_values_too_deep_or_too_long_to_print_are_shown_short():
    from anomaly.data.tabular import _show

    deep: list = []
    for _ in range(2000):
        deep = [deep]
    assert _show(deep) == "[[[[[...]]]]]"
    assert _show(10**5000) == "an integer of about 5000 digits"
    assert _show([10**5000]) == "a list holding a huge integer"
    assert _show(np.float64("nan")) == "nan" and _show(np.int64(3)) == "3"
