// Rasterizer and PNG encoder (see canvas.h).
#include "launch/report/canvas.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "launch/report/font5x7.h"
#include "runtime/core/error.h"

namespace dirmoe::plot {

Rgb series_color(int i) {
  static const Rgb k[10] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                            {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
                            {188, 189, 34},  {23, 190, 207}};
  return k[((i % 10) + 10) % 10];
}

Rgb colormap(double t) {
  // Viridis sampled at 9 points, linearly interpolated.
  static const double k[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                 {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                 {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0) * 8;
  const int i = std::min(7, static_cast<int>(t));
  const double f = t - i;
  auto mix = [&](int c) {
    return static_cast<uint8_t>(std::lround(k[i][c] * (1 - f) + k[i + 1][c] * f));
  };
  return {mix(0), mix(1), mix(2)};
}

Canvas::Canvas(int width, int height, Rgb bg) : w_(width), h_(height) {
  DIRMOE_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, "plot: canvas size ",
               width, "x", height, " out of range");
  px_.resize(static_cast<size_t>(w_) * h_ * 3);
  fill_rect(0, 0, w_, h_, bg);
}

void Canvas::fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
  x0 = std::max(0, x0);
  y0 = std::max(0, y0);
  x1 = std::min(w_, x1);
  y1 = std::min(h_, y1);
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) set(x, y, c);
}

void Canvas::rect_outline(int x0, int y0, int x1, int y1, Rgb c) {
  fill_rect(x0, y0, x1, y0 + 1, c);
  fill_rect(x0, y1 - 1, x1, y1, c);
  fill_rect(x0, y0, x0 + 1, y1, c);
  fill_rect(x1 - 1, y0, x1, y1, c);
}

void Canvas::line(double x0, double y0, double x1, double y1, Rgb c, int thickness, int dash) {
  if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) return;
  const double len = std::hypot(x1 - x0, y1 - y0);
  const int n = std::max(1, static_cast<int>(std::ceil(len * 2)));
  const int lo = -(thickness - 1) / 2, hi = thickness / 2;
  for (int i = 0; i <= n; ++i) {
    const double t = static_cast<double>(i) / n;
    if (dash > 0 && static_cast<int>(t * len / dash) % 2 == 1) continue;
    const int x = static_cast<int>(std::lround(x0 + (x1 - x0) * t));
    const int y = static_cast<int>(std::lround(y0 + (y1 - y0) * t));
    for (int dy = lo; dy <= hi; ++dy)
      for (int dx = lo; dx <= hi; ++dx) set(x + dx, y + dy, c);
  }
}

void Canvas::text(int x, int y, const std::string& s, Rgb c, int scale, bool rotated) {
  int pen = 0;
  for (char ch : s) {
    int code = static_cast<unsigned char>(ch);
    if (code < 32 || code > 126) code = '?';
    const uint8_t* g = kFont5x7[code - 32];
    for (int row = 0; row < kGlyphHeight; ++row)
      for (int col = 0; col < kGlyphWidth; ++col) {
        if (!(g[row] & (0x10 >> col))) continue;
        for (int sy = 0; sy < scale; ++sy)
          for (int sx = 0; sx < scale; ++sx) {
            const int u = pen + col * scale + sx, v = row * scale + sy;
            if (rotated)
              set(x + v, y - u, c);
            else
              set(x + u, y + v, c);
          }
      }
    pen += 6 * scale;
  }
}

namespace {

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

void put_chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  const uLong crc = crc32(0L, out.data() + start, static_cast<uInt>(out.size() - start));
  put_u32(out, static_cast<uint32_t>(crc));
}

}  // namespace

std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height) {
  std::vector<uint8_t> raw;  // per row: filter byte 0, then RGB
  raw.reserve(static_cast<size_t>(height) * (1 + 3 * static_cast<size_t>(width)));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    const uint8_t* row = rgb + static_cast<size_t>(y) * width * 3;
    raw.insert(raw.end(), row, row + static_cast<size_t>(width) * 3);
  }
  uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> z(zlen);
  const int rc = compress2(z.data(), &zlen, raw.data(), static_cast<uLong>(raw.size()), 6);
  DIRMOE_CHECK(rc == Z_OK, "plot: zlib compress2 failed (", rc, ")");
  z.resize(zlen);

  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> ihdr;
  put_u32(ihdr, static_cast<uint32_t>(width));
  put_u32(ihdr, static_cast<uint32_t>(height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, truecolour, deflate, adaptive, no interlace
  put_chunk(out, "IHDR", ihdr);
  put_chunk(out, "IDAT", z);
  put_chunk(out, "IEND", {});
  return out;
}

void Canvas::write_png(const std::string& path) const {
  const std::vector<uint8_t> png = encode_png(px_.data(), w_, h_);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  DIRMOE_CHECK(f.good(), "cannot write ", path);
  f.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
  DIRMOE_CHECK(f.good(), "cannot write ", path, " (disk full?)");
}

}  // namespace dirmoe::plot
