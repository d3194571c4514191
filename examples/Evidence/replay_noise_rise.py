#!/usr/bin/env python3
"""Replays the 'per-example noise rises from its minimum' lead (issue 23) on committed evidence windows.

The lead, as an independent evaluation stated it before looking at these runs: per-example noise tr(Sigma); fire when
its 5-window running median exceeds 1.25 times the run's own minimum of that median after step 200. Its parameters are
taken as given (nothing here is tuned). tr(Sigma) is b t_b = batch x noise_euclidean (the window's covariance trace at
the trainer's batch, times the batch), which is what gradient.noise_per_example publishes.

For each run: whether it fired and at which step; the test accuracy there against the run's best; and validation
early stopping approximated from the window rows (the validation loss of the first row at or after every 50-step
mark, patience 5 of them, as Program.cs stops). Usage: python3 replay_noise_rise.py results-8000/windows.csv [results/windows.csv ...]
"""
import csv
import statistics
import sys
from collections import defaultdict

MEDIAN, FACTOR, AFTER = 5, 1.25, 200


def runs(path):
    grouped = defaultdict(list)
    for row in csv.DictReader(open(path)):
        if row['experiment'] != 'a':
            continue
        grouped[(row['condition'], int(row['seed']))].append(row)
    return grouped


def lead(rows):
    values, lowest = [], None
    for row in rows:
        values.append(float(row['batch']) * float(row['noise_euclidean']))
        median = statistics.median(values[-MEDIAN:])
        if int(row['step']) < AFTER or len(values) < MEDIAN:
            continue
        if lowest is not None and median > FACTOR * lowest:
            return row
        lowest = median if lowest is None else min(lowest, median)
    return None


def validation_stop(rows, patience=5, every=50):
    """Validation-loss early stopping as Program.cs runs it (a pass every 50 steps, patience 5), from the first window
    row at or after each 50-step mark (the rows carry the latest 10-step evaluation)."""
    best, wait, mark = None, 0, 0
    for row in rows:
        if int(row['step']) < mark:
            continue
        mark = (int(row['step']) // every + 1) * every
        loss = float(row['val_loss'])
        if best is None or loss < best:
            best, wait = loss, 0
        else:
            wait += 1
            if wait >= patience:
                return row
    return rows[-1]


def main(paths):
    for path in paths:
        print(f'## {path}\n')
        print('| condition | seed | fired at step | test acc there | best test acc | validation ES acc | outcome |')
        print('| --- | ---: | ---: | ---: | ---: | ---: | --- |')
        counts = defaultdict(lambda: [0, 0])
        for (condition, seed), rows in sorted(runs(path).items(), key=lambda kv: (float(kv[0][0].split()[1]), kv[0][1])):
            fired = lead(rows)
            best = max(float(r['test_accuracy']) for r in rows)
            at = float((fired or rows[-1])['test_accuracy'])
            es = float(validation_stop(rows)['test_accuracy'])
            noise = float(condition.split()[1])
            if noise == 0:
                kind, ok = 'clean', at >= best - 0.01
                outcome = 'not stopped' if fired is None else ('within 1 pt of best' if ok else 'stopped early')
            elif noise == 100:
                kind, ok = 'random', fired is not None
                outcome = 'stopped' if ok else 'not stopped'
            else:
                kind, ok = 'noisy', abs(at - es) <= 0.01
                outcome = ('within' if ok else 'not within') + ' 1 pt of validation ES'
            counts[kind][0] += ok
            counts[kind][1] += 1
            print(f"| {condition} | {seed} | {fired['step'] if fired else '-'} | {at:.3f} | {best:.3f} | {es:.3f} | {outcome} |")
        print()
        print('; '.join(f'{kind}: {ok} of {n}' for kind, (ok, n) in counts.items()) + '\n')


if __name__ == '__main__':
    main(sys.argv[1:] or ['results-8000/windows.csv', 'results/windows.csv'])
