# retina-edge: the two commands for a fresh Debian 12 machine are `make demo` and `make test`.
# Both install what is missing first (scripts/setup-deps.sh): Debian packages, the ONNX Runtime
# library from its PyPI wheel, the sample clip, grpcurl.

SHELL := /bin/bash
CARGO ?= cargo
# One profile for the demo, the tests and the benchmarks: CI then compiles the crate graph once.
PROFILE := --release
BIN := target/release/retina-edge
# The Python of scripts/setup-deps.sh's venv: the central-side client, projection learning, plots.
PY := .deps/python/bin/python
export CARGO_INCREMENTAL ?= 0
# Rust via rustup when cargo is not on PATH yet.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build demo test check-unit deb test-deb test-unit bench bench-components bench-isolation bench-log-stores bench-log bench-cameras bench-memory bench-model-swap bench-video bench-live-picture bench-collect eval-descriptors eval-int8 quantize-detector learn-projection soak lint fmt clean

deps:
	@bash scripts/setup-deps.sh

build: deps
	$(CARGO) build $(PROFILE) --locked

## Runs the node on the bundled clip and prints descriptors as a central client receives them.
demo: build
	@bash scripts/demo.sh

## The whole test suite (unit, integration with real models, video, gRPC), the unit's hardening
## score and the Debian package (installed on this machine: root only, see test-deb).
test: deps check-unit
	$(PY) -m unittest discover -s scripts/central
	$(CARGO) build $(PROFILE) --locked
	$(CARGO) test $(PROFILE) --locked --no-fail-fast
	$(MAKE) --no-print-directory test-deb
	$(MAKE) --no-print-directory test-unit

## The systemd unit's hardening: fails if `systemd-analyze security` rates it above 2.0 (the
## threshold is in tenths: 20 = 2.0, 100 = 10.0). systemd-analyze comes with Debian's systemd
## package (scripts/setup-deps.sh).
check-unit: deps
	systemd-analyze security --offline=yes --threshold=20 systemd/retina-edge.service

## The Debian package (cargo-deb, installed if missing) from the release build:
## target/debian/retina-edge_<version>-1_amd64.deb. README, "Installing the package".
## DEB_FLAGS=--fast: faster compression (about 20 s instead of 75 s here; 45 MB instead of 41 MB).
DEB_FLAGS ?=
deb: build
	@$(CARGO) deb --version >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked --version 3.8.0
	$(CARGO) deb --no-build --locked $(DEB_FLAGS)

## Builds the package, installs it on this machine with dpkg (root: a CI machine), runs `check`
## against the installed config as the service user, upgrades over a changed conffile, removes
## and purges; scripts/test-deb.sh. Builds the package with --fast compression.
test-deb:
	@$(MAKE) --no-print-directory deb DEB_FLAGS=--fast
	@bash scripts/test-deb.sh target/debian/retina-edge_$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1_amd64.deb

## The package's hardened unit under a real systemd (systemd-nspawn boots this machine's systemd on
## an overlay of its own /): an RTSP camera with digest auth, TLS with client certificates and a
## token, secrets through LoadCredential=, the watchdog (and a wedged node restarted by it), a
## clean stop. Root only; about 2.5 min; scripts/nspawn-unit-check.sh. Uses the package test-deb built.
test-unit:
	@bash scripts/nspawn-unit-check.sh target/debian/retina-edge_$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1_amd64.deb

## End-to-end benchmark: analysed fps against the inference-only limit, on a 1280x720 clip, in
## RETINA_BENCH_ROUNDS (default 5) alternating rounds; the ratio as a median with its range. Writes
## benches/results/end_to_end.md; 5-8 min on the shared 2-core box (load 6-8).
## RETINA_BENCH_DETECTOR=models/nanodet-g-416-int8.toml runs it with the int8 detector (report:
## benches/results/end_to_end-nanodet-g-416-int8.md).
bench: build
	$(CARGO) bench --locked --bench end_to_end

## Criterion micro-benchmarks: pre-processing, detector decoding, quantisation.
bench-components: deps
	$(CARGO) bench --locked --bench components

## What running each camera's pipeline in a child process would cost (CPU, PSS, hand-over latency,
## start-up), against in-process pipelines; ~25 min. Writes a Markdown report to stdout.
bench-isolation: deps
	@bash benches/isolation.sh

## Embedded stores for the durable descriptor log (SQLite, redb, fjall): appends with group commit,
## catch-up reads, space, eviction, queries, kill -9; ~3 min. Writes benches/results/log-stores.md.
bench-log-stores:
	cd benches/log-stores && $(CARGO) run --release --locked -- --records 2000000

## The descriptor log as built (retina_edge::log and the release binary): append rate with group
## commit, bytes per camera-day and what retention keeps, catch-up reads, queries, the real load of
## 16 cameras, and kill -9 of the node (descriptors received live but lost); ~4 min. Writes
## benches/results/log.md.
bench-log: build
	$(CARGO) bench --locked --bench log

## Cameras per box: the release node on N camera-like 720p25 H.264 streams at 2 analysed frames/s
## each, N = 1 2 4 8 12 16: analysed frames/s, drops, CPU, RSS and capture-to-subscriber latency per
## N; ~8 min. Writes benches/results/cameras.md and cameras.png (RETINA_BENCH_* knobs: see the bench).
bench-cameras: build
	$(CARGO) bench --locked --bench cameras

## The central collector at scale: the release binary's `retina-edge collect` and a real nats-server
## against N simulated nodes pushing the clip's real records: records/s, MB/s, CPU per record,
## lag, and the sizing for 10,000 boxes x 8 cameras; ~3 min. Writes benches/results/collect.md.
bench-collect: build
	$(CARGO) bench --locked --bench collect

## Where the node's memory goes: its RSS for a ladder of settings and camera counts, before and
## after issue 10's changes; ~4 min. Writes benches/results/memory.md.
bench-memory: build
	@bash benches/memory.sh

## The node's memory across a live model switch: VmRSS every 100 ms before, while and after the
## node switches NanoDet -> SSDLite over gRPC, with and without a watch period; ~3 min. Writes
## benches/results/model-swap.md.
bench-model-swap: build
	@bash benches/model_swap.sh

## What the recent-video ring costs per camera: the release node on 1 and 4 camera-like 720p25
## H.264 streams (~2 Mbit/s, 1 s GOP) without and with a [video] section, 3 alternating rounds:
## CPU, bytes written per camera per second and per day, MPEG-TS overhead against the stream's own
## bitrate, hours a 2 GiB ring holds, peak RSS; ~10 min. Writes benches/results/video-ring.md. Then
## the same for 1 and 2 cameras sending Motion JPEG, which the ring keeps by encoding them
## (video.reencode); ~7 min. Writes benches/results/video-ring-mjpeg.md.
bench-video: build
	@bash benches/video_ring.sh
	@SOURCE=mjpeg CAMERAS="1 2" bash benches/video_ring.sh

## What the status page's live picture costs: node CPU with a viewer asking for the picture of
## every new frame against without, time to answer, and whether each picture is the very frame
## asked for; one 720p camera, ~4 min. Writes benches/results/live-picture.md.
bench-live-picture: build
	@bash benches/live_picture.sh

## Fidelity and bandwidth of every descriptor codec on the real clips (strict nearest-neighbour
## agreement, held-out objects, stream bytes counted on the wire); writes
## benches/results/descriptors.md and benches/results/descriptor-fidelity.png; about 2.5 min.
eval-descriptors: deps
	$(CARGO) bench --locked --bench descriptors

## The int8 detector against the f32 one on held-out real frames of the clips: detection agreement
## (precision and recall against the f32 detections) and detector time per frame in alternating
## rounds (RETINA_INT8_ROUNDS, default 5); about 1 min. Writes benches/results/detector-int8.md.
eval-int8: deps
	$(CARGO) bench --locked --bench detector_int8

## Re-creates models/nanodet-g-416-int8.onnx (static QDQ quantisation, calibrated on frames of the
## clips that eval-int8 does not evaluate); needs python3.11 and PyPI. See models/README.md.
quantize-detector: deps
	@bash scripts/quantize-detector.sh

## Learns models/mobilenetv2-1280.projection.safetensors from the clip
## (models/mobilenetv2-1280.projection.md).
learn-projection: build
	@bash scripts/learn-projection.sh --node $(BIN)

## Soak: the node against local RTSP cameras that reboot and hang; SOAK_MINUTES (default 20).
soak: deps
	$(CARGO) test $(PROFILE) --locked --test soak -- --ignored --nocapture

## Formatting and clippy; needs the GStreamer development packages, hence deps.
lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy $(PROFILE) --locked --all-targets -- -D warnings

clean:
	$(CARGO) clean
