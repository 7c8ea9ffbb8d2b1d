#!/usr/bin/env python3
"""Plots the camera scaling curve written by `cargo bench --bench cameras`.

    plot_cameras.py target/bench-cameras.json benches/results/cameras.png

Left: analysed frames/s per camera (median, with the range over cameras as error bars) against
the number of cameras, with the asked-for rate as a dashed line. Middle: the node's CPU in cores
(the box has two). Right: resident memory in MB.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def main(data_path, png_path):
    with open(data_path) as f:
        points = json.load(f)
    cameras = [p["cameras"] for p in points]
    medians, low, high = [], [], []
    for p in points:
        rates = sorted(p["analysed_fps"])
        m = rates[(len(rates) - 1) // 2] if rates else 0.0
        medians.append(m)
        low.append(m - (rates[0] if rates else 0.0))
        high.append((rates[-1] if rates else 0.0) - m)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    ax.errorbar(cameras, medians, yerr=[low, high], marker="o", capsize=3)
    ax.axhline(points[0]["fps"], linestyle="--", color="grey", label=f"asked: {points[0]['fps']:g}/s")
    ax.set_xlabel("cameras (720p25 H.264)")
    ax.set_ylabel("analysed frames/s per camera")
    ax.set_ylim(bottom=0)
    ax.legend()
    axes[1].plot(cameras, [p["cpu_cores"] for p in points], marker="o")
    axes[1].axhline(2, linestyle="--", color="grey", label="2 cores")
    axes[1].set_xlabel("cameras")
    axes[1].set_ylabel("node CPU, cores")
    axes[1].set_ylim(bottom=0)
    axes[1].legend()
    axes[2].plot(cameras, [p["rss_mb"] for p in points], marker="o")
    axes[2].set_xlabel("cameras")
    axes[2].set_ylabel("node RSS, MB")
    axes[2].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xticks(cameras)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
