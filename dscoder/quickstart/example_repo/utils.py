import csv


def load_rows(path):
    """Read a CSV file into a list of dictionaries."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mean(values):
    """The arithmetic mean of a non-empty list of numbers."""
    return sum(values) / len(values)
