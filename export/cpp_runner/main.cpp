// edgesr ExecuTorch reference runner.
//
//   edgesr_et_runner MODEL.pte INPUT.f32 C H W SCALE OUTPUT.f32 [TILE OVERLAP [ALIGN [MIN_SIZE [MULTIPLE]]]]
//
// INPUT.f32: raw little-endian float32, NCHW with N = 1 (C*H*W values, RGB, [0, 1]), i.e.
// what numpy's `x.astype('<f4').tofile(path)` writes for a 1xCxHxW array.
// OUTPUT.f32: the same layout, 1 x C x (H*SCALE) x (W*SCALE).
//
// The bundle's manifest gives the arguments: TILE = tiling.tile, OVERLAP = tiling.overlap,
// ALIGN = tiling.alignment, MIN_SIZE = io.min_size, MULTIPLE = io.size_multiple. Without TILE (or TILE = 0) the whole
// image is one model call. With TILE > 0 the image is processed by the bundle's tiling
// rule (manifest.json "tiling"): cores of at most TILE x TILE input pixels whose starts are
// multiples of ALIGN (default 1); each core extended by OVERLAP pixels on every side,
// clipped at the image border (never padded inside the image); the model runs on that box
// and only the core's region (x SCALE) of its output is kept. tiling.exact == true means
// this equals the untiled output (measured when the bundle was made); otherwise
// tiling.measured.error says by how much it differs. TILE must exceed OVERLAP.
// An image smaller than MIN_SIZE (default 1) in H or W, or not a multiple of MULTIPLE (default 1),
// is padded at the bottom/right by reflection (edge for 1-pixel images) up to
// max(MIN_SIZE, H) rounded up to MULTIPLE (likewise W), and the output is cropped back, as
// `edgesr upscale` does: no model call ever sees an input size the model does not accept.
// A .pte exported with dynamic shapes accepts boxes up to its maximum size (the bundle's
// artifact "shape_range"); pick TILE + 2 * OVERLAP within it.
//
// Prints one line: "output 1 C H' W' tiles N ms T". Exit code != 0 with a one-line message
// on any error.

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::from_blob;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "edgesr_et_runner: error: %s\n", msg.c_str());
  return 1;
}

bool parse_int(const char* s, long& out) {
  char* end = nullptr;
  out = std::strtol(s, &end, 10);
  return end && *end == '\0';
}

// Balanced split of [0, n) into ceil(n / tile) parts whose starts are multiples of `multiple`,
// as edgesr.tiling._split.
std::vector<std::pair<long, long>> split(long n, long tile, long multiple) {
  std::vector<std::pair<long, long>> out;
  if (tile <= 0 || tile >= n) {
    out.emplace_back(0, n);
    return out;
  }
  const long units = (n + multiple - 1) / multiple;
  const long k = std::min((n + tile - 1) / tile, units);
  const long base = units / k, rem = units % k;
  long start = 0;
  for (long i = 0; i < k; ++i) {
    const long end = std::min(n, start + (base + (i < rem ? 1 : 0)) * multiple);
    out.emplace_back(start, end);
    start = end;
  }
  return out;
}

long round_up(long v, long m) { return (v + m - 1) / m * m; }

// numpy.pad(mode="reflect") index for position i of a padded axis of original length n.
long reflect(long i, long n) {
  if (n == 1) return 0;
  const long period = 2 * (n - 1), m = i % period;
  return m < n ? m : period - m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8 && (argc < 10 || argc > 13)) {
    std::fprintf(stderr,
                 "usage: %s MODEL.pte INPUT.f32 C H W SCALE OUTPUT.f32 [TILE OVERLAP [ALIGN [MIN_SIZE [MULTIPLE]]]]\n"
                 "  raw float32 NCHW (N=1) in and out; see the header of main.cpp\n",
                 argv[0]);
    return 2;
  }
  const std::string model_path = argv[1], in_path = argv[2], out_path = argv[7];
  long c, h, w, s, tile = 0, overlap = 0, align = 1, min_size = 1, multiple = 1;
  if (!parse_int(argv[3], c) || !parse_int(argv[4], h) || !parse_int(argv[5], w) || !parse_int(argv[6], s) ||
      c < 1 || h < 1 || w < 1 || s < 1)
    return fail("C H W SCALE must be positive integers");
  if (argc >= 10 && (!parse_int(argv[8], tile) || !parse_int(argv[9], overlap) || tile < 0 || overlap < 0))
    return fail("TILE and OVERLAP must be integers >= 0");
  if (argc >= 11 && (!parse_int(argv[10], align) || align < 1)) return fail("ALIGN must be an integer >= 1");
  if (argc >= 12 && (!parse_int(argv[11], min_size) || min_size < 1))
    return fail("MIN_SIZE must be an integer >= 1");
  if (argc >= 13 && (!parse_int(argv[12], multiple) || multiple < 1))
    return fail("MULTIPLE must be an integer >= 1");
  tile = round_up(tile, align);
  overlap = round_up(overlap, align);
  if (tile > 0 && tile <= overlap)
    return fail("TILE " + std::to_string(tile) + " must exceed OVERLAP " + std::to_string(overlap) +
                " (boxes would be mostly overlap)");

  std::vector<float> src(static_cast<size_t>(c * h * w));
  {
    std::ifstream f(in_path, std::ios::binary | std::ios::ate);
    if (!f) return fail("cannot open " + in_path);
    const auto bytes = static_cast<long>(f.tellg());
    if (bytes != static_cast<long>(src.size() * sizeof(float)))
      return fail(in_path + " has " + std::to_string(bytes) + " bytes, expected C*H*W*4 = " +
                  std::to_string(src.size() * sizeof(float)));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(src.data()), bytes);
  }
  // below the model's minimum or off its size multiple: pad by reflection at the bottom/right,
  // crop the output back
  const long ph = round_up(std::max(h, min_size), multiple), pw = round_up(std::max(w, min_size), multiple);
  std::vector<float> img;
  if (ph == h && pw == w) {
    img.swap(src);
  } else {
    img.resize(static_cast<size_t>(c * ph * pw));
    const bool edge = std::min(h, w) == 1;  // a 1-pixel-wide image repeats its edge on both axes
    for (long ch = 0; ch < c; ++ch)
      for (long y = 0; y < ph; ++y)
        for (long x = 0; x < pw; ++x) {
          const long sy = edge ? std::min(y, h - 1) : reflect(y, h), sx = edge ? std::min(x, w - 1) : reflect(x, w);
          img[(ch * ph + y) * pw + x] = src[(ch * h + sy) * w + sx];
        }
  }

  Module module(model_path, Module::LoadMode::File);
  if (const Error e = module.load_method("forward"); e != Error::Ok)
    return fail("cannot load " + model_path + " (ExecuTorch error " + std::to_string(static_cast<int>(e)) +
                "; is it a .pte with the XNNPACK delegate?)");

  const long oh = h * s, ow = w * s;  // output size (of the unpadded image)
  std::vector<float> out(static_cast<size_t>(c * oh * ow));
  std::vector<float> box;
  const auto ys = split(ph, tile, align), xs = split(pw, tile, align);
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& [y0, y1] : ys) {
    for (const auto& [x0, x1] : xs) {
      const long by0 = std::max(0L, y0 - overlap), by1 = std::min(ph, y1 + overlap);
      const long bx0 = std::max(0L, x0 - overlap), bx1 = std::min(pw, x1 + overlap);
      const long bh = by1 - by0, bw = bx1 - bx0;
      box.resize(static_cast<size_t>(c * bh * bw));
      for (long ch = 0; ch < c; ++ch)
        for (long y = 0; y < bh; ++y)
          std::copy_n(&img[(ch * ph + by0 + y) * pw + bx0], bw, &box[(ch * bh + y) * bw]);
      auto input = from_blob(box.data(), {1, static_cast<int>(c), static_cast<int>(bh), static_cast<int>(bw)},
                             ScalarType::Float);
      const auto result = module.forward(input);
      if (!result.ok())
        return fail("forward failed on a " + std::to_string(bh) + "x" + std::to_string(bw) +
                    " box (ExecuTorch error " + std::to_string(static_cast<int>(result.error())) +
                    "; larger than the .pte's maximum shape?)");
      const auto& y = result->at(0).toTensor();
      if (y.dim() != 4 || y.size(1) != c || y.size(2) != bh * s || y.size(3) != bw * s)
        return fail("model output shape does not match SCALE " + std::to_string(s));
      const float* yp = y.const_data_ptr<float>();
      const long yh = bh * s, yw = bw * s;
      const long cols = std::min(x1 * s, ow) - x0 * s;  // the padded part is cropped
      if (cols <= 0) continue;
      for (long ch = 0; ch < c; ++ch)
        for (long oy = y0 * s; oy < std::min(y1 * s, oh); ++oy)
          std::copy_n(&yp[(ch * yh + (oy - by0 * s)) * yw + (x0 - bx0) * s], cols,
                      &out[(ch * oh + oy) * ow + x0 * s]);
    }
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const std::string tmp = out_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return fail("cannot write " + tmp);
    f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(float)));
    if (!f) return fail("short write to " + tmp);
  }
  if (std::rename(tmp.c_str(), out_path.c_str()) != 0) return fail("cannot rename " + tmp + " to " + out_path);
  std::printf("output 1 %ld %ld %ld tiles %zu ms %.2f\n", c, oh, ow, ys.size() * xs.size(), ms);
  return 0;
}
