from model import AverageModel
from utils import load_rows


def main(path):
    rows = load_rows(path)
    targets = [float(row["price"]) for row in rows]
    model = AverageModel().fit(targets)
