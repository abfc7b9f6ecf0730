// A small RGB rasterizer for the report's plots: filled rectangles, thick lines, 5x7 bitmap text
// (scaled, horizontal or rotated), a perceptual colour map, and PNG output (zlib deflate).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dirmoe::plot {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};
inline constexpr Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0}, kGrey{200, 200, 200},
    kDarkGrey{90, 90, 90};
// Distinct series colours (Tableau 10).
Rgb series_color(int i);
// Viridis-like colour map, t in [0, 1] (clamped).
Rgb colormap(double t);

class Canvas {
 public:
  Canvas(int width, int height, Rgb background = kWhite);
  int width() const { return w_; }
  int height() const { return h_; }
  void set(int x, int y, Rgb c) {
    if (x >= 0 && y >= 0 && x < w_ && y < h_) {
      uint8_t* p = &px_[(static_cast<size_t>(y) * w_ + x) * 3];
      p[0] = c.r;
      p[1] = c.g;
      p[2] = c.b;
    }
  }
  void fill_rect(int x0, int y0, int x1, int y1, Rgb c);  // [x0, x1) x [y0, y1)
  void rect_outline(int x0, int y0, int x1, int y1, Rgb c);
  // Line of `thickness` pixels; dash > 0 draws dash-on/dash-off pixel runs.
  void line(double x0, double y0, double x1, double y1, Rgb c, int thickness = 1, int dash = 0);
  // Text with its top-left corner at (x, y); `scale` multiplies the 5x7 glyphs. rotated: reads
  // bottom to top (y axis labels), (x, y) is then the bottom-left corner.
  void text(int x, int y, const std::string& s, Rgb c, int scale = 1, bool rotated = false);
  static int text_width(const std::string& s, int scale = 1) {
    return s.empty() ? 0 : static_cast<int>(s.size()) * 6 * scale - scale;
  }
  static int text_height(int scale = 1) { return 7 * scale; }
  // Writes an 8-bit RGB PNG; throws an Error naming the file when it cannot.
  void write_png(const std::string& path) const;

 private:
  int w_, h_;
  std::vector<uint8_t> px_;  // [h, w, 3]
};

// Encodes rows of RGB pixels as a PNG byte stream (signature, IHDR, one IDAT, IEND).
std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height);

}  // namespace dirmoe::plot
