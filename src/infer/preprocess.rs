//! Turning a region of an RGB frame into one item of a model's input tensor, in a single pass:
//! crop, bilinear resize, channel order, normalisation and layout together, writing straight
//! into the tensor. Separate passes (resize an image, then convert it) would read and write the
//! pixels several times; this is the hot loop of pre-processing.

use super::manifest::{ChannelOrder, InputSpec, Layout, ResizeMode};

/// A rectangle in frame pixels (floating point: boxes come from the detector).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl Rect {
    pub fn of_image(image: &image::RgbImage) -> Rect {
        Rect {
            x: 0.0,
            y: 0.0,
            width: image.width() as f32,
            height: image.height() as f32,
        }
    }
}

/// How input pixels relate to frame pixels: `input = (frame - origin) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub origin_x: f32,
    pub origin_y: f32,
    pub scale_x: f32,
    pub scale_y: f32,
}

impl Placement {
    /// Maps a box `[x1, y1, x2, y2]` from input pixels back to frame pixels.
    pub fn to_frame(&self, b: [f32; 4]) -> [f32; 4] {
        [
            b[0] / self.scale_x + self.origin_x,
            b[1] / self.scale_y + self.origin_y,
            b[2] / self.scale_x + self.origin_x,
            b[3] / self.scale_y + self.origin_y,
        ]
    }

    /// [`to_frame`](Self::to_frame), clipped to a `width` x `height` frame; `None` for a box the
    /// frame's edge squeezes under a pixel, which describes nothing.
    pub fn to_frame_clipped(&self, b: [f32; 4], (width, height): (f32, f32)) -> Option<[f32; 4]> {
        let b = self.to_frame(b);
        let bbox = [
            b[0].clamp(0.0, width),
            b[1].clamp(0.0, height),
            b[2].clamp(0.0, width),
            b[3].clamp(0.0, height),
        ];
        (bbox[2] - bbox[0] >= 1.0 && bbox[3] - bbox[1] >= 1.0).then_some(bbox)
    }
}

/// Number of f32 values of one input item.
pub fn item_len(spec: &InputSpec) -> usize {
    3 * spec.width as usize * spec.height as usize
}

/// An element of an input tensor: what a normalised pixel value is stored as.
pub trait InputElement: Copy + Default {
    fn from_value(value: f32) -> Self;
}

impl InputElement for f32 {
    #[inline]
    fn from_value(value: f32) -> f32 {
        value
    }
}

impl InputElement for u8 {
    /// Interpolated values round to the nearest level (the cast saturates).
    #[inline]
    fn from_value(value: f32) -> u8 {
        (value + 0.5) as u8
    }
}

/// Fills `dst` (one batch item, `item_len(spec)` values) from `roi` of `image`.
/// Pixels of the input outside the resized image (letterbox padding) get the normalised zero,
/// i.e. the mean colour (black for raw uint8 inputs).
pub fn fill_input<T: InputElement>(image: &image::RgbImage, roi: Rect, spec: &InputSpec, dst: &mut [T]) -> Placement {
    let (in_w, in_h) = (spec.width as usize, spec.height as usize);
    debug_assert_eq!(dst.len(), item_len(spec));
    let roi = clamp_roi(roi, image);
    let (scale_x, scale_y) = match spec.resize {
        ResizeMode::Stretch => (in_w as f32 / roi.width, in_h as f32 / roi.height),
        ResizeMode::Letterbox => {
            let s = (in_w as f32 / roi.width).min(in_h as f32 / roi.height);
            (s, s)
        }
    };
    let out_w = ((roi.width * scale_x).round() as usize).clamp(1, in_w);
    let out_h = ((roi.height * scale_y).round() as usize).clamp(1, in_h);
    if out_w < in_w || out_h < in_h {
        dst.fill(T::default());
    }

    // value = pixel * a[c] + b[c], folding pixel_scale, mean and std into one multiply-add.
    let source_channel: [usize; 3] = match spec.channels {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let a: [f32; 3] = std::array::from_fn(|c| spec.pixel_scale / spec.std[c]);
    let b: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);

    let columns = sample_positions(out_w, roi.x, scale_x, image.width());
    let rows = sample_positions(out_h, roi.y, scale_y, image.height());
    let src = image.as_raw();
    let src_stride = image.width() as usize * 3;
    let plane = in_w * in_h;

    for (y, row) in rows.iter().enumerate() {
        let top = &src[row.lo * src_stride..][..src_stride];
        let bottom = &src[row.hi * src_stride..][..src_stride];
        for (x, col) in columns.iter().enumerate() {
            let (l, r) = (col.lo * 3, col.hi * 3);
            let mut rgb = [0f32; 3];
            for (ch, value) in rgb.iter_mut().enumerate() {
                let t = f32::from(top[l + ch]) + (f32::from(top[r + ch]) - f32::from(top[l + ch])) * col.weight;
                let btm =
                    f32::from(bottom[l + ch]) + (f32::from(bottom[r + ch]) - f32::from(bottom[l + ch])) * col.weight;
                *value = t + (btm - t) * row.weight;
            }
            match spec.layout {
                Layout::Nchw => {
                    let at = y * in_w + x;
                    for c in 0..3 {
                        dst[c * plane + at] = T::from_value(rgb[source_channel[c]] * a[c] + b[c]);
                    }
                }
                Layout::Nhwc => {
                    let at = (y * in_w + x) * 3;
                    for c in 0..3 {
                        dst[at + c] = T::from_value(rgb[source_channel[c]] * a[c] + b[c]);
                    }
                }
            }
        }
    }
    Placement {
        origin_x: roi.x,
        origin_y: roi.y,
        scale_x,
        scale_y,
    }
}

/// Sample points per side of a crop for [`crop_sharpness`]: enough to see texture, few enough to
/// cost nothing next to the embedder.
const SHARPNESS_GRID: u32 = 64;

/// Fine detail in the crop `bbox` (frame pixels) of `image`: the variance of the Laplacian of the
/// luma (Pech-Pacheco et al., 2000), on a grid of at most 64 x 64 points spread over the box with
/// the Laplacian taken at the grid's own step. Measuring at the box's scale rather than the
/// frame's makes a near and a far view of one object comparable: blur and compression smear
/// detail at every size. Returns 0 for a box too small to measure.
pub fn crop_sharpness(image: &image::RgbImage, bbox: [f32; 4]) -> f32 {
    let (iw, ih) = image.dimensions();
    let clamp = |v: f32, max: u32| (v.max(0.0) as u32).min(max);
    let (x0, y0) = (clamp(bbox[0], iw), clamp(bbox[1], ih));
    let (x1, y1) = (clamp(bbox[2], iw), clamp(bbox[3], ih));
    let step_x = ((x1.saturating_sub(x0)) / SHARPNESS_GRID).max(1);
    let step_y = ((y1.saturating_sub(y0)) / SHARPNESS_GRID).max(1);
    if x1 < x0 + 2 * step_x + 1 || y1 < y0 + 2 * step_y + 1 {
        return 0.0;
    }
    let luma = |x: u32, y: u32| {
        let p = image.get_pixel(x, y).0;
        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
    };
    let (mut n, mut sum, mut sum_sq) = (0f64, 0f64, 0f64);
    let mut y = y0 + step_y;
    while y + step_y < y1 {
        let mut x = x0 + step_x;
        while x + step_x < x1 {
            let laplacian = 4.0 * luma(x, y)
                - luma(x - step_x, y)
                - luma(x + step_x, y)
                - luma(x, y - step_y)
                - luma(x, y + step_y);
            let laplacian = f64::from(laplacian);
            n += 1.0;
            sum += laplacian;
            sum_sq += laplacian * laplacian;
            x += step_x;
        }
        y += step_y;
    }
    if n == 0.0 {
        return 0.0;
    }
    let mean = sum / n;
    (sum_sq / n - mean * mean).max(0.0) as f32
}

fn clamp_roi(roi: Rect, image: &image::RgbImage) -> Rect {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let x = roi.x.clamp(0.0, w - 1.0);
    let y = roi.y.clamp(0.0, h - 1.0);
    Rect {
        x,
        y,
        width: roi.width.min(w - x).max(1.0),
        height: roi.height.min(h - y).max(1.0),
    }
}

/// Source sample for one output column (or row): the two neighbours and the weight of the second.
struct Sample {
    lo: usize,
    hi: usize,
    weight: f32,
}

fn sample_positions(out_len: usize, origin: f32, scale: f32, src_len: u32) -> Vec<Sample> {
    let last = src_len.saturating_sub(1) as f32;
    (0..out_len)
        .map(|i| {
            // Pixel centres line up: output centre i + 0.5 maps to source centre.
            let s = (origin + (i as f32 + 0.5) / scale - 0.5).clamp(0.0, last);
            let lo = s.floor();
            Sample {
                lo: lo as usize,
                hi: (lo + 1.0).min(last) as usize,
                weight: s - lo,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layout: Layout, channels: ChannelOrder, resize: ResizeMode, w: u32, h: u32) -> InputSpec {
        InputSpec {
            name: "x".into(),
            layout,
            width: w,
            height: h,
            channels,
            resize,
            pixel_scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            max_batch: 1,
            element_type: crate::infer::manifest::ElementType::Float32,
        }
    }

    #[test]
    fn uint8_inputs_get_the_pixel_values_themselves() {
        let image = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 60 + 15, y as u8 * 255, 7]));
        let s = spec(Layout::Nhwc, ChannelOrder::Rgb, ResizeMode::Stretch, 4, 2);
        let mut dst = vec![0u8; item_len(&s)];
        fill_input(&image, Rect::of_image(&image), &s, &mut dst);
        assert_eq!(&dst[..], image.as_raw().as_slice());
        // Halving interpolates: (15 + 75) / 2 = 45, (135 + 195) / 2 = 165, exactly.
        let half = spec(Layout::Nhwc, ChannelOrder::Rgb, ResizeMode::Stretch, 2, 1);
        let mut dst = vec![0u8; item_len(&half)];
        fill_input(&image, Rect::of_image(&image), &half, &mut dst);
        assert_eq!((dst[0], dst[3], dst[1]), (45, 165, 128));
    }

    #[test]
    fn identity_size_copies_pixels_in_requested_order_and_layout() {
        let image = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 10, y as u8 * 100, 7]));
        let s = spec(Layout::Nchw, ChannelOrder::Bgr, ResizeMode::Stretch, 4, 2);
        let mut dst = vec![0.0; item_len(&s)];
        let placement = fill_input(&image, Rect::of_image(&image), &s, &mut dst);
        assert_eq!(placement.scale_x, 1.0);
        // channel 0 is blue (7 everywhere), channel 2 is red (x * 10)
        assert!(dst[..8].iter().all(|&v| v == 7.0));
        assert_eq!(&dst[16..20], &[0.0, 10.0, 20.0, 30.0]);
        assert_eq!(dst[8 + 4], 100.0); // green, row 1

        let s = spec(Layout::Nhwc, ChannelOrder::Rgb, ResizeMode::Stretch, 4, 2);
        let mut dst = vec![0.0; item_len(&s)];
        fill_input(&image, Rect::of_image(&image), &s, &mut dst);
        assert_eq!(&dst[3..6], &[10.0, 0.0, 7.0]);
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-3, "at {i}: got {got:?}, want {want:?}");
        }
    }

    /// Doubling a ramp: output pixel i samples the source at (i + 0.5) / 2 - 0.5, so the weights
    /// alternate 1/4, 3/4 and the ends repeat the edge pixel. Aligning corners instead would
    /// give 0, 17.1, 34.3, ...; aligning top-left corners 0, 20, 40, ...
    #[test]
    fn enlarging_a_ramp_samples_at_pixel_centres_with_bilinear_weights() {
        let image = image::RgbImage::from_fn(4, 1, |x, _| image::Rgb([x as u8 * 40, 0, 0]));
        let s = spec(Layout::Nchw, ChannelOrder::Rgb, ResizeMode::Stretch, 8, 1);
        let mut dst = vec![0.0; item_len(&s)];
        fill_input(&image, Rect::of_image(&image), &s, &mut dst);
        assert_close(&dst[..8], &[0.0, 10.0, 30.0, 50.0, 70.0, 90.0, 110.0, 120.0]);
    }

    /// Halving a one-pixel checkerboard: each output centre falls exactly between a black and a
    /// white pixel, so every value is their mean. Sampling half a pixel off gives all black or
    /// all white.
    #[test]
    fn halving_a_checkerboard_weighs_both_neighbours_equally() {
        let image = image::RgbImage::from_fn(8, 8, |x, y| {
            let v = if (x + y) % 2 == 0 { 0 } else { 200 };
            image::Rgb([v, v, v])
        });
        let s = spec(Layout::Nchw, ChannelOrder::Rgb, ResizeMode::Stretch, 4, 4);
        let mut dst = vec![0.0; item_len(&s)];
        fill_input(&image, Rect::of_image(&image), &s, &mut dst);
        assert_close(&dst, &[100.0; 48]);
    }

    /// One bright pixel in the middle of a 3x3 image, tripled: the output is the bilinear "tent"
    /// 255 * p(y) * p(x), with p the weight of the middle pixel at each output column's sample
    /// position. Symmetric about the centre, as it must be; weights are exact thirds.
    #[test]
    fn a_single_bright_pixel_spreads_as_the_bilinear_tent() {
        let image = image::RgbImage::from_fn(3, 3, |x, y| {
            let v = if (x, y) == (1, 1) { 255 } else { 0 };
            image::Rgb([v, 0, 0])
        });
        let s = spec(Layout::Nchw, ChannelOrder::Rgb, ResizeMode::Stretch, 9, 9);
        let mut dst = vec![0.0; item_len(&s)];
        fill_input(&image, Rect::of_image(&image), &s, &mut dst);
        // Positions (i + 0.5) / 3 - 0.5 = -1/3, 0, 1/3, 2/3, 1, 4/3, 5/3, 2, 7/3.
        let p = [0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0];
        let want: Vec<f32> = (0..81).map(|i| 255.0 * p[i / 9] * p[i % 9]).collect();
        assert_close(&dst[..81], &want);
        assert!(dst[81..].iter().all(|&v| v == 0.0), "green and blue stay dark");
    }

    /// A crop starting between pixels is sampled there, not at a rounded origin.
    #[test]
    fn fractional_crop_origins_are_honoured() {
        let image = image::RgbImage::from_fn(10, 1, |x, _| image::Rgb([x as u8 * 10, 0, 0]));
        let s = spec(Layout::Nchw, ChannelOrder::Rgb, ResizeMode::Stretch, 4, 1);
        let mut dst = vec![0.0; item_len(&s)];
        let roi = Rect {
            x: 2.25,
            y: 0.0,
            width: 4.0,
            height: 1.0,
        };
        fill_input(&image, roi, &s, &mut dst);
        assert_close(&dst[..4], &[22.5, 32.5, 42.5, 52.5]);
    }

    /// Letterbox of an 8x4 ramp (red = 10 x, green = 10 y) into 4x4 BGR with a mean: half size,
    /// at the top-left, the rest the normalised zero. Output pixel i samples 2 i + 0.5 (between
    /// source pixels 2i and 2i+1), and `to_frame` maps input centres to the same frame positions,
    /// so boxes come back where the pixels came from.
    #[test]
    fn letterbox_of_a_ramp_samples_pads_and_maps_boxes_back_consistently() {
        let image = image::RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 50]));
        let mut s = spec(Layout::Nchw, ChannelOrder::Bgr, ResizeMode::Letterbox, 4, 4);
        s.mean = [50.0, 0.0, 100.0]; // B, G, R
        let mut dst = vec![f32::NAN; item_len(&s)];
        let placement = fill_input(&image, Rect::of_image(&image), &s, &mut dst);
        assert_eq!((placement.scale_x, placement.scale_y), (0.5, 0.5));
        let (blue, green, red) = (&dst[..16], &dst[16..32], &dst[32..]);
        assert_close(blue, &[0.0; 16]);
        let ramp = [5.0, 25.0, 45.0, 65.0].map(|v| v - 100.0);
        assert_close(&red[..8], &[ramp, ramp].concat());
        assert_close(&green[..8], &[5.0, 5.0, 5.0, 5.0, 25.0, 25.0, 25.0, 25.0]);
        assert_close(&dst[8..16], &[0.0; 8]); // padding rows, every channel
        assert_close(&green[8..], &[0.0; 8]);
        assert_close(&red[8..], &[0.0; 8]);
        for (x, value) in red[..4].iter().enumerate() {
            // Input centre x + 0.5 comes from frame position to_frame(x + 0.5) - 0.5 (the same
            // half-pixel convention), where red is 10 times that.
            let frame_x = placement.to_frame([x as f32 + 0.5, 0.0, 0.0, 0.0])[0] - 0.5;
            assert!((value + 100.0 - 10.0 * frame_x).abs() < 1e-3, "column {x}");
        }
        assert_eq!(placement.to_frame([1.0, 1.0, 3.0, 2.0]), [2.0, 2.0, 6.0, 4.0]);
    }

    /// A crop of a ramp (red = 2 x, green = 2 y) gives values from inside the crop only, at the
    /// crop's own sample positions: origin + (i + 0.5) * 30 / 8 - 0.5.
    #[test]
    fn crop_samples_only_its_region() {
        let image = image::RgbImage::from_fn(100, 100, |x, y| image::Rgb([x as u8 * 2, y as u8 * 2, 0]));
        let s = spec(Layout::Nchw, ChannelOrder::Rgb, ResizeMode::Stretch, 8, 8);
        let mut dst = vec![0.0; item_len(&s)];
        let roi = Rect {
            x: 60.0,
            y: 10.0,
            width: 30.0,
            height: 30.0,
        };
        let placement = fill_input(&image, roi, &s, &mut dst);
        let row: Vec<f32> = (0..8).map(|i| 2.0 * (60.0 + (i as f32 + 0.5) * 3.75 - 0.5)).collect();
        let column: Vec<f32> = (0..8).map(|j| 2.0 * (10.0 + (j as f32 + 0.5) * 3.75 - 0.5)).collect();
        for y in 0..8 {
            assert_close(&dst[y * 8..][..8], &row);
            assert_close(&dst[64 + y * 8..][..8], &[column[y]; 8]);
        }
        assert_eq!(placement.to_frame([0.0, 0.0, 8.0, 8.0]), [60.0, 10.0, 90.0, 40.0]);
    }

    #[test]
    fn degenerate_rois_are_clamped_not_panicking() {
        let image = image::RgbImage::new(10, 10);
        let s = spec(Layout::Nchw, ChannelOrder::Rgb, ResizeMode::Stretch, 4, 4);
        let mut dst = vec![0.0; item_len(&s)];
        for roi in [
            Rect {
                x: -5.0,
                y: -5.0,
                width: 0.0,
                height: 0.0,
            },
            Rect {
                x: 50.0,
                y: 50.0,
                width: 10.0,
                height: 10.0,
            },
            Rect {
                x: 9.5,
                y: 0.0,
                width: 100.0,
                height: 0.1,
            },
        ] {
            fill_input(&image, roi, &s, &mut dst);
        }
    }

    #[test]
    fn sharpness_is_higher_for_detail_and_zero_for_flat_or_tiny_crops() {
        let checker = image::RgbImage::from_fn(200, 200, |x, y| {
            if (x / 3 + y / 3) % 2 == 0 {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        let blurred = image::imageops::blur(&checker, 3.0);
        let flat = image::RgbImage::from_pixel(200, 200, image::Rgb([90, 90, 90]));
        let whole = [0.0, 0.0, 200.0, 200.0];
        let sharp = crop_sharpness(&checker, whole);
        assert!(sharp > 4.0 * crop_sharpness(&blurred, whole), "{sharp}");
        assert_eq!(crop_sharpness(&flat, whole), 0.0);
        assert_eq!(crop_sharpness(&checker, [10.0, 10.0, 11.0, 11.0]), 0.0);
        // Boxes partly or wholly outside the frame, or inside out, measure what lies inside or nothing.
        assert!(crop_sharpness(&checker, [-50.0, -50.0, 100.0, 100.0]) > 0.0);
        assert_eq!(crop_sharpness(&checker, [300.0, 300.0, 400.0, 400.0]), 0.0);
        assert_eq!(crop_sharpness(&checker, [100.0, 100.0, 50.0, 50.0]), 0.0);
        assert_eq!(
            crop_sharpness(&checker, [f32::NAN, 0.0, f32::INFINITY, 100.0]),
            crop_sharpness(&checker, [0.0, 0.0, 200.0, 100.0])
        );
    }
}
