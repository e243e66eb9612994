// The arrow-pointing extrapolation (APE) generator (docs/datasets.md): binary images with one arrow
// and one filled circle, labelled 1 when the arrow's ray from its centre hits the disk. Models train at
// 192 x 192 and are tested at 384 x 384 with the same object sizes.
//
// Every sample draws from its own random stream, a counter-based generator keyed by (seed, index), so
// sample i can be regenerated alone, and a batch is the same bytes whatever the number of threads or
// the order in which samples are made. The stream is our own (splitmix64), not <random>'s
// distributions, whose algorithms differ between standard libraries: the same (seed, index) gives the
// same image on every platform.
//
// Pixels: x = column, y = row, pixel (y, x) has its centre at (x + 0.5, y + 0.5). A pixel is black (0)
// when its centre lies in the disk or within w/2 of one of the arrow's three strokes (shaft and two
// head strokes), white (255) otherwise; exact tests, no anti-aliasing. Images are uint8, row-major
// (N, size, size, channels) with 1 or 3 equal channels; labels are uint8 0/1.
#pragma once

#include "core/view.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace flashlstm::datasets::arrows {

// Every range of the generator. Integer ranges are half-open [min, max), as is the radius range.
struct Params {
  index_t size = 192;              // image height = width, pixels
  index_t channels = 1;            // 1 (grey) or 3 (RGB, equal channels)
  std::uint64_t seed = 42;         // dataset seed; sample i draws from the stream (seed, i)
  double positive_fraction = 0.5;  // P(label = 1)
  index_t length_min = 15, length_max = 30;  // arrow length L, integer U[min, max)
  index_t width_min = 2, width_max = 4;      // stroke width w, integer U[min, max)
  double radius_min = 15, radius_max = 30;   // circle radius r, U[min, max)
  index_t padding = 30;            // object centres stay this far from every border
  double margin = 1.2;             // positives hit the disk r / margin, negatives miss the disk margin * r
  double head_angle = 0.5;         // head strokes leave the tip at φ ± head_angle, radians
  double head_ratio = 2.5;         // head stroke length = L / head_ratio

  index_t interior() const { return size - 2 * padding; }
  index_t image_bytes() const { return size * size * channels; }
};

// Throws Error naming the first parameter out of range: sizes and ranges, and that the objects fit
// (4 radius_max within the interior, so that the circle can keep 2r from the arrow per axis; the disk
// and the arrow within the padding, so that nothing is clipped).
void validate(const Params& params);

enum class Split { train, val, val_ext, test, test_ext, custom };

struct SplitPreset {
  Params params;
  index_t count;
};

// The paper's splits: train 100,000 @ 192 (seed = train_seed), val 5,120 @ 192 (seed 100042), val_ext
// 5,120 @ 384 (100043), test 10,240 @ 192 (200042), test_ext 10,240 @ 384 (200043). custom is the
// default Params with train_seed and count 0 (the caller sets both).
SplitPreset split_preset(Split split, std::uint64_t train_seed = 42);
Split parse_split(std::string_view name);  // "train", "val", "val_ext", "test", "test_ext", "custom"
std::string_view split_name(Split split);

// What sample `index` is made of; enough to recompute its label and its pixels.
struct Geometry {
  double arrow_x, arrow_y;    // arrow centre a (pixels)
  double direction;           // φ in [-π, π): the arrow points along u = (cos φ, sin φ)
  index_t length, width;      // L and w
  double circle_x, circle_y;  // circle centre c
  double radius;              // r
  std::uint8_t label;         // 1: the ray a + t u, t >= 0, hits the disk of radius r / margin;
                              // 0: it misses the disk of radius margin * r
};

Geometry sample_geometry(const Params& params, index_t index);

// Draws `geometry` into `image` (size, size, channels), which must hold params.image_bytes().
void draw(const Params& params, const Geometry& geometry, std::span<std::uint8_t> image);

// The batch API: fills images (count, size, size, channels) and labels (count) with samples
// first, ..., first + count - 1, on `threads` OpenMP threads (0: the default number). The buffers may
// be larger than needed; the bytes past the batch are left alone.
void generate_into(const Params& params, index_t first, index_t count, std::span<std::uint8_t> images,
                   std::span<std::uint8_t> labels, int threads = 0);

struct Batch {
  xt::xtensor<std::uint8_t, 4> images;  // (count, size, size, channels)
  xt::xtensor<std::uint8_t, 1> labels;  // (count)
};

Batch generate(const Params& params, index_t first, index_t count, int threads = 0);

// PNG output (libpng). write_png writes one image (size, size, channels); write_contact_sheet writes
// samples first, ..., first + count - 1 as a grid of `columns` tiles (0: a near-square grid), each
// framed in the colour of its label with the label digit in the frame: blue "1" points at the circle,
// orange "0" does not.
void write_png(const std::string& path, std::span<const std::uint8_t> image, index_t size, index_t channels);
void write_contact_sheet(const std::string& path, const Params& params, index_t first, index_t count,
                         index_t columns = 0);

}  // namespace flashlstm::datasets::arrows
