"""Reading data and checking it against a schema."""

from anomaly.data.tabular import Column, TabularSchema, read_csv

__all__ = ["Column", "TabularSchema", "read_csv"]
