#!/usr/bin/env python3
"""Plots the descriptor codec evaluation written by `cargo bench --bench descriptors`.

    plot_descriptors.py target/eval/descriptors.json benches/results/descriptor-fidelity.png

Left: strict nearest-neighbour agreement with f32 (a tie is not agreement) against bytes per descriptor (log scale); right:
identity rank-1 against bytes. One line per codec family (float: f32/f16/int8, pca-int8, binary)
and subset; each point is labelled with its size. Subsets with too few identity queries (or a
single track) are left out of the right panel rather than drawn from a handful of queries.
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

FAMILY_COLOURS = {"float": "tab:blue", "pca-int8": "tab:orange", "binary": "tab:green"}
SUBSET_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]


def point_label(row):
    """Short size label: the float codecs by name, pca-int8 by dimensions, binary by bits."""
    if row["family"] == "float":
        return row["codec"]
    return f"{row['size']}" if row["family"] == "pca-int8" else f"{row['size']}b"


def series(rows):
    """{(subset, family): rows sorted by bytes}, subsets and families in report order."""
    out = {}
    for row in rows:
        out.setdefault((row["subset"], row["family"]), []).append(row)
    return {key: sorted(points, key=lambda r: r["bytes_per_descriptor"]) for key, points in out.items()}


def draw(ax, lines, subsets, value, ylabel):
    labelled = {}  # codec -> y values already labelled, so coinciding subsets are labelled once
    for (subset, family), points in lines.items():
        points = [p for p in points if value(p) is not None]
        if not points:
            continue
        style, marker = SUBSET_STYLES[subsets.index(subset) % len(SUBSET_STYLES)]
        colour = FAMILY_COLOURS.get(family, "black")
        xs = [p["bytes_per_descriptor"] for p in points]
        ys = [100 * value(p) for p in points]
        ax.plot(xs, ys, linestyle=style, marker=marker, color=colour, label=f"{family} · {subset}",
                markersize=5, linewidth=1.3)
        for x, y, p in zip(xs, ys, points):
            seen = labelled.setdefault(p["codec"], [])
            if any(abs(y - other) < 2.5 for other in seen):
                continue
            seen.append(y)
            ax.annotate(point_label(p), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=colour)
    ax.axhline(95, color="grey", linestyle="--", linewidth=1)
    ax.annotate("95 %", (1, 95), xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                ha="right", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per descriptor (encoded Embedding message, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="descriptors.json written by the bench")
    parser.add_argument("png", help="the plot to write")
    args = parser.parse_args()
    with open(args.json) as f:
        report = json.load(f)
    rows = report["fidelity"]
    if not rows:
        sys.exit(f"{args.json}: no fidelity rows")
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    lines = series(rows)

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    draw(left, lines, subsets, lambda r: r["nn_agreement"], "nearest neighbour same as f32, ties not agreement (%)")
    left.set_title("Fidelity to the f32 embedding")
    draw(right, lines, subsets,
         lambda r: r["identity"]["rank1"] if r["identity"]["reportable"] else None,
         "same-track rank-1 (%)")
    right.set_title(f"Same-track retrieval across ≥ {report['rules']['identity_min_gap_seconds']:g} s "
                    f"(subsets with ≥ {report['rules']['identity_min_queries']} queries, ≥ 2 tracks)")
    left.legend(fontsize=7, loc="lower right")
    projection = report["projection"]
    fig.suptitle(f"retina-edge descriptor codecs · projection {projection['id']} "
                 f"(K = {projection['max_dimension']}, learned on bikes t < {projection['train_seconds']:g} s)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
