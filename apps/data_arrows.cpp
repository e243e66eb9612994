// `flashlstm data arrows`: writes an arrow-pointing split to a folder. The split's preset (size, seed,
// count) is the starting point; any option given on the command line overrides it, and meta.json
// records what was used. Output, numpy-friendly:
//   images.npy  uint8 (N, size, size, channels), 255 background, 0 objects
//   labels.npy  uint8 (N), 1 when the arrow points at the circle
//   meta.json   split, shape, seed, every parameter, class balance
//   png/<index>_<label>.png with --png; a contact sheet of the first samples with --sheet FILE.
// Samples are made through the batch API in chunks and streamed to disk, so memory stays bounded
// whatever N (the 100,000-image train split is 3.7 GB); a count whose files would not fit the free
// space of the folder is refused before anything is written.
//
// A folder is never left looking complete when it is not: a stale meta.json is removed first, every
// file is written under a temporary name and renamed once complete (core/output_file.hpp), the
// two arrays after the last chunk, and meta.json is written last.
#include "apps/data.hpp"
#include "apps/progress.hpp"
#include "datasets/arguments.hpp"
#include "datasets/arrow_pointing/arrow_pointing.hpp"
#include "core/output_file.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

namespace flashlstm::apps {

namespace {

namespace arrows = datasets::arrows;

constexpr index_t chunk = 1024;

struct Args {
  std::string split, out, sheet;
  index_t n = 0, sheet_count = 16;
  int threads = 0;
  bool png = false;
  CLI::Option* n_option = nullptr;
  arrows::Params given;  // the values of the parameter options; only those given override the preset
  std::vector<std::function<void(arrows::Params&)>> overrides;
};

template <class T>
void add_param(CLI::App& cmd, const std::shared_ptr<Args>& args, const std::string& name, T arrows::Params::*field,
               const std::string& help) {
  auto* option = cmd.add_option(name, args->given.*field, help);
  args->overrides.push_back([option, field, given = &args->given](arrows::Params& p) {
    if (option->count() > 0) p.*field = given->*field;
  });
}

// numpy's .npy format, version 1.0: magic, version, header length, a Python dict literal padded with
// spaces to a multiple of 64 bytes and ending in '\n', then the raw C-order data.
std::string npy_header(const std::vector<index_t>& shape) {
  std::string dims;
  for (index_t d : shape) dims += fmt::format("{}, ", d);
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = fmt::format("{{'descr': '|u1', 'fortran_order': False, 'shape': ({}), }}", dims);
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  const auto length = static_cast<std::uint16_t>(header.size());
  const char length_bytes[2] = {static_cast<char>(length & 0xff), static_cast<char>(length >> 8)};
  return std::string("\x93NUMPY\x01\x00", 8) + std::string(length_bytes, 2) + header;
}

// The free space of `folder` must hold `bytes` (the new files sit beside the old ones until renamed).
void require_disk(const std::filesystem::path& folder, double bytes, std::string_view what) {
  std::error_code error;
  const auto space = std::filesystem::space(folder, error);
  constexpr double GiB = 1024.0 * 1024.0 * 1024.0;
  require(error || bytes <= static_cast<double>(space.available), "n",
          "{} need {:.3g} GiB, more than the {:.3g} GiB free in '{}'", what, bytes / GiB,
          static_cast<double>(space.available) / GiB, folder.string());
}

void run(const Args& args) {
  const arrows::Split split = arrows::parse_split(args.split);
  const arrows::SplitPreset preset = arrows::split_preset(split, args.given.seed);
  arrows::Params params = preset.params;
  for (const auto& apply : args.overrides) apply(params);
  require(split != arrows::Split::custom || args.n_option->count() > 0, "n", "is required with --split custom");
  const index_t n = args.n_option->count() > 0 ? args.n : preset.count;
  require(n >= 0, "n", "must be >= 0, got {}", n);
  datasets::thread_count(args.threads);  // checked before anything is written
  require(args.sheet.empty() || (args.sheet_count >= 1 && n >= 1), "sheet",
          "needs --sheet-count >= 1 and --n >= 1, got {} and {}", args.sheet_count, n);
  arrows::validate(params);

  const std::filesystem::path out = args.out;
  std::error_code error;
  std::filesystem::create_directories(out / (args.png ? "png" : ""), error);
  require(!error, "out", "cannot create '{}': {}", out.string(), error.message());
  remove_file(out / "meta.json", "out");  // stale: the folder is complete only once it is back

  const index_t size = params.size, channels = params.channels, bytes = params.image_bytes();
  require_disk(out, static_cast<double>(n) * static_cast<double>(bytes + 1),
               fmt::format("{} images of {}x{}x{}", n, size, size, channels));

  if (!args.sheet.empty()) {  // first: cheap, and a bad path fails before the long part
    arrows::write_contact_sheet(args.sheet, params, 0, std::min(args.sheet_count, n));
  }

  OutputFile images_file(out / "images.npy", "out"), labels_file(out / "labels.npy", "out");
  images_file.write(npy_header({n, size, size, channels}));
  labels_file.write(npy_header({n}));

  std::vector<std::uint8_t> images(std::min(n, chunk) * bytes), labels(std::min(n, chunk));
  index_t positives = 0;
  ProgressBar bar(fmt::format("arrows {}", arrows::split_name(split)), n);
  for (index_t first = 0, count = 0; first < n; first += count) {
    count = std::min(chunk, n - first);
    arrows::generate_into(params, first, count, images, labels, args.threads);
    images_file.write({reinterpret_cast<const char*>(images.data()), static_cast<std::size_t>(count * bytes)});
    labels_file.write({reinterpret_cast<const char*>(labels.data()), static_cast<std::size_t>(count)});
    for (index_t i = 0; i < count; ++i) {
      positives += labels[i];
      if (args.png) {
        const auto name = fmt::format("{:06d}_{}.png", first + i, labels[i]);
        arrows::write_png((out / "png" / name).string(), std::span(images).subspan(i * bytes, bytes), size,
                          channels);
      }
    }
    bar.advance(count);
  }
  images_file.close();
  labels_file.close();
  images_file.commit();
  labels_file.commit();
  bar.finish();
  const double seconds = bar.seconds();

  const nlohmann::json meta = {
      {"generator", "flashlstm arrow-pointing extrapolation"},
      {"split", arrows::split_name(split)},
      {"count", n},
      {"images", {{"file", "images.npy"}, {"dtype", "uint8"}, {"shape", {n, size, size, channels}}}},
      {"labels", {{"file", "labels.npy"}, {"dtype", "uint8"}, {"shape", {n}}}},
      {"positives", positives},
      {"params",
       {{"size", size},
        {"channels", channels},
        {"seed", params.seed},
        {"positive_fraction", params.positive_fraction},
        {"length", {params.length_min, params.length_max}},
        {"width", {params.width_min, params.width_max}},
        {"radius", {params.radius_min, params.radius_max}},
        {"padding", params.padding},
        {"margin", params.margin},
        {"head_angle", params.head_angle},
        {"head_ratio", params.head_ratio}}}};
  write_file(out / "meta.json", meta.dump(2) + "\n", "out");

  const double percent = n > 0 ? 100.0 * double(positives) / double(n) : 0.0;
  fmt::print("arrows {}: {} images {}x{}x{} seed {} -> {}: {} positive ({:.1f}%), {} negative; {:.2f} s ({:.0f} "
             "images/s)\n",
             arrows::split_name(split), n, size, size, channels, params.seed, out.string(), positives, percent,
             n - positives, seconds, seconds > 0 ? double(n) / seconds : 0.0);
}

}  // namespace

void add_data_arrows_command(CLI::App& data) {
  auto* cmd = data.add_subcommand("arrows", "Arrow-pointing extrapolation images: does the arrow point at the circle?");
  auto args = std::make_shared<Args>();
  cmd->add_option("--split", args->split, "train (100,000 @ 192), val (5,120 @ 192), val_ext (5,120 @ 384), "
                                          "test (10,240 @ 192), test_ext (10,240 @ 384) or custom")
      ->required();
  cmd->add_option("--out", args->out, "Output folder")->required();
  args->n_option = cmd->add_option("--n", args->n, "Number of images (default: the split's)");
  add_param(*cmd, args, "--size", &arrows::Params::size, "Image height = width (default: the split's)");
  add_param(*cmd, args, "--seed", &arrows::Params::seed, "Dataset seed (default: the split's; 42 for train, custom)");
  add_param(*cmd, args, "--channels", &arrows::Params::channels, "1 or 3 (default 1)");
  add_param(*cmd, args, "--positive-fraction", &arrows::Params::positive_fraction, "P(label = 1) (default 0.5)");
  add_param(*cmd, args, "--length-min", &arrows::Params::length_min, "Arrow length, integer U[min, max) (default 15)");
  add_param(*cmd, args, "--length-max", &arrows::Params::length_max, "(default 30)");
  add_param(*cmd, args, "--width-min", &arrows::Params::width_min, "Line width, integer U[min, max) (default 2)");
  add_param(*cmd, args, "--width-max", &arrows::Params::width_max, "(default 4)");
  add_param(*cmd, args, "--radius-min", &arrows::Params::radius_min, "Circle radius, U[min, max) (default 15)");
  add_param(*cmd, args, "--radius-max", &arrows::Params::radius_max, "(default 30)");
  add_param(*cmd, args, "--padding", &arrows::Params::padding, "Border kept free of object centres (default 30)");
  add_param(*cmd, args, "--margin", &arrows::Params::margin,
            "Positives hit the disk r/margin, negatives miss margin*r (default 1.2)");
  add_param(*cmd, args, "--head-angle", &arrows::Params::head_angle, "Head stroke angle, radians (default 0.5)");
  add_param(*cmd, args, "--head-ratio", &arrows::Params::head_ratio, "Head stroke length = L / ratio (default 2.5)");
  cmd->add_option("--threads", args->threads, "OpenMP threads (default 0: all)");
  cmd->add_flag("--png", args->png, "Also write every image as png/<index>_<label>.png");
  cmd->add_option("--sheet", args->sheet, "Write a contact sheet PNG of the first samples to this file");
  cmd->add_option("--sheet-count", args->sheet_count, "Number of samples on the contact sheet (default 16)");
  cmd->callback([args] { run(*args); });
}

}  // namespace flashlstm::apps
