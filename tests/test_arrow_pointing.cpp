// The arrow-pointing generator, checked by properties rather than stored outputs: labels against an
// independent ray-disk test on the sampled geometry, pixels against an independent brute-force
// rasterisation, placement inside the padded interior, the same object sizes at 192 and 384,
// the class balance, determinism across threads and batchings, the presets, PNG files, and bad input:
// index ranges and counts that would overflow or not fit, thread counts, and output files that cannot
// be written (the OutputFile every writer shares: temporary name, checked writes, rename).
#include "datasets/arguments.hpp"
#include "datasets/arrow_pointing/arrow_pointing.hpp"
#include "core/output_file.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <tuple>
#include <vector>

using namespace flashlstm;
namespace arrows = flashlstm::datasets::arrows;

namespace {

arrows::Params params_at(index_t size, std::uint64_t seed, index_t channels = 1) {
  arrows::Params p;
  p.size = size;
  p.seed = seed;
  p.channels = channels;
  return p;
}

// How far the ray a + t u (t >= 0) passes inside the disk (c, rho): > 0 when it crosses the disk,
// < 0 when it misses. From the roots of |a + t u - c|^2 = rho^2, not from the angles the generator uses.
double ray_penetration(const arrows::Geometry& g, double rho) {
  const double ux = std::cos(g.direction), uy = std::sin(g.direction);
  const double fx = g.arrow_x - g.circle_x, fy = g.arrow_y - g.circle_y;
  const double b = fx * ux + fy * uy, c = fx * fx + fy * fy - rho * rho;
  const double discriminant = b * b - c;
  if (discriminant < 0) return -std::sqrt(-discriminant);  // the line misses: minus its chord's imaginary half
  const double far_root = -b + std::sqrt(discriminant);
  return far_root >= 0 ? std::sqrt(discriminant) : far_root;  // the disk is behind the arrow when both roots < 0
}

// Distance from p to the segment s0-s1: perpendicular distance where p projects inside it, the nearer
// end otherwise.
double segment_distance(double px, double py, double x0, double y0, double x1, double y1) {
  const double ex = x1 - x0, ey = y1 - y0, len = std::hypot(ex, ey);
  const double along = ((px - x0) * ex + (py - y0) * ey) / len;
  if (along < 0) return std::hypot(px - x0, py - y0);
  if (along > len) return std::hypot(px - x1, py - y1);
  return std::abs((px - x0) * ey - (py - y0) * ex) / len;
}

struct Strokes {
  double x[3][2], y[3][2];  // shaft, head stroke 1, head stroke 2: start and end
  double reach;             // the farthest any stroke point is from the arrow centre, plus w/2
};

Strokes strokes_of(const arrows::Params& p, const arrows::Geometry& g) {
  const double half = g.length / 2.0, head = g.length / p.head_ratio;
  const double tx = g.arrow_x + half * std::cos(g.direction), ty = g.arrow_y + half * std::sin(g.direction);
  Strokes s{};
  s.x[0][0] = 2 * g.arrow_x - tx, s.y[0][0] = 2 * g.arrow_y - ty, s.x[0][1] = tx, s.y[0][1] = ty;
  for (int k = 1; k <= 2; ++k) {
    const double angle = g.direction + (k == 1 ? p.head_angle : -p.head_angle);
    s.x[k][0] = tx, s.y[k][0] = ty;
    s.x[k][1] = tx - head * std::cos(angle), s.y[k][1] = ty - head * std::sin(angle);
  }
  for (int k = 0; k < 3; ++k) {
    for (int e = 0; e < 2; ++e) s.reach = std::max(s.reach, std::hypot(s.x[k][e] - g.arrow_x, s.y[k][e] - g.arrow_y));
  }
  s.reach += g.width / 2.0;
  return s;
}

// Two-sample Kolmogorov-Smirnov statistic.
double ks_statistic(std::vector<double> a, std::vector<double> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  double d = 0;
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const double v = std::min(a[i], b[j]);
    while (i < a.size() && a[i] == v) ++i;
    while (j < b.size() && b[j] == v) ++j;
    d = std::max(d, std::abs(double(i) / a.size() - double(j) / b.size()));
  }
  return d;
}

std::vector<std::uint8_t> read_bytes(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

std::uint32_t big_endian(const std::vector<std::uint8_t>& b, std::size_t at) {
  return (std::uint32_t{b[at]} << 24) | (std::uint32_t{b[at + 1]} << 16) | (std::uint32_t{b[at + 2]} << 8) | b[at + 3];
}

}  // namespace

TEST_CASE("labels agree with an independent ray-disk test on the sampled geometry", "[arrows]") {
  for (index_t size : {192, 384}) {
    const auto p = params_at(size, 7 + size);
    const auto batch = arrows::generate(p, 0, 5000);
    index_t positives = 0;
    for (index_t i = 0; i < 5000; ++i) {
      const auto g = arrows::sample_geometry(p, i);
      REQUIRE(batch.labels(i) == g.label);
      if (g.label == 1) {
        ++positives;
        REQUIRE(ray_penetration(g, g.radius / p.margin) >= -1e-9);  // hits the disk 20% smaller
      } else {
        REQUIRE(ray_penetration(g, g.radius * p.margin) <= 1e-9);  // misses the disk 20% larger
      }
    }
    CHECK(positives > 2000);
    CHECK(positives < 3000);
  }
}

TEST_CASE("pixels are black exactly where the centre is in the disk or within w/2 of a stroke", "[arrows]") {
  index_t borderline = 0, checked = 0, wrong = 0;
  std::string first_wrong;
  for (const auto& [size, channels] : {std::pair<index_t, index_t>{192, 1}, {384, 1}, {192, 3}}) {
    const auto p = params_at(size, 11, channels);
    const index_t count = size == 384 ? 40 : 120;
    const auto batch = arrows::generate(p, 1000, count);
    for (index_t i = 0; i < count; ++i) {
      const auto g = arrows::sample_geometry(p, 1000 + i);
      const auto s = strokes_of(p, g);
      for (index_t y = 0; y < size; ++y) {
        for (index_t x = 0; x < size; ++x) {
          const double px = x + 0.5, py = y + 0.5;
          // Signed slack of the nearest shape: > 0 inside, < 0 outside.
          double inside = g.radius - std::hypot(px - g.circle_x, py - g.circle_y);
          for (int k = 0; k < 3; ++k) {
            inside = std::max(inside, g.width / 2.0 - segment_distance(px, py, s.x[k][0], s.y[k][0], s.x[k][1], s.y[k][1]));
          }
          ++checked;
          if (std::abs(inside) < 1e-9) {
            ++borderline;
            continue;
          }
          for (index_t c = 0; c < channels; ++c) {
            if (batch.images(i, y, x, c) != (inside > 0 ? 0 : 255)) {
              if (wrong == 0) first_wrong = fmt::format("size {} sample {} pixel (y {}, x {})", size, 1000 + i, y, x);
              ++wrong;
            }
          }
        }
      }
    }
  }
  INFO(first_wrong);
  CHECK(wrong == 0);
  INFO(borderline << " of " << checked << " pixels within 1e-9 of an edge");
  CHECK(borderline * 100000 < checked);
}

TEST_CASE("objects stay inside the padded interior and apart", "[arrows]") {
  for (index_t size : {192, 384}) {
    const auto p = params_at(size, 3);
    const double lo = p.padding, hi = size - p.padding;
    for (index_t i = 0; i < 20000; ++i) {
      const auto g = arrows::sample_geometry(p, i);
      REQUIRE(g.arrow_x >= lo);
      REQUIRE(g.arrow_x < hi);
      REQUIRE(g.arrow_y >= lo);
      REQUIRE(g.arrow_y < hi);
      REQUIRE(g.circle_x >= lo);
      REQUIRE(g.circle_x < hi);
      REQUIRE(g.circle_y >= lo);
      REQUIRE(g.circle_y < hi);
      // Nothing is clipped: the disk and every stroke lie inside the image.
      REQUIRE(std::min(g.circle_x, g.circle_y) - g.radius >= 0);
      REQUIRE(std::max(g.circle_x, g.circle_y) + g.radius <= size);
      const double reach = strokes_of(p, g).reach;
      REQUIRE(std::min(g.arrow_x, g.arrow_y) - reach >= 0);
      REQUIRE(std::max(g.arrow_x, g.arrow_y) + reach <= size);
      // The circle keeps 2r from the arrow centre on each axis, so arrow and disk never touch.
      REQUIRE(std::abs(g.circle_x - g.arrow_x) >= 2 * g.radius - 1e-9);
      REQUIRE(std::abs(g.circle_y - g.arrow_y) >= 2 * g.radius - 1e-9);
      REQUIRE(std::hypot(g.circle_x - g.arrow_x, g.circle_y - g.arrow_y) > g.radius + reach);
      // The sampled sizes stay in their ranges.
      REQUIRE(g.length >= p.length_min);
      REQUIRE(g.length < p.length_max);
      REQUIRE(g.width >= p.width_min);
      REQUIRE(g.width < p.width_max);
      REQUIRE(g.radius >= p.radius_min);
      REQUIRE(g.radius < p.radius_max);
    }
  }
}

TEST_CASE("384 samples have the object sizes of 192 samples, farther apart", "[arrows]") {
  constexpr index_t n = 2000, chunk = 250;
  const auto small = arrows::split_preset(arrows::Split::val).params;
  const auto large = arrows::split_preset(arrows::Split::val_ext).params;
  REQUIRE(small.size == 192);
  REQUIRE(large.size == 384);
  struct Sizes {
    std::vector<double> radius, length, width, black, distance;
  };
  auto collect = [](const arrows::Params& p) {
    Sizes s;
    for (index_t first = 0; first < n; first += chunk) {
      const auto batch = arrows::generate(p, first, chunk);
      for (index_t i = 0; i < chunk; ++i) {
        const auto g = arrows::sample_geometry(p, first + i);
        s.radius.push_back(g.radius);
        s.length.push_back(double(g.length));
        s.width.push_back(double(g.width));
        s.distance.push_back(std::hypot(g.circle_x - g.arrow_x, g.circle_y - g.arrow_y));
        const auto image = xt::view(batch.images, i);
        s.black.push_back(double(std::count(image.begin(), image.end(), std::uint8_t{0})));
      }
    }
    return s;
  };
  const Sizes a = collect(small), b = collect(large);
  const double critical = 1.95 * std::sqrt(2.0 / n);  // KS at the 0.1% level
  CHECK(ks_statistic(a.radius, b.radius) < critical);
  CHECK(ks_statistic(a.length, b.length) < critical);
  CHECK(ks_statistic(a.width, b.width) < critical);
  CHECK(ks_statistic(a.black, b.black) < critical);  // the drawn area, from the pixels
  auto mean = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size()); };
  CHECK(mean(b.distance) > 1.5 * mean(a.distance));  // the extrapolation: same objects, farther apart
}

TEST_CASE("the class balance over 10,000 samples is within 2% of the requested fraction", "[arrows]") {
  for (double fraction : {0.5, 0.3, 0.85, 0.0, 1.0}) {
    auto p = params_at(64 + 2 * 30 + 4, 5);  // small images: only the labels matter here
    p.radius_max = 16;
    p.positive_fraction = fraction;
    const auto batch = arrows::generate(p, 0, 10000);
    const double got = std::accumulate(batch.labels.begin(), batch.labels.end(), 0.0) / 10000.0;
    INFO("requested " << fraction);
    CHECK(std::abs(got - fraction) <= 0.02);
  }
}

TEST_CASE("a sample depends only on (seed, index): threads, batching and order do not matter", "[arrows]") {
  const auto p = params_at(192, 99, 3);
  const auto one = arrows::generate(p, 500, 300, 1);
  const auto two = arrows::generate(p, 500, 300, 2);
  REQUIRE((one.images == two.images));
  REQUIRE((one.labels == two.labels));
  for (index_t i : {0, 1, 137, 299}) {
    const auto alone = arrows::generate(p, 500 + i, 1);
    REQUIRE((xt::view(alone.images, 0) == xt::view(one.images, i)));
    REQUIRE(alone.labels(0) == one.labels(i));
    std::vector<std::uint8_t> drawn(p.image_bytes());
    arrows::draw(p, arrows::sample_geometry(p, 500 + i), drawn);
    const auto image = xt::view(one.images, i);
    REQUIRE(std::equal(drawn.begin(), drawn.end(), image.begin()));
  }
  // The channel count changes only the layout: every channel equals the grey image.
  const auto grey = arrows::generate(params_at(192, 99, 1), 500, 300);
  for (index_t c = 0; c < 3; ++c) {
    REQUIRE((xt::view(one.images, xt::all(), xt::all(), xt::all(), c) ==
             xt::view(grey.images, xt::all(), xt::all(), xt::all(), 0)));
  }
  // Different indices and seeds give different samples.
  std::set<std::tuple<double, double, double>> seen;
  for (std::uint64_t seed : {1u, 2u}) {
    for (index_t i = 0; i < 2000; ++i) {
      const auto g = arrows::sample_geometry(params_at(192, seed), i);
      seen.emplace(g.arrow_x, g.circle_y, g.direction);
    }
  }
  CHECK(seen.size() == 4000);
}

TEST_CASE("the presets are the paper's splits", "[arrows]") {
  using S = arrows::Split;
  const std::tuple<S, const char*, index_t, index_t, std::uint64_t> expected[] = {
      {S::train, "train", 100000, 192, 1234}, {S::val, "val", 5120, 192, 100042},
      {S::val_ext, "val_ext", 5120, 384, 100043}, {S::test, "test", 10240, 192, 200042},
      {S::test_ext, "test_ext", 10240, 384, 200043}};
  for (const auto& [split, name, count, size, seed] : expected) {
    const auto preset = arrows::split_preset(split, 1234);
    CHECK(arrows::split_name(split) == name);
    CHECK(arrows::parse_split(name) == split);
    CHECK(preset.count == count);
    CHECK(preset.params.size == size);
    CHECK(preset.params.seed == seed);
    CHECK(preset.params.channels == 1);
    CHECK(preset.params.positive_fraction == 0.5);
    CHECK_NOTHROW(arrows::validate(preset.params));
  }
  CHECK(arrows::parse_split("custom") == S::custom);
  CHECK_THROWS_WITH(arrows::parse_split("training"), Catch::Contains("split") && Catch::Contains("training"));
}

TEST_CASE("PNG files have the image's size, the contact sheet one tile per sample", "[arrows]") {
  const auto dir = std::filesystem::temp_directory_path() / "flashlstm_arrow_tests";
  std::filesystem::create_directories(dir);
  const auto p = params_at(192, 21, 3);
  const auto batch = arrows::generate(p, 0, 1);
  arrows::write_png((dir / "one.png").string(), {batch.images.data(), batch.images.size()}, 192, 3);
  const auto one = read_bytes(dir / "one.png");
  REQUIRE(one.size() > 24);
  CHECK(std::equal(one.begin(), one.begin() + 8, std::vector<std::uint8_t>{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'}.begin()));
  CHECK(big_endian(one, 16) == 192);  // IHDR width, height
  CHECK(big_endian(one, 20) == 192);
  arrows::write_contact_sheet((dir / "sheet.png").string(), p, 0, 6, 3);
  const auto sheet = read_bytes(dir / "sheet.png");
  REQUIRE(sheet.size() > 24);
  CHECK(big_endian(sheet, 16) > 3 * 192);
  CHECK(big_endian(sheet, 16) < 3 * 240);
  CHECK(big_endian(sheet, 20) > 2 * 192);
  CHECK(big_endian(sheet, 20) < 2 * 240);
  CHECK_THROWS_WITH(arrows::write_png((dir / "missing" / "x.png").string(), {batch.images.data(), batch.images.size()}, 192, 3),
                    Catch::StartsWith("path:"));
  CHECK_THROWS_WITH(arrows::write_png((dir / "x.png").string(), {batch.images.data(), 100}, 192, 3),
                    Catch::StartsWith("image:"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("bad parameters and buffers throw Error naming the argument", "[arrows]") {
  auto bad = [](auto change, const char* argument) {
    arrows::Params p;
    change(p);
    INFO(argument);
    CHECK_THROWS_AS(arrows::validate(p), Error);
    CHECK_THROWS_WITH(arrows::validate(p), Catch::StartsWith(std::string(argument) + ":"));
    CHECK_THROWS_WITH(arrows::generate(p, 0, 1), Catch::StartsWith(std::string(argument) + ":"));
  };
  bad([](auto& p) { p.size = -192; }, "size");
  bad([](auto& p) { p.size = 60; }, "size");  // no interior left inside 2 * padding
  bad([](auto& p) { p.padding = -1; }, "padding");
  bad([](auto& p) { p.padding = std::numeric_limits<index_t>::max(); }, "padding");  // 2 * padding would overflow
  bad([](auto& p) { p.channels = 2; }, "channels");
  bad([](auto& p) { p.positive_fraction = 1.5; }, "positive_fraction");
  bad([](auto& p) { p.length_min = 0; }, "length_min");
  bad([](auto& p) { p.length_max = 15; }, "length_max");
  bad([](auto& p) { p.length_max = 80; }, "length_max");  // the arrow would reach past the padding
  bad([](auto& p) { p.width_min = 0; }, "width_min");
  bad([](auto& p) { p.width_max = 2; }, "width_max");
  bad([](auto& p) { p.radius_min = -1; }, "radius_min");
  bad([](auto& p) { p.radius_max = 10; }, "radius_max");
  bad([](auto& p) { p.size = 150; }, "radius_max");  // 4 * 30 does not fit the interior 90
  bad([](auto& p) { p.radius_max = 40; }, "radius_max");  // the disk would reach past the padding
  bad([](auto& p) { p.margin = 0.9; }, "margin");
  bad([](auto& p) { p.margin = 3.0; }, "margin");
  bad([](auto& p) { p.head_angle = 0; }, "head_angle");
  bad([](auto& p) { p.head_ratio = 0.5; }, "head_ratio");

  const arrows::Params p;
  std::vector<std::uint8_t> images(4 * p.image_bytes()), labels(4);
  CHECK_NOTHROW(arrows::generate_into(p, 0, 4, images, labels));
  CHECK_THROWS_WITH(arrows::generate_into(p, 0, 5, images, std::span(labels)), Catch::StartsWith("images:"));
  CHECK_THROWS_WITH(arrows::generate_into(p, 0, 4, images, std::span(labels).first(3)), Catch::StartsWith("labels:"));
  CHECK_THROWS_WITH(arrows::generate_into(p, 0, -1, images, labels), Catch::StartsWith("count:"));
  CHECK_THROWS_WITH(arrows::generate_into(p, -1, 4, images, labels), Catch::StartsWith("first:"));
  CHECK_THROWS_WITH(arrows::generate_into(p, 0, 4, images, labels, -2), Catch::StartsWith("threads:"));
  CHECK_THROWS_WITH(arrows::sample_geometry(p, -3), Catch::StartsWith("index:"));
  CHECK_THROWS_WITH(arrows::draw(p, arrows::sample_geometry(p, 0), std::span(images).first(100)),
                    Catch::StartsWith("image:"));
  auto g = arrows::sample_geometry(p, 0);
  g.arrow_x = std::nan("");
  CHECK_THROWS_WITH(arrows::draw(p, g, images), Catch::StartsWith("geometry:"));
}

TEST_CASE("index ranges, counts and thread counts that cannot work are refused before any work", "[arrows]") {
  const arrows::Params p;
  constexpr index_t largest = std::numeric_limits<index_t>::max();
  std::vector<std::uint8_t> images(4 * p.image_bytes()), labels(4);
  // first + i would overflow: refused, not wrapped (UBSan checks that nothing overflows on the way).
  CHECK_THROWS_WITH(arrows::generate(p, largest - 1, 4), Catch::StartsWith("count: first + count must be <="));
  CHECK_THROWS_WITH(arrows::generate_into(p, largest, 1, images, labels), Catch::StartsWith("count:"));
  CHECK_NOTHROW(arrows::generate_into(p, largest - 4, 4, images, labels));
  // count * image bytes beyond any memory: refused with the number, before allocating.
  CHECK_THROWS_WITH(arrows::generate(p, 0, index_t{1} << 40), Catch::StartsWith("count:") && Catch::Contains("GiB"));
  CHECK_THROWS_WITH(arrows::generate_into(p, 0, index_t{1} << 60, images, labels), Catch::StartsWith("images:"));
  CHECK_THROWS_WITH(arrows::write_contact_sheet("unused.png", p, 0, index_t{1} << 40), Catch::StartsWith("count:"));
  CHECK_THROWS_WITH(arrows::write_png("unused.png", images, index_t{1} << 40, 1), Catch::StartsWith("image:"));
  CHECK_FALSE(std::filesystem::exists("unused.png"));
  // Thousands of OpenMP threads crash inside the runtime: bounded, the bound named.
  const int bound = datasets::max_threads();
  CHECK(bound >= 16);
  CHECK_THROWS_WITH(arrows::generate(p, 0, 1, 65536),
                    Catch::StartsWith("threads: must be in [0, " + std::to_string(bound) + "]"));
  CHECK_THROWS_WITH(arrows::generate(p, 0, 1, bound + 1), Catch::StartsWith("threads:"));
  CHECK_NOTHROW(arrows::generate(p, 0, 1, bound));
}

TEST_CASE("an OutputFile appears under its name only when committed, and failures name the file", "[arrows][io]") {
  const auto dir = std::filesystem::temp_directory_path() / "flashlstm_output_file_tests";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto read = [](const std::filesystem::path& path) {
    std::ifstream file(path);
    return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  };
  auto entries = [&] {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir)) names.insert(e.path().filename().string());
    return names;
  };
  const auto path = dir / "a.txt";
  {  // written under a temporary name; the old file stays as it was until the commit
    std::ofstream(path) << "old";
    OutputFile file(path, "out");
    file.write("new");
    CHECK(read(path) == "old");
    CHECK(entries().size() == 2);
    file.commit();
    CHECK(read(path) == "new");
    CHECK(entries() == std::set<std::string>{"a.txt"});
  }
  {  // never committed (an exception, an interrupted run): the temporary file is removed
    OutputFile file(path, "out");
    file.write("partial");
  }
  CHECK(read(path) == "new");
  CHECK(entries() == std::set<std::string>{"a.txt"});

  // The parent is a regular file (ENOTDIR), a folder, a full device (ENOSPC at the flush).
  CHECK_THROWS_WITH(write_file(path / "b.txt", "x", "out"),
                    Catch::StartsWith("out: cannot open '" + (path / "b.txt").string() + "': Not a directory"));
  CHECK_THROWS_WITH(write_file(dir, "x", "out"), Catch::StartsWith("out:") && Catch::Contains("folder"));
  if (std::filesystem::is_character_file("/dev/full")) {
    CHECK_THROWS_WITH(write_file("/dev/full", "x", "json"),
                      Catch::StartsWith("json: cannot write '/dev/full': No space left on device"));
    OutputFile full("/dev/full", "out");  // a large write fails at once, not only at the close
    CHECK_THROWS_WITH(full.write(std::string(1 << 20, 'x')), Catch::StartsWith("out: cannot write '/dev/full'"));
  }
  CHECK_NOTHROW(remove_file(dir / "missing", "out"));
  CHECK_THROWS_WITH(remove_file(path / "c", "out"), Catch::StartsWith("out: cannot remove"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("PNG files and contact sheets that cannot be written are errors naming the file", "[arrows][io]") {
  const auto dir = std::filesystem::temp_directory_path() / "flashlstm_arrow_png_failures";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto p = params_at(192, 5);
  const auto batch = arrows::generate(p, 0, 1);
  const std::span<const std::uint8_t> image(batch.images.data(), batch.images.size());
  std::ofstream(dir / "file") << "a regular file";
  CHECK_THROWS_WITH(arrows::write_png((dir / "file" / "x.png").string(), image, 192, 1),
                    Catch::StartsWith("path:") && Catch::Contains("Not a directory"));
  CHECK_THROWS_WITH(arrows::write_contact_sheet((dir / "file" / "sheet.png").string(), p, 0, 4),
                    Catch::StartsWith("path:") && Catch::Contains("Not a directory"));
  if (std::filesystem::is_character_file("/dev/full")) {
    CHECK_THROWS_WITH(arrows::write_png("/dev/full", image, 192, 1), Catch::Contains("No space left on device"));
    CHECK_THROWS_WITH(arrows::write_contact_sheet("/dev/full", p, 0, 4), Catch::Contains("No space left on device"));
  }
  CHECK_NOTHROW(arrows::write_png((dir / "x.png").string(), image, 192, 1));
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.insert(e.path().filename().string());
  CHECK(names == std::set<std::string>{"file", "x.png"});  // no temporary file left behind
  std::filesystem::remove_all(dir);
}
