//! Micro-benchmarks of the per-frame work outside the models: pre-processing, detector output
//! decoding, embedding quantisation. `make bench-components`.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use retina_edge::describe::codec;
use retina_edge::infer::decode::Decoder;
use retina_edge::infer::manifest::Manifest;
use retina_edge::infer::preprocess::{Rect, fill_input, item_len};

fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(name: &str) -> Manifest {
    Manifest::load(&repo().join("models").join(name)).expect("bundled manifest")
}

/// A frame with real-looking variation (a gradient with texture), 640x360 as the pipeline delivers.
fn frame() -> image::RgbImage {
    image::RgbImage::from_fn(640, 360, |x, y| {
        image::Rgb([(x * 7 + y) as u8, (y * 3 + x / 2) as u8, ((x ^ y) * 5) as u8])
    })
}

fn preprocessing(c: &mut Criterion) {
    let image = frame();
    let detector = manifest("nanodet-g-416.toml").input;
    let mut tensor = vec![0f32; item_len(&detector)];
    c.bench_function("preprocess/detector_letterbox_640x360_to_416", |b| {
        b.iter(|| fill_input(black_box(&image), Rect::of_image(&image), &detector, &mut tensor))
    });
    let embedder = manifest("mobilenetv2-1280.toml").input;
    let mut crop = vec![0f32; item_len(&embedder)];
    let person = Rect {
        x: 300.0,
        y: 40.0,
        width: 90.0,
        height: 260.0,
    };
    c.bench_function("preprocess/embedder_crop_90x260_to_224", |b| {
        b.iter(|| fill_input(black_box(&image), person, &embedder, &mut crop))
    });
}

fn decoding(c: &mut Criterion) {
    let decoder = Decoder::from_manifest(&manifest("nanodet-g-416.toml"))
        .ok()
        .flatten()
        .expect("the bundled detector's manifest has a detector decoder");
    // Real outputs of the model on dog.jpg.
    let tensors = common::nanodet_dog_outputs(&decoder);
    c.bench_function("decode/nanodet_gfl_416_dog", |b| {
        b.iter(|| decoder.decode(black_box(&tensors)))
    });
}

fn quantisation(c: &mut Criterion) {
    let raw: Vec<f32> = (0..1280)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 0.7).max(0.0))
        .collect();
    let int8 = codec::Encoder::new(codec::CodecKind::Int8, None, None).expect("int8 needs no projection");
    c.bench_function("quantise/l2_int8_encode_1280", |b| {
        b.iter(|| int8.encode(black_box(&raw)))
    });
    let encoded = int8.encode(&raw).expect("a finite vector encodes");
    c.bench_function("quantise/int8_decode_1280", |b| {
        b.iter(|| codec::decode(black_box(&encoded)))
    });
}

criterion_group!(benches, preprocessing, decoding, quantisation);
criterion_main!(benches);
