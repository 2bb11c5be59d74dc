// edgesr ExecuTorch reference runner.
//
//   edgesr_et_runner MODEL.pte INPUT.f32 C H W SCALE OUTPUT.f32 [TILE OVERLAP]
//
// INPUT.f32: raw little-endian float32, NCHW with N = 1 (C*H*W values, RGB, [0, 1]), i.e.
// what numpy's `x.astype('<f4').tofile(path)` writes for a 1xCxHxW array.
// OUTPUT.f32: the same layout, 1 x C x (H*SCALE) x (W*SCALE).
//
// Without TILE (or TILE = 0) the whole image is one model call. With TILE > 0 the image is
// processed by the bundle's tiling rule (manifest.json "tiling"): cores of at most TILE x TILE
// input pixels; each core extended by OVERLAP pixels on every side, clipped at the image
// border (never padded inside the image); the model runs on that box and only the core's
// region (x SCALE) of its output is kept. OVERLAP >= receptive field => tiled == untiled.
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

// Balanced split of [0, n) into ceil(n / tile) parts, as edgesr.upscale._split (size multiple 1).
std::vector<std::pair<long, long>> split(long n, long tile) {
  std::vector<std::pair<long, long>> out;
  if (tile <= 0 || tile >= n) {
    out.emplace_back(0, n);
    return out;
  }
  long k = (n + tile - 1) / tile;
  long base = n / k, rem = n % k, start = 0;
  for (long i = 0; i < k; ++i) {
    long end = start + base + (i < rem ? 1 : 0);
    out.emplace_back(start, end);
    start = end;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8 && argc != 10) {
    std::fprintf(stderr,
                 "usage: %s MODEL.pte INPUT.f32 C H W SCALE OUTPUT.f32 [TILE OVERLAP]\n"
                 "  raw float32 NCHW (N=1) in and out; see the header of main.cpp\n",
                 argv[0]);
    return 2;
  }
  const std::string model_path = argv[1], in_path = argv[2], out_path = argv[7];
  long c, h, w, s, tile = 0, overlap = 0;
  if (!parse_int(argv[3], c) || !parse_int(argv[4], h) || !parse_int(argv[5], w) || !parse_int(argv[6], s) ||
      c < 1 || h < 1 || w < 1 || s < 1)
    return fail("C H W SCALE must be positive integers");
  if (argc == 10 && (!parse_int(argv[8], tile) || !parse_int(argv[9], overlap) || tile < 0 || overlap < 0))
    return fail("TILE and OVERLAP must be integers >= 0");

  std::vector<float> img(static_cast<size_t>(c * h * w));
  {
    std::ifstream f(in_path, std::ios::binary | std::ios::ate);
    if (!f) return fail("cannot open " + in_path);
    const auto bytes = static_cast<long>(f.tellg());
    if (bytes != static_cast<long>(img.size() * sizeof(float)))
      return fail(in_path + " has " + std::to_string(bytes) + " bytes, expected C*H*W*4 = " +
                  std::to_string(img.size() * sizeof(float)));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(img.data()), bytes);
  }

  Module module(model_path, Module::LoadMode::File);
  if (const Error e = module.load_method("forward"); e != Error::Ok)
    return fail("cannot load " + model_path + " (ExecuTorch error " + std::to_string(static_cast<int>(e)) +
                "; is it a .pte with the XNNPACK delegate?)");

  const long oh = h * s, ow = w * s;
  std::vector<float> out(static_cast<size_t>(c * oh * ow));
  std::vector<float> box;
  const auto ys = split(h, tile), xs = split(w, tile);
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& [y0, y1] : ys) {
    for (const auto& [x0, x1] : xs) {
      const long by0 = std::max(0L, y0 - overlap), by1 = std::min(h, y1 + overlap);
      const long bx0 = std::max(0L, x0 - overlap), bx1 = std::min(w, x1 + overlap);
      const long bh = by1 - by0, bw = bx1 - bx0;
      box.resize(static_cast<size_t>(c * bh * bw));
      for (long ch = 0; ch < c; ++ch)
        for (long y = 0; y < bh; ++y)
          std::copy_n(&img[(ch * h + by0 + y) * w + bx0], bw, &box[(ch * bh + y) * bw]);
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
      for (long ch = 0; ch < c; ++ch)
        for (long oy = y0 * s; oy < y1 * s; ++oy)
          std::copy_n(&yp[(ch * yh + (oy - by0 * s)) * yw + (x0 - bx0) * s], (x1 - x0) * s,
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
