// PNG output of the APE generator: single images and a contact sheet (a grid of framed, labelled
// tiles) for looking at a dataset. libpng's simplified write API, because libpng16 is on every machine
// we run on (the GPU machine included), and the simplified API needs no setjmp error handling. It
// encodes into memory; the bytes go to disk through an OutputFile (a temporary name, every write and
// the close checked, then renamed), so a failed write is an error naming the file.
//
// The label is shown twice per tile, so that it reads in grey and for colour-blind readers: the frame
// colour (Okabe-Ito blue for 1, vermillion for 0) and the digit drawn in the frame's header band from
// a 3 x 5 bitmap font scaled 2x.
#include "datasets/arrow_pointing/arrow_pointing.hpp"

#include "core/memory.hpp"
#include "core/output_file.hpp"

#include <png.h>

#include <array>
#include <cmath>
#include <vector>

namespace flashlstm::datasets::arrows {

namespace {

void write_png_file(const std::string& path, const std::uint8_t* data, index_t width, index_t height,
                    index_t channels) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  png_alloc_size_t bytes = 0;  // a first call with no buffer gives the size
  bool ok = png_image_write_to_memory(&image, nullptr, &bytes, 0, data, 0, nullptr) != 0;
  std::vector<char> png(ok ? bytes : 0);
  ok = ok && png_image_write_to_memory(&image, png.data(), &bytes, 0, data, 0, nullptr) != 0;
  const std::string message = ok ? "" : image.message;
  png_image_free(&image);
  require(ok, "path", "cannot encode PNG '{}': {}", path, message);
  write_file(path, {png.data(), bytes}, "path");
}

using Rgb = std::array<std::uint8_t, 3>;

constexpr Rgb sheet_background{235, 235, 235}, digit_colour{255, 255, 255};
constexpr Rgb label_colour[2] = {{213, 94, 0}, {0, 114, 178}};  // label 0, label 1
constexpr index_t frame = 4, band = 16, gap = 6, digit_scale = 2;
// Rows of the 3 x 5 glyphs, most significant of the three bits on the left.
constexpr std::array<std::uint8_t, 5> glyph[2] = {{0b111, 0b101, 0b101, 0b101, 0b111},
                                                   {0b010, 0b110, 0b010, 0b010, 0b111}};

class Sheet {
 public:
  Sheet(index_t width, index_t height) : width_(width), height_(height), rgb_(width * height * 3) {
    fill(0, 0, width, height, sheet_background);
  }

  void fill(index_t x0, index_t y0, index_t w, index_t h, const Rgb& colour) {
    for (index_t y = y0; y < y0 + h; ++y) {
      for (index_t x = x0; x < x0 + w; ++x) set(y, x, colour);
    }
  }

  void set(index_t y, index_t x, const Rgb& colour) { std::copy(colour.begin(), colour.end(), &rgb_[(y * width_ + x) * 3]); }

  void digit(index_t x0, index_t y0, std::uint8_t label) {
    for (index_t row = 0; row < 5; ++row) {
      for (index_t col = 0; col < 3; ++col) {
        if ((glyph[label][row] >> (2 - col)) & 1) {
          fill(x0 + col * digit_scale, y0 + row * digit_scale, digit_scale, digit_scale, digit_colour);
        }
      }
    }
  }

  void write(const std::string& path) const { write_png_file(path, rgb_.data(), width_, height_, 3); }

 private:
  index_t width_, height_;
  std::vector<std::uint8_t> rgb_;
};

}  // namespace

void write_png(const std::string& path, std::span<const std::uint8_t> image, index_t size, index_t channels) {
  require(size > 0, "size", "must be > 0, got {}", size);
  require(channels == 1 || channels == 3, "channels", "must be 1 or 3, got {}", channels);
  const double bytes = static_cast<double>(size) * static_cast<double>(size) * static_cast<double>(channels);
  require(static_cast<double>(image.size()) >= bytes, "image",
          "buffer holds {} bytes, need {:.0f} for a {}x{}x{} image", image.size(), bytes, size, size, channels);
  write_png_file(path, image.data(), size, size, channels);
}

void write_contact_sheet(const std::string& path, const Params& params, index_t first, index_t count,
                         index_t columns) {
  require(count >= 1, "count", "must be >= 1, got {}", count);
  require(columns >= 0, "columns", "must be >= 0 (0: a near-square grid), got {}", columns);
  validate(params);
  const index_t cols = std::min(count, columns > 0 ? columns : static_cast<index_t>(std::ceil(std::sqrt(count))));
  const index_t rows = (count - 1) / cols + 1;
  const index_t size = params.size, tile_w = size + 2 * frame, tile_h = size + band + frame;
  auto extent = [](index_t tiles, index_t tile) {  // gap, tile, gap, ..., tile, gap
    return static_cast<double>(tiles) * static_cast<double>(tile + gap) + gap;
  };
  const double width = extent(cols, tile_w), height = extent(rows, tile_h);
  require_memory("count", 3 * width * height,
                 fmt::format("a contact sheet of {} tiles in {} columns ({:.0f}x{:.0f} pixels)", count, cols, width,
                             height));
  const Batch batch = generate(params, first, count);
  Sheet sheet(static_cast<index_t>(width), static_cast<index_t>(height));
  for (index_t i = 0; i < count; ++i) {
    const index_t x0 = gap + (i % cols) * (tile_w + gap), y0 = gap + (i / cols) * (tile_h + gap);
    const std::uint8_t label = batch.labels(i);
    sheet.fill(x0, y0, tile_w, tile_h, label_colour[label]);
    sheet.digit(x0 + frame + 1, y0 + (band - 5 * digit_scale) / 2, label);
    for (index_t y = 0; y < size; ++y) {
      for (index_t x = 0; x < size; ++x) {
        const std::uint8_t v = batch.images(i, y, x, 0);
        sheet.set(y0 + band + y, x0 + frame + x, {v, v, v});
      }
    }
  }
  sheet.write(path);
}

}  // namespace flashlstm::datasets::arrows
