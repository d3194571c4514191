"""Replays two ways of smoothing over n windows on the evidence program's windows.csv, clean against random labels.

Usage: python3 examples/Evidence/replay_smoothing.py examples/Evidence/results/windows.csv

For each clean window after step 200, the random run's window nearest in step; over each run's last n windows:
  pooled: the ratio of the pooled moments (what the library publishes as *.smoothed): cosine = mean S / mean A^2,
          relative regret = mean T_b / mean A^2, with A^2 = norm^2 and T_b = noise, S = A^2 - T_b;
  mean:   the mean of the windows' own ratios.
Prints how often the clean run is on the clean side, for the euclidean cosine and the Fisher relative regret; then the
same for pooling over at most 32 windows within a span of steps (ProbeOptions.SmoothingSteps).
"""
import csv
import sys


def load(path):
    runs = {}
    for row in csv.DictReader(open(path)):
        if row["experiment"] == "a" and row["noise"] in ("0", "1"):
            runs.setdefault((row["noise"], row["seed"]), []).append(row)
    return runs


def number(row, key):
    try:
        return float(row[key])
    except ValueError:
        return float("nan")


def pooled(windows, kind):
    norm, noise = ("norm_euclidean", "noise_euclidean") if kind == "cosine" else ("norm_fisher", "noise_fisher")
    a2 = [number(w, norm) ** 2 for w in windows]
    tb = [number(w, noise) for w in windows]
    return (sum(a2) - sum(tb)) / sum(a2) if kind == "cosine" else sum(tb) / sum(a2)


def mean(windows, kind):
    key = "cosine" if kind == "cosine" else "regret_relative_fisher"
    values = [number(w, key) for w in windows]
    values = [v for v in values if v == v]
    return sum(values) / len(values)


def main(path):
    runs = load(path)
    seeds = sorted({seed for _, seed in runs})
    for kind, higher in (("cosine", True), ("regret", False)):
        for n in (1, 5, 10, 20, 32, 40):
            counts = {"pooled": 0, "mean": 0}
            pairs = 0
            for seed in seeds:
                clean, random = runs[("0", seed)], runs[("1", seed)]
                for i, window in enumerate(clean):
                    if int(window["step"]) <= 200:
                        continue
                    j = min(range(len(random)), key=lambda r: abs(int(random[r]["step"]) - int(window["step"])))
                    c, r = clean[max(0, i + 1 - n):i + 1], random[max(0, j + 1 - n):j + 1]
                    sign = 1 if higher else -1
                    pairs += 1
                    counts["pooled"] += sign * (pooled(c, kind) - pooled(r, kind)) > 0
                    counts["mean"] += sign * (mean(c, kind) - mean(r, kind)) > 0
            print(f"{kind:7} n = {n:2}: clean side, pooled {100 * counts['pooled'] / pairs:.0f}%, mean of ratios {100 * counts['mean'] / pairs:.0f}% ({pairs} pairs)")


def within(run, i, n, span):
    """The last n windows of run up to window i whose steps are less than span before window i's."""
    step = int(run[i]["step"])
    return [w for w in run[max(0, i + 1 - n):i + 1] if span is None or step - int(w["step"]) < span]


def spans(path, thin=1):
    """thin > 1 keeps every thin-th window, as a sparser schedule (two torch threads, a larger model) would take."""
    runs = {key: run[::thin] for key, run in load(path).items()}
    seeds = sorted({seed for _, seed in runs})
    for kind, higher in (("cosine", True), ("regret", False)):
        for span in (250, 500, 1000, 2000, None):
            clean_side = pairs = held = 0
            for seed in seeds:
                clean, random = runs[("0", seed)], runs[("1", seed)]
                for i, window in enumerate(clean):
                    if int(window["step"]) <= 200:
                        continue
                    j = min(range(len(random)), key=lambda r: abs(int(random[r]["step"]) - int(window["step"])))
                    c, r = within(clean, i, 32, span), within(random, j, 32, span)
                    sign = 1 if higher else -1
                    pairs += 1
                    held += len(c)
                    clean_side += sign * (pooled(c, kind) - pooled(r, kind)) > 0
            label = "no limit" if span is None else f"{span} steps"
            print(f"{kind:7} every {thin} window(s), 32 windows within {label:9}: clean side {100 * clean_side / pairs:.0f}% ({pairs} pairs, {held / pairs:.1f} windows pooled on average)")


if __name__ == "__main__":
    main(sys.argv[1])
    for thin in (1, 8):
        spans(sys.argv[1], thin)
