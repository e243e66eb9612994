// The APE generator (see arrow_pointing.hpp): parameter checks, the split presets, the per-sample
// geometry drawn from a (seed, index) stream as docs/datasets.md describes it, exact rasterisation, and
// the batch API.
//
// Rasterisation visits only each shape's bounding box and decides every pixel there with the exact
// test on its centre (squared distance to the disk centre or to the stroke segment against the squared
// radius), so the cost is proportional to the objects' area, not the image's: a 192 x 192 image costs
// a 36 KB fill plus a few thousand pixel tests.
#include "datasets/arrow_pointing/arrow_pointing.hpp"

#include "core/memory.hpp"
#include "core/parallel.hpp"
#include "datasets/arguments.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace flashlstm::datasets::arrows {

namespace {

constexpr index_t max_size = index_t{1} << 15;
constexpr Split all_splits[] = {Split::train, Split::val, Split::val_ext, Split::test, Split::test_ext, Split::custom};

// splitmix64's output function: a bijection of 64-bit words whose outputs pass BigCrush when fed a
// Weyl sequence.
constexpr std::uint64_t mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The random stream of one sample: a Weyl sequence started at a hash of (seed, index), mixed.
class Stream {
 public:
  Stream(std::uint64_t seed, index_t index) : state_(mix(mix(seed) + static_cast<std::uint64_t>(index))) {}

  double uniform() {  // U[0, 1) with 53 random bits
    state_ += 0x9e3779b97f4a7c15ULL;
    return static_cast<double>(mix(state_) >> 11) * 0x1.0p-53;
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  index_t integer(index_t lo, index_t hi) {  // U{lo, ..., hi - 1}
    return std::min(hi - 1, lo + static_cast<index_t>(uniform() * static_cast<double>(hi - lo)));
  }

 private:
  std::uint64_t state_;
};

// Distance from the arrow centre to its farthest point: the tip, or a head stroke's end.
double arrow_reach(const Params& p, double length) {
  const double tip = length / 2, head = length / p.head_ratio;
  return std::max(tip, std::sqrt(tip * tip + head * head - 2 * tip * head * std::cos(p.head_angle)));
}

Geometry sample_unchecked(const Params& p, index_t index) {
  Stream rng(p.seed, index);
  Geometry g{};
  g.label = rng.uniform() < p.positive_fraction ? 1 : 0;
  g.length = rng.integer(p.length_min, p.length_max);
  g.width = rng.integer(p.width_min, p.width_max);
  g.radius = rng.uniform(p.radius_min, p.radius_max);
  const double interior = static_cast<double>(p.interior()), r = g.radius;
  // Interior coordinates in [0, interior); the circle keeps >= 2r from the arrow on each axis.
  const double ax = interior * rng.uniform(), ay = interior * rng.uniform();
  auto place = [&](double a) {
    const double c = a + 2 * r + (interior - 4 * r) * rng.uniform();
    return c >= interior ? c - interior : c;
  };
  const double cx = place(ax);
  const double cy = place(ay);

  const double dx = cx - ax, dy = cy - ay, d = std::hypot(dx, dy), phi0 = std::atan2(dy, dx);
  constexpr double two_pi = 2 * std::numbers::pi;
  double phi;
  if (g.label) {
    const double alpha = std::asin(r / p.margin / d);
    phi = phi0 - alpha + 2 * alpha * rng.uniform();
  } else {
    const double alpha = std::asin(std::min(1.0, p.margin * r / d));
    phi = phi0 + alpha + (two_pi - 2 * alpha) * rng.uniform();
  }
  g.direction = phi - two_pi * std::floor((phi + std::numbers::pi) / two_pi);

  const double pad = static_cast<double>(p.padding);
  g.arrow_x = pad + ax;
  g.arrow_y = pad + ay;
  g.circle_x = pad + cx;
  g.circle_y = pad + cy;
  return g;
}

// The pixels whose centres (i + 0.5) lie in [lo, hi], clipped to the image: [first, last).
struct Range {
  index_t first, last;
};

Range centres_in(double lo, double hi, index_t size) {
  const double n = static_cast<double>(size);
  return {static_cast<index_t>(std::clamp(std::ceil(lo - 0.5), 0.0, n)),
          static_cast<index_t>(std::clamp(std::floor(hi - 0.5) + 1, 0.0, n))};
}

class Canvas {
 public:
  Canvas(std::uint8_t* data, index_t size, index_t channels) : data_(data), size_(size), channels_(channels) {}

  void disk(double cx, double cy, double r) {
    const Range rows = centres_in(cy - r, cy + r, size_), cols = centres_in(cx - r, cx + r, size_);
    for (index_t y = rows.first; y < rows.last; ++y) {
      const double dy = y + 0.5 - cy;
      for (index_t x = cols.first; x < cols.last; ++x) {
        const double dx = x + 0.5 - cx;
        if (dx * dx + dy * dy <= r * r) blacken(y, x);
      }
    }
  }

  // Pixels within distance h of the segment (x0, y0)-(x1, y1).
  void stroke(double x0, double y0, double x1, double y1, double h) {
    const Range rows = centres_in(std::min(y0, y1) - h, std::max(y0, y1) + h, size_);
    const Range cols = centres_in(std::min(x0, x1) - h, std::max(x0, x1) + h, size_);
    const double ex = x1 - x0, ey = y1 - y0, len2 = ex * ex + ey * ey;
    for (index_t y = rows.first; y < rows.last; ++y) {
      const double py = y + 0.5 - y0;
      for (index_t x = cols.first; x < cols.last; ++x) {
        const double px = x + 0.5 - x0;
        const double t = len2 > 0 ? std::clamp((px * ex + py * ey) / len2, 0.0, 1.0) : 0.0;
        const double qx = px - t * ex, qy = py - t * ey;
        if (qx * qx + qy * qy <= h * h) blacken(y, x);
      }
    }
  }

 private:
  void blacken(index_t y, index_t x) { std::fill_n(data_ + (y * size_ + x) * channels_, channels_, std::uint8_t{0}); }

  std::uint8_t* data_;
  index_t size_, channels_;
};

void draw_unchecked(const Params& p, const Geometry& g, std::uint8_t* image) {
  std::fill_n(image, p.image_bytes(), std::uint8_t{255});
  Canvas canvas(image, p.size, p.channels);
  canvas.disk(g.circle_x, g.circle_y, g.radius);
  const double h = 0.5 * static_cast<double>(g.width), half = 0.5 * static_cast<double>(g.length);
  const double ux = std::cos(g.direction), uy = std::sin(g.direction);
  const double tip_x = g.arrow_x + half * ux, tip_y = g.arrow_y + half * uy;
  canvas.stroke(g.arrow_x - half * ux, g.arrow_y - half * uy, tip_x, tip_y, h);
  const double head = static_cast<double>(g.length) / p.head_ratio;
  for (double side : {-1.0, 1.0}) {
    const double angle = g.direction + side * p.head_angle;
    canvas.stroke(tip_x, tip_y, tip_x - head * std::cos(angle), tip_y - head * std::sin(angle), h);
  }
}

}  // namespace

void validate(const Params& p) {
  require(p.padding >= 0 && p.padding <= max_size, "padding", "must be in [0, {}], got {}", max_size, p.padding);
  require(p.size > 2 * p.padding && p.size <= max_size, "size", "must be > 2 * padding = {} and <= {}, got {}",
          2 * p.padding, max_size, p.size);
  require(p.channels == 1 || p.channels == 3, "channels", "must be 1 or 3, got {}", p.channels);
  require(p.positive_fraction >= 0 && p.positive_fraction <= 1, "positive_fraction", "must be in [0, 1], got {}",
          p.positive_fraction);
  require(p.length_min >= 1, "length_min", "must be >= 1, got {}", p.length_min);
  require(p.length_max > p.length_min, "length_max", "must be > length_min = {}, got {}", p.length_min,
          p.length_max);
  require(p.width_min >= 1, "width_min", "must be >= 1, got {}", p.width_min);
  require(p.width_max > p.width_min, "width_max", "must be > width_min = {}, got {}", p.width_min, p.width_max);
  require(p.radius_min > 0, "radius_min", "must be > 0, got {}", p.radius_min);
  require(p.radius_max >= p.radius_min, "radius_max", "must be >= radius_min = {}, got {}", p.radius_min,
          p.radius_max);
  require(4 * p.radius_max <= static_cast<double>(p.interior()), "radius_max",
          "4 * radius_max = {} must fit the interior size - 2 * padding = {} (the circle keeps 2r from the arrow "
          "on each axis)",
          4 * p.radius_max, p.interior());
  require(p.radius_max <= static_cast<double>(p.padding), "radius_max",
          "must be <= padding = {} so that the disk is never clipped, got {}", p.padding, p.radius_max);
  const double sqrt8 = 2 * std::numbers::sqrt2;  // the circle is at least 2 sqrt(2) r from the arrow
  require(p.margin >= 1 && p.margin <= sqrt8, "margin", "must be in [1, 2 sqrt(2)], got {}", p.margin);
  require(p.head_angle > 0 && p.head_angle < std::numbers::pi, "head_angle", "must be in (0, pi) radians, got {}",
          p.head_angle);
  require(p.head_ratio >= 1, "head_ratio", "must be >= 1 (head no longer than the arrow), got {}", p.head_ratio);
  const double reach = arrow_reach(p, static_cast<double>(p.length_max - 1)) + 0.5 * static_cast<double>(p.width_max - 1);
  require(reach <= static_cast<double>(p.padding), "length_max",
          "the arrow reaches {:.3g} pixels from its centre with length_max = {} and width_max = {}; it must be "
          "<= padding = {} so that the arrow is never clipped",
          reach, p.length_max, p.width_max, p.padding);
}

SplitPreset split_preset(Split split, std::uint64_t train_seed) {
  auto make = [](index_t size, std::uint64_t seed, index_t count) {
    Params p;
    p.size = size;
    p.seed = seed;
    return SplitPreset{p, count};
  };
  switch (split) {
    case Split::train: return make(192, train_seed, 100000);
    case Split::val: return make(192, 100042, 5120);
    case Split::val_ext: return make(384, 100043, 5120);
    case Split::test: return make(192, 200042, 10240);
    case Split::test_ext: return make(384, 200043, 10240);
    case Split::custom: return make(192, train_seed, 0);
  }
  throw Error(fmt::format("split: unknown value {}", static_cast<int>(split)));
}

std::string_view split_name(Split split) {
  switch (split) {
    case Split::train: return "train";
    case Split::val: return "val";
    case Split::val_ext: return "val_ext";
    case Split::test: return "test";
    case Split::test_ext: return "test_ext";
    case Split::custom: return "custom";
  }
  throw Error(fmt::format("split: unknown value {}", static_cast<int>(split)));
}

Split parse_split(std::string_view name) {
  for (Split s : all_splits) {
    if (split_name(s) == name) return s;
  }
  throw Error(fmt::format("split: must be one of train, val, val_ext, test, test_ext, custom; got '{}'", name));
}

Geometry sample_geometry(const Params& params, index_t index) {
  validate(params);
  require(index >= 0, "index", "must be >= 0, got {}", index);
  return sample_unchecked(params, index);
}

void draw(const Params& params, const Geometry& g, std::span<std::uint8_t> image) {
  validate(params);
  require(static_cast<index_t>(image.size()) >= params.image_bytes(), "image",
          "buffer holds {} bytes, need {} for one {}x{}x{} image", image.size(), params.image_bytes(), params.size,
          params.size, params.channels);
  require(std::isfinite(g.arrow_x) && std::isfinite(g.arrow_y) && std::isfinite(g.direction) &&
              std::isfinite(g.circle_x) && std::isfinite(g.circle_y),
          "geometry", "positions and direction must be finite");
  require(std::isfinite(g.radius) && g.radius >= 0, "geometry.radius", "must be finite and >= 0, got {}", g.radius);
  require(g.length >= 0 && g.width >= 0, "geometry", "length and width must be >= 0, got {} and {}", g.length,
          g.width);
  draw_unchecked(params, g, image.data());
}

void generate_into(const Params& params, index_t first, index_t count, std::span<std::uint8_t> images,
                   std::span<std::uint8_t> labels, int threads) {
  validate(params);
  check_range(first, count);
  [[maybe_unused]] const int n = thread_count(threads);
  const index_t bytes = params.image_bytes();
  require(count <= static_cast<index_t>(images.size()) / bytes, "images",
          "buffer holds {} bytes, need {} images of {}x{}x{} = {} bytes each", images.size(), count, params.size,
          params.size, params.channels, bytes);
  require(count <= static_cast<index_t>(labels.size()), "labels", "buffer holds {} labels, need {}", labels.size(),
          count);
  ParallelErrors errors;
#pragma omp parallel for schedule(static) num_threads(n)
  for (index_t i = 0; i < count; ++i) {
    errors.run([&] {
      const Geometry g = sample_unchecked(params, first + i);
      draw_unchecked(params, g, images.data() + i * bytes);
      labels[i] = g.label;
    });
  }
  errors.rethrow();
}

Batch generate(const Params& params, index_t first, index_t count, int threads) {
  validate(params);
  check_range(first, count);
  require_memory("count", static_cast<double>(count) * static_cast<double>(params.image_bytes() + 1),
                 fmt::format("{} images of {}x{}x{}", count, params.size, params.size, params.channels));
  Batch batch{xt::xtensor<std::uint8_t, 4>::from_shape({static_cast<std::size_t>(count),
                                                         static_cast<std::size_t>(params.size),
                                                         static_cast<std::size_t>(params.size),
                                                         static_cast<std::size_t>(params.channels)}),
              xt::xtensor<std::uint8_t, 1>::from_shape({static_cast<std::size_t>(count)})};
  generate_into(params, first, count, {batch.images.data(), batch.images.size()},
                {batch.labels.data(), batch.labels.size()}, threads);
  return batch;
}

}  // namespace flashlstm::datasets::arrows
